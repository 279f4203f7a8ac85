"""Links in the upstream's answers, pointed back at the proxy: absolute URLs under the API base
URL (or a link origin) in JSON bodies and in `Location` and `Link` headers. Bytes in, bytes out."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple
from urllib.parse import urlsplit

import msgspec

LIMIT = 16 << 20  # bytes, compressed or decoded; larger answers pass unchanged
DEFAULT_PORTS = {"http": "80", "https": "443"}

_ORIGIN = re.compile(r"(https?)://([^/?#]*)", re.IGNORECASE | re.ASCII)
_NOT_IN_A_URL = re.compile(r"[\x00-\x20\x7f]")  # a string with these is text, not one URL
_UNICODE_ESCAPE = re.compile(rb"\\u")  # searched faster than with `in`
# Checks a document's syntax without building it (a quarter of the time of decoding it); the
# UTF-8 of its strings is checked apart.
_SYNTAX = msgspec.json.Decoder(msgspec.Raw)
# In valid JSON a closing quote is followed only by `:`, `,`, `}`, `]` or space, so a `"` before
# one of these opens a string (escaped if a backslash comes before it), and only such a string
# may be a link.
_URL_OPENING = re.compile(rb'"(?<!\\")[hH\\]')
# From a string's content: all of it, if the string is a value (not an object's key).
_STRING_VALUE = re.compile(rb'([^"\\]*+(?:\\.[^"\\]*+)*+)"(?![ \t\n\r]*+:)', re.DOTALL)
# In a Link header: a quoted parameter value (skipped whole), or a <URI-Reference>.
_LINK_PART = re.compile(r'"(?:[^"\\]|\\.)*"|<([^>]*)>', re.DOTALL)


@dataclass(frozen=True)
class Base:
    """Where links may point: `scheme://authority` (lower case, default port left out) and a path
    without a trailing `/` ("" for an origin)."""

    scheme: str
    authority: str
    path: str

    @classmethod
    def parse(cls, url: str) -> Base:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("a link base is an http(s) URL without query or fragment")
        if parts.username is not None or parts.password is not None:
            raise ValueError("a link base has no user information")
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        return cls(scheme, _authority(scheme, parts.netloc), parts.path.rstrip("/"))

    @property
    def host(self) -> bytes:
        """The host name as it appears in a body, for a cheap search before any parsing."""
        host, colon, port = self.authority.rpartition(":")
        return (host if colon and port.isdigit() else self.authority).encode("ascii")


class Rewritten(NamedTuple):
    """An answer's body, encoded as it came; `skipped` says why links that may be in it were
    left alone (a warning for the log), None when there was no obstacle."""

    body: bytes
    changed: bool = False
    skipped: str | None = None


class LinkRewriter:
    """Rewrites absolute URLs under any of `bases` to the proxy's origin, keeping the rest of
    each URL byte for byte: `https://api.example.com/api/v2/x?t=a%2Bb` under the base
    `https://api.example.com/api` becomes `http://127.0.0.1:8080/v2/x?t=a%2Bb`."""

    def __init__(self, bases: tuple[Base, ...]) -> None:
        self.bases = bases
        # From `bases`, once: the hosts to look for, those with letters (looked for in lower case
        # too), whether each is always written as it is (short of a \u escape), how the strings
        # that begin with one open (lowered; each `/` may be written `\/`), and the patterns of
        # links written (almost) without escapes (see _link_patterns). A URL's authority matches
        # only if it is ASCII (see _prefix): other hosts never match.
        self._hosts = hosts = tuple(dict.fromkeys(b.host for b in bases if b.authority.isascii()))
        self._cased_hosts = tuple(host for host in hosts if host != host.upper())
        self._hosts_as_they_are = not any(b'"' in host or b"\\" in host for host in hosts)
        self._url_heads = re.compile(
            rb'"http(?<!\\"http)s?:(?:\\?/){2}(?:'
            + (b"|".join(re.escape(host) for host in hosts) or b"(?!)")
            + b")"
        )
        self._plain_link, self._plain_links = _link_patterns(bases)
        # What precedes a link's `//` is `"scheme:`; with one scheme, a constant length (cut
        # without a search for the quote).
        schemes = {base.scheme for base in bases}
        self._cut_scheme: Callable[[bytes], bytes] = (
            itemgetter(slice(None, -len(schemes.pop()) - 1)) if len(schemes) == 1 else _to_quote
        )

    @classmethod
    def for_upstream(cls, api_base_url: str, link_origins: Sequence[str] = ()) -> LinkRewriter:
        bases = {Base.parse(url) for url in (api_base_url, *link_origins)}
        # The longest path first: a link under both the base path and its bare origin keeps
        # only what follows the base path.
        return cls(tuple(sorted(bases, key=lambda b: (-len(b.path), b.scheme, b.authority))))

    def _prefix(self, url: str) -> int | None:
        """The length of the part of `url` that names a base (origin and base path), if `url`
        is an absolute URL under one."""
        origin = _ORIGIN.match(url)
        if origin is None or not origin[2].isascii() or _NOT_IN_A_URL.search(url):
            return None
        scheme = origin[1].lower()
        authority = _authority(scheme, origin[2])
        for base in self.bases:
            if base.scheme == scheme and base.authority == authority:
                end = origin.end() + len(base.path)
                if url.startswith(base.path, origin.end()) and url[end : end + 1] in "/?#":
                    return end  # `in` holds for "" too: the URL is the base itself
        return None

    def url(self, value: str, proxy_origin: str) -> str:
        """A `Location` value, or any one URL."""
        length = self._prefix(value)
        return value if length is None else proxy_origin + value[length:]

    def link_header(self, value: str, proxy_origin: str) -> str:
        """A `Link` value (RFC 8288): each `<URI>` rewritten, parameters untouched."""

        def replace(part: re.Match[str]) -> str:
            if part[1] is None:
                return part[0]
            return "<" + self.url(part[1], proxy_origin) + ">"

        return _LINK_PART.sub(replace, value)

    def answer(self, body: bytes, content_encoding: str | None, proxy_origin: str) -> Rewritten:
        """A JSON answer as received: decoded if gzip or deflate, rewritten, and encoded again
        the same way (the client asked for that encoding, the header stays as the upstream sent
        it, and compressing JSON costs a few microseconds per KiB). Without a change, the very
        bytes received."""
        if not body:  # a HEAD, 204 or 304 answer says gzip without any gzip bytes
            return Rewritten(body)
        coding = (content_encoding or "").strip().lower()
        plain, wbits = body, 0
        if coding not in ("", "identity"):
            if coding not in ("gzip", "x-gzip", "deflate"):
                return Rewritten(body, skipped=f"content-encoding {coding!r} is not decoded")
            if len(body) > LIMIT:
                return Rewritten(body, skipped="compressed answer over 16 MiB")
            try:
                plain, wbits = _decode(body, coding)
            except _TooLarge:
                return Rewritten(body, skipped="decoded answer over 16 MiB")
            except zlib.error:
                return Rewritten(body, skipped=f"{coding} body could not be decoded")
        rewritten, skipped = self._json(plain, proxy_origin)
        if rewritten is plain:
            return Rewritten(body, skipped=skipped)
        if wbits:
            rewritten = _encode(rewritten, wbits)
        return Rewritten(rewritten, changed=True)

    def _json(self, body: bytes, proxy_origin: str) -> tuple[bytes, str | None]:
        """The body with its links rewritten (the same object when nothing changed: not valid
        JSON, over the limit, or no link in it) and why it was skipped."""
        if len(body) > LIMIT:
            return body, "answer over 16 MiB"
        # Cheap before anything else: no base's host in the bytes (nor a \u escape that could
        # spell one), no link to rewrite.
        escapes = b"\\" in body
        spelled = escapes and _UNICODE_ESCAPE.search(body) is not None
        if not spelled and not self._mentions_a_host(body):
            return body, None
        if (problem := _json_problem(body)) is not None:
            return body, problem
        # Valid JSON from here on, which the search for strings relies on.
        plain_origin = msgspec.json.encode(proxy_origin)[1:-1]
        if not escapes:
            return self._plain_links_rewritten(body, plain_origin), None
        if spelled or not self._hosts_as_they_are:
            heads = _URL_OPENING.finditer(body)  # an escape may spell any of a link's letters
        else:
            heads = self._url_heads.finditer(body.lower())
        openings = [head.start() for head in heads]
        return self._strings_rewritten(body, openings, plain_origin), None

    def _plain_links_rewritten(self, body: bytes, origin: bytes) -> bytes:
        """A body without escapes, its links rewritten (the same object if there were none)."""
        # Each part but the last ends with a link's `"scheme:`, cut back to the quote.
        *parts, last = self._plain_links.split(body)
        if not parts:
            return body
        return origin.join([*map(self._cut_scheme, parts), last])

    def _strings_rewritten(self, body: bytes, openings: list[int], origin: bytes) -> bytes:
        """A body with its links rewritten, given where each string that may be one opens
        (the same object if there were none)."""
        pieces: list[bytes] = []
        copied = 0
        replaced: bytes | None
        for quote in openings:
            content = quote + 1
            if link := self._plain_link.match(body, content):
                # Keep the upstream's escaping of slashes.
                replaced = origin.replace(b"/", b"\\/") if b"\\" in link[0] else origin
                end = link.end()
            elif (value := _STRING_VALUE.match(body, content)) and b"\\" in value[1]:
                replaced, end = self._escaped_literal(value[1], origin), value.end(1)
            else:
                continue
            if replaced is not None:
                pieces += (body[copied:content], replaced)
                copied = end
        if not pieces:
            return body
        pieces.append(body[copied:])
        return b"".join(pieces)

    def _mentions_a_host(self, body: bytes) -> bool:
        """Whether any base's host appears in the body, in any case."""
        if any(host in body for host in self._hosts):
            return True
        if not self._cased_hosts:
            return False
        lowered = body.lower()
        return any(host in lowered for host in self._cased_hosts)

    def _escaped_literal(self, raw: bytes, origin: bytes) -> bytes | None:
        """The content of a string literal written with escapes, with the base replaced by
        `origin`, or None if it is not a link under a base."""
        length = self._prefix(msgspec.json.decode(b'"' + raw + b'"', type=str))
        if length is None:
            return None
        # The prefix is ASCII, each of its characters one byte or one escape in `raw`.
        end = 0
        for _ in range(length):
            end += 1 if raw[end] != 0x5C else 6 if raw[end + 1] == 0x75 else 2  # \ and u
        if b"\\/" in raw[:end]:
            origin = origin.replace(b"/", b"\\/")  # keep the upstream's escaping of slashes
        return origin + raw[end:]


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON: application/json or application/<anything>+json."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _json_problem(body: bytes) -> str | None:
    """Why the body cannot be rewritten as JSON, or None if it is valid JSON."""
    try:
        _SYNTAX.decode(body)
        if not body.isascii():
            body.decode()  # UTF-8, strictly: no surrogates, no overlong forms
    except (msgspec.DecodeError, UnicodeDecodeError):
        return "not valid JSON"
    except RecursionError:  # msgspec checks nesting on the interpreter's stack
        return "JSON nested too deeply to be checked"
    return None


