"""Links in the upstream's answers, pointed back at the proxy: absolute URLs under the API base
URL (or a link origin) in JSON bodies and in `Location` and `Link` headers. Bytes in, bytes out."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

LIMIT = 16 << 20  # bytes, compressed or decoded; larger answers pass unchanged
DEFAULT_PORTS = {"http": "80", "https": "443"}

_ORIGIN = re.compile(r"(https?)://([^/?#]*)", re.IGNORECASE | re.ASCII)
_NOT_IN_A_URL = re.compile(r"[\x00-\x20\x7f]")  # a string with these is text, not one URL
_STRING = rb'[^"\\]*+(?:\\.[^"\\]*+)*+'  # a string literal's content
_URL_START = rb"(?i:https?):|\\"  # how a URL begins, or an escape that may spell one
# From where the last match ended: past everything that is not a string value which may be a URL
# (other text, other strings, keys), to the next one. Possessive: the scan never backtracks.
_NEXT_URL_VALUE = re.compile(
    rb'(?:[^"]++'
    rb'|"(?!' + _URL_START + rb")" + _STRING + rb'"'
    rb'|"' + _STRING + rb'"(?=[ \t\n\r]*+:)'
    rb')*+"((?=' + _URL_START + rb")" + _STRING + rb')"',
    re.DOTALL,
)
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


@dataclass(frozen=True)
class Rewritten:
    """An answer's body and the `Content-Encoding` to send it with; `skipped` says why links
    that may be in it were left alone (a warning for the log), None when there was no obstacle."""

    body: bytes
    content_encoding: str | None
    changed: bool
    skipped: str | None = None


@dataclass(frozen=True)
class LinkRewriter:
    """Rewrites absolute URLs under any of `bases` to the proxy's origin, keeping the rest of
    each URL byte for byte: `https://api.example.com/api/v2/x?t=a%2Bb` under the base
    `https://api.example.com/api` becomes `http://127.0.0.1:8080/v2/x?t=a%2Bb`."""

    bases: tuple[Base, ...]

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

    def body(self, body: bytes, proxy_origin: str) -> bytes:
        """A JSON body with its links rewritten; unchanged if it is not valid JSON or over the
        limit. A body in which no base's host appears is not looked at any further."""
        return self._json(body, proxy_origin)[0]

    def answer(self, body: bytes, content_encoding: str | None, proxy_origin: str) -> Rewritten:
        """A JSON answer as received: decoded if gzip or deflate, rewritten, and encoded again
        the same way (the client asked for that encoding, the header stays as the upstream sent
        it, and compressing JSON costs a few microseconds per KiB). Without a change, the very
        bytes received."""
        unchanged = Rewritten(body, content_encoding, changed=False)
        if not body:
            return unchanged  # a HEAD, 204 or 304 answer says gzip without any gzip bytes
        coding = (content_encoding or "").strip().lower()
        plain, wbits = body, 0
        if coding in ("", "identity"):
            pass
        elif coding in ("gzip", "x-gzip", "deflate"):
            if len(body) > LIMIT:
                return _skip(unchanged, "compressed answer over 16 MiB")
            try:
                plain, wbits = _decode(body, coding)
            except _TooLarge:
                return _skip(unchanged, "decoded answer over 16 MiB")
            except zlib.error:
                return _skip(unchanged, f"{coding} body could not be decoded")
        else:
            return _skip(unchanged, f"content-encoding {coding!r} is not decoded")
        rewritten, skipped = self._json(plain, proxy_origin)
        if rewritten is plain:
            return _skip(unchanged, skipped)
        if wbits:
            rewritten = _encode(rewritten, wbits)
        return Rewritten(rewritten, content_encoding, changed=True)

    def _json(self, body: bytes, proxy_origin: str) -> tuple[bytes, str | None]:
        """The rewritten body (the same object when nothing changed) and why it was skipped."""
        if len(body) > LIMIT:
            return body, "answer over 16 MiB"
        # Cheap before anything else: no base's host in the bytes (nor a \u escape that could
        # spell one), no link to rewrite.
        lowered = body.lower()
        if b"\\u" not in body and not any(base.host in lowered for base in self.bases):
            return body, None
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            return body, "not valid JSON"
        # Valid JSON: every `"` outside a string opens one, so the scan, which starts outside
        # any string, sees exactly the document's string literals.
        plain_origin = orjson.dumps(proxy_origin)[1:-1]
        pieces: list[bytes] = []
        copied = scanned = 0
        while (value := _NEXT_URL_VALUE.match(body, scanned)) is not None:
            scanned = value.end()
            replaced = self._literal(value[1], plain_origin)
            if replaced is not None:
                pieces += (body[copied : value.start(1)], replaced)
                copied = value.end(1)
        if not pieces:
            return body, None
        pieces.append(body[copied:])
        return b"".join(pieces), None

    def _literal(self, raw: bytes, origin: bytes) -> bytes | None:
        """A string literal's content with the base replaced by `origin`, or None."""
        if b"\\" not in raw:
            length = self._prefix(raw.decode("utf-8"))
            return None if length is None else origin + raw[length:]
        length = self._prefix(orjson.loads(b'"' + raw + b'"'))
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


def weak_etag(etag: str) -> str:
    """The ETag of a body that changed: weak, since the bytes are no longer the upstream's."""
    etag = etag.strip()
    return etag if etag[:2].upper() == "W/" else "W/" + etag


class _TooLarge(Exception):
    pass


def _authority(scheme: str, netloc: str) -> str:
    authority = netloc.lower()
    host, colon, port = authority.rpartition(":")
    if colon and "]" not in port and port in ("", DEFAULT_PORTS[scheme]):
        return host  # `https://h:443` and `https://h:` are `https://h`
    return authority


def _skip(unchanged: Rewritten, reason: str | None) -> Rewritten:
    return Rewritten(unchanged.body, unchanged.content_encoding, changed=False, skipped=reason)


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