def weak_etag(etag: str) -> str:
    """The ETag of a body that changed: weak, since the bytes are no longer the upstream's."""
    etag = etag.strip()
    return etag if etag[:2].upper() == "W/" else "W/" + etag


class _TooLarge(Exception):
    pass


def _authority(scheme: str, netloc: str) -> str:
    authority = netloc.lower()
    host, colon, port = authority.rpartition(":")
    one_port = ":" not in host or (host.startswith("[") and host.endswith("]"))
    if colon and one_port and port in ("", DEFAULT_PORTS[scheme]):
        return host  # `https://h:443` and `https://h:` are `https://h`; `h:8443:443` is no host
    return authority


def _link_patterns(bases: tuple[Base, ...]) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """Links under the bases (in their order), each pattern matching up to the end of the part
    that names a base, in a string that is a value, not a key, and holds no space or DEL (other
    control characters are escaped in valid JSON):
    - one matched at a string's content, for links with no escapes but `\\/`, `\\"` and `\\\\`
      (which cannot make a string not a link);
    - one searched for in a body without escapes, from the `//` on: only the `//` makes a cheap
      start, the letters of the scheme and the host being of any case."""
    at_content, anywhere = [], []
    for base in bases:
        for authority in _authorities(base):
            prefix = authority + base.path
            if _NOT_IN_A_URL.search(prefix) or '"' in prefix or "\\" in prefix:
                continue  # not a link with such a prefix, or one only written with escapes
            scheme, name = re.escape(base.scheme.encode()), re.escape(authority.encode())
            path = re.escape(base.path.encode())
            slashes = path.replace(b"/", rb"\\?/")
            at_content.append(b"(?i:" + scheme + rb"):\\?/\\?/(?i:" + name + b")" + slashes)
            anywhere.append(b'(?<=(?i:"' + scheme + b"://))(?i:" + name + b")" + path)
    return (
        re.compile(
            b"(?:" + (b"|".join(at_content) or b"(?!)") + rb')(?=\\?/|[?#"])'
            rb'(?=(?:[^ \x7f"\\]++|\\["\\/])*+"(?![ \t\n\r]*+:))'
        ),
        re.compile(
            b"//(?:" + (b"|".join(anywhere) or b"(?!)") + rb')(?=[/?#"])'
            rb'(?=[^ \x7f"\\]*+"(?![ \t\n\r]*+:))'
        ),
    )


def _authorities(base: Base) -> list[str]:
    """Every authority (lower case) that names the base's: ASCII, with or without the default
    port, or with an empty one."""
    authority = base.authority
    return [
        spelling
        for spelling in (authority, f"{authority}:", f"{authority}:{DEFAULT_PORTS[base.scheme]}")
        if spelling.isascii() and _authority(base.scheme, spelling) == authority
    ]


def _to_quote(text: bytes) -> bytes:
    """`text` up to its last quote, inclusive."""
    return text[: text.rindex(b'"') + 1]


def _decode(data: bytes, coding: str) -> tuple[bytes, int]:
    """The decoded body and the zlib window bits it was encoded with. Never more than LIMIT
    bytes are produced, whatever the ratio."""
    if coding != "deflate":
        return _inflate(data, 31), 31
    try:
        return _inflate(data, 15), 15  # deflate as RFC 9110 means it: zlib-wrapped
    except zlib.error:
        return _inflate(data, -15), -15  # the raw deflate some servers send, as browsers accept


def _inflate(data: bytes, wbits: int) -> bytes:
    out: list[bytes] = []
    size = 0
    while True:  # gzip may hold several members, one after another
        inflater = zlib.decompressobj(wbits)
        chunk = inflater.decompress(data, LIMIT + 1 - size)
        size += len(chunk)
        out.append(chunk)
        if size > LIMIT or inflater.unconsumed_tail:
            raise _TooLarge
        if not inflater.eof:
            raise zlib.error("truncated")
        data = inflater.unused_data
        if not data:
            return b"".join(out)
        if wbits != 31:
            raise zlib.error("bytes after the end of the stream")


def _encode(data: bytes, wbits: int) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return deflater.compress(data) + deflater.flush()
