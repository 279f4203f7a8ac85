"""Links in answers, rewritten to the proxy: which strings qualify, everything else byte for byte
(as a property over generated documents), compressed answers, limits, and the headers."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.links import LIMIT, Base, LinkRewriter, is_json, weak_etag

API_BASE = "https://api.example.com/api"
LINK_ORIGIN = "https://links.example.net"
PROXY = "http://127.0.0.1:8080"
rewriter = LinkRewriter.for_upstream(API_BASE, [LINK_ORIGIN])


def rewritten(links: LinkRewriter, body: bytes) -> bytes:
    """A JSON answer's body as the proxy sends it."""
    return links.answer(body, None, PROXY).body


def test_only_strings_under_the_base_are_rewritten() -> None:
    body = (
        b'{"next": "https://api.example.com/api/v2/licenses?page=2",\n'
        b' "base": "https://api.example.com/api",\n'
        b' "query": "https://api.example.com/api?x=1",\n'
        b' "cased": "HTTPS://API.Example.COM:443/api/v2/x",\n'
        b' "links": "https://links.example.net/v1/carriers",\n'
        b' "other origin": "https://other.example.org/api/v2/x",\n'
        b' "other port": "https://api.example.com:8443/api/v2/x",\n'
        b' "other scheme": "http://api.example.com/api/v2/x",\n'
        b' "longer host": "https://api.example.com.evil.org/api/v2/x",\n'
        b' "outside": "https://api.example.com/v2/x",\n'
        b' "trap": "https://api.example.com/apix/v2",\n'
        b' "inside": "see https://api.example.com/api/v2/x",\n'
        b' "text after": "https://api.example.com/api/v2/x and more",\n'
        b' "https://api.example.com/api/v2/key": "https://links.example.net"}'
    )
    assert rewritten(rewriter, body) == (
        b'{"next": "http://127.0.0.1:8080/v2/licenses?page=2",\n'
        b' "base": "http://127.0.0.1:8080",\n'
        b' "query": "http://127.0.0.1:8080?x=1",\n'
        b' "cased": "http://127.0.0.1:8080/v2/x",\n'
        b' "links": "http://127.0.0.1:8080/v1/carriers",\n'
        b' "other origin": "https://other.example.org/api/v2/x",\n'
        b' "other port": "https://api.example.com:8443/api/v2/x",\n'
        b' "other scheme": "http://api.example.com/api/v2/x",\n'
        b' "longer host": "https://api.example.com.evil.org/api/v2/x",\n'
        b' "outside": "https://api.example.com/v2/x",\n'
        b' "trap": "https://api.example.com/apix/v2",\n'
        b' "inside": "see https://api.example.com/api/v2/x",\n'
        b' "text after": "https://api.example.com/api/v2/x and more",\n'
        b' "https://api.example.com/api/v2/key": "http://127.0.0.1:8080"}'
    )


def test_a_link_under_the_base_path_loses_the_path_even_when_its_origin_is_a_link_origin() -> None:
    both = LinkRewriter.for_upstream("https://h.example.com/api/", ["https://H.example.com:443"])
    body = b'["https://h.example.com/api/v2/x", "https://h.example.com/v1/y"]'
    assert rewritten(both, body) == b'["http://127.0.0.1:8080/v2/x", "http://127.0.0.1:8080/v1/y"]'


def test_percent_encoding_in_a_link_is_kept() -> None:
    body = b'{"links":{"next":{"href":"https://api.example.com/api/v2/licenses?continuationToken=a%2Bb%3D"}}}'
    assert rewritten(rewriter, body) == (
        b'{"links":{"next":{"href":"http://127.0.0.1:8080/v2/licenses?continuationToken=a%2Bb%3D"}}}'
    )


def test_escaped_slashes_are_found_and_the_new_origin_is_written_the_same_way() -> None:
    body = b'{"href": "https:\\/\\/api.example.com\\/api\\/v2\\/x?a=1"}'
    assert rewritten(rewriter, body) == b'{"href": "http:\\/\\/127.0.0.1:8080\\/v2\\/x?a=1"}'


def test_other_escapes_are_decoded_for_the_comparison_and_kept_after_the_prefix() -> None:
    body = b'["\\u0068ttps://api.example.com/api/v2/\\u00e9?q=\\"x\\"\\\\", "\\u0041"]'
    assert rewritten(rewriter, body) == (
        b'["http://127.0.0.1:8080/v2/\\u00e9?q=\\"x\\"\\\\", "\\u0041"]'
    )


def test_a_string_ending_in_an_escaped_backslash_does_not_hide_the_next_link() -> None:
    body = b'["\\\\", "https://api.example.com/api/a", "\\\\\\"", "https://api.example.com/api/b"]'
    assert rewritten(rewriter, body) == (
        b'["\\\\", "http://127.0.0.1:8080/a", "\\\\\\"", "http://127.0.0.1:8080/b"]'
    )


def test_numbers_spacing_and_key_order_are_untouched() -> None:
    body = (
        b'{ "z" : 1.50 , "a":123456789012345678901234567890,"e": 1E+2,\r\n'
        b'\t"u": "caf\\u00e9 \xe2\x82\xac", "href" :"https://api.example.com/api/x" }'
    )
    expected = body.replace(b"https://api.example.com/api/x", b"http://127.0.0.1:8080/x")
    assert rewritten(rewriter, body) == expected


def test_a_body_without_any_base_host_is_returned_as_it_is() -> None:
    body = b'{"href": "https://other.example.org/api/x"}'
    result = rewriter.answer(body, None, PROXY)
    assert result.body is body
    assert (result.changed, result.skipped) == (False, None)


def test_a_scheme_spelled_with_escapes_after_its_first_letter_is_still_a_link() -> None:
    body = b'["h\\u0074tps://api.example.com/api/a", "https\\u003a//links.example.net/b"]'
    assert rewritten(rewriter, body) == b'["http://127.0.0.1:8080/a", "http://127.0.0.1:8080/b"]'


def test_slashes_escaped_one_at_a_time_are_found() -> None:
    body = b'["https:\\//api.example.com/api/a", "https:/\\/api.example.com/api/b"]'
    assert rewritten(rewriter, body) == (
        b'["http:\\/\\/127.0.0.1:8080/a", "http:\\/\\/127.0.0.1:8080/b"]'
    )


def test_escaped_quotes_and_backslashes_after_the_base_are_kept() -> None:
    body = b'["https:\\/\\/api.example.com\\/api\\/x?q=\\"y\\"\\\\", "https://api.example.com/api?\\\\"]'
    assert rewritten(rewriter, body) == (
        b'["http:\\/\\/127.0.0.1:8080\\/x?q=\\"y\\"\\\\", "http://127.0.0.1:8080?\\\\"]'
    )


def test_a_link_quoted_inside_another_string_is_left_alone() -> None:
    for inside in (
        b'"see \\"https://api.example.com/api/x\\""',
        b'"\\"https://api.example.com/api/x"',
        b'"\\\\\\"https://api.example.com/api/x"',
    ):
        body = b'["https://api.example.com/api/y", ' + inside + b"]"
        assert rewritten(rewriter, body) == b'["http://127.0.0.1:8080/y", ' + inside + b"]"


def test_a_link_after_an_escaped_backslash_at_the_end_of_a_string_is_found() -> None:
    body = b'{"a": "\\\\", "b": "https://api.example.com/api/x", "c": "\\\\\\\\"}'
    assert rewritten(rewriter, body) == (
        b'{"a": "\\\\", "b": "http://127.0.0.1:8080/x", "c": "\\\\\\\\"}'
    )


@pytest.mark.parametrize("text", [b"plain", b"line\\nbreak", b"caf\\u00e9"])
def test_every_link_is_rewritten_once_when_one_base_host_begins_another(text: bytes) -> None:
    both = LinkRewriter.for_upstream(
        "https://api.example.com/api", ["https://api.example.com.cdn.net"]
    )
    body = (
        b'{"t": "' + text + b'", "a": "https://api.example.com/api/x",'
        b' "b": "https://API.example.com.cdn.net/y", "c": "HTTPS://api.example.com/API/z"}'
    )
    assert rewritten(both, body) == (
        b'{"t": "' + text + b'", "a": "http://127.0.0.1:8080/x",'
        b' "b": "http://127.0.0.1:8080/y", "c": "HTTPS://api.example.com/API/z"}'
    )


@pytest.mark.parametrize("text", [b"plain", b"line\\nbreak", b"caf\\u00e9"])
def test_links_under_bases_of_both_schemes_are_rewritten(text: bytes) -> None:
    mixed = LinkRewriter.for_upstream("http://api.example.com:8000/api", [LINK_ORIGIN])
    body = (
        b'["' + text + b'", "HTTP://api.example.com:8000/api/a", "https://links.example.net/b",'
        b' "https://api.example.com:8000/api/c", "http://links.example.net/d"]'
    )
    assert rewritten(mixed, body) == (
        b'["' + text + b'", "http://127.0.0.1:8080/a", "http://127.0.0.1:8080/b",'
        b' "https://api.example.com:8000/api/c", "http://links.example.net/d"]'
    )


@pytest.mark.parametrize("text", [b"plain", b"line\\nbreak", b"caf\\u00e9"])
def test_a_string_with_a_space_or_del_or_a_control_character_is_not_a_link(text: bytes) -> None:
    body = (
        b'["' + text + b'", "https://api.example.com/api/a b", "https://api.example.com/api/a\x7f",'
        b' "https://api.example.com/api/a\\t", "https://api.example.com/api/a\\u0000",'
        b' "https://api.example.com:/api/ok"]'
    )
    assert rewritten(rewriter, body) == body.replace(
        b"https://api.example.com:/api/ok", b"http://127.0.0.1:8080/ok"
    )


@pytest.mark.parametrize("text", [b"plain", b"line\\nbreak", b"caf\\u00e9"])
def test_a_link_as_a_key_stays_whatever_space_comes_before_the_colon(text: bytes) -> None:
    body = (
        b'{"t": "' + text + b'", "https://api.example.com/api/k"\r\n\t :'
        b' "https://api.example.com/api/v", "https://api.example.com/api/k2":1}'
    )
    assert rewritten(rewriter, body) == body.replace(
        b'"https://api.example.com/api/v"', b'"http://127.0.0.1:8080/v"'
    )


def test_a_base_path_beyond_ascii_is_cut_whole() -> None:
    cafe = LinkRewriter.for_upstream("https://h.example.com/caf\u00e9")
    body = '["https://h.example.com/caf\u00e9/x", "https://h.example.com/cafe/y"]'.encode()
    assert rewritten(cafe, body) == b'["http://127.0.0.1:8080/x", "https://h.example.com/cafe/y"]'


def test_a_base_host_beyond_ascii_matches_nothing_and_leaves_the_other_bases_working() -> None:
    mixed = LinkRewriter.for_upstream("https://b\u00fccher.example/api", [LINK_ORIGIN])
    body = '["https://b\u00fccher.example/api/x", "https://links.example.net/y"]'.encode()
    assert rewritten(mixed, body) == (
        '["https://b\u00fccher.example/api/x", "http://127.0.0.1:8080/y"]'.encode()
    )


def test_a_document_that_is_one_link_is_rewritten() -> None:
    for body, expected in (
        (b'"https://api.example.com/api/x"', b'"http://127.0.0.1:8080/x"'),
        (b' "https:\\/\\/links.example.net" ', b' "http:\\/\\/127.0.0.1:8080" '),
    ):
        assert rewritten(rewriter, body) == expected


# Generated documents: each piece is serialised here, with what the output must hold for it.

Piece = tuple[bytes, bytes]  # (the bytes given, the bytes expected back)

UNDER_BASE = (
    "https://api.example.com/api",
    "HTTPS://Api.Example.COM/api",
    "https://api.example.com:443/api",
    "https://links.example.net",
    "https://LINKS.example.net:443",
)
NOT_UNDER_BASE = (
    "http://api.example.com/api/v2/x",
    "https://api.example.com/apix/v2",
    "https://api.example.com/v2/licenses",
    "https://api.example.com:8443/api/v2",
    "https://other.example.org/api/v2",
    "https://api.example.com.evil.org/api",
    "https://links.example.net.evil.org/x",
    "see https://api.example.com/api/v2/x",
    "https://api.example.com/api/v2/x and more",
    "https://links.example.net\n",
    "api.example.com/api/v2",
)
URL_CHARACTERS = (
    "abcXYZ019-._~!$&'()*+,;=:@%/?" + '"\\' + "é€😀"  # what follows the base is kept raw
)
tails = st.one_of(
    st.sampled_from(["", "/", "/v2/licenses?continuationToken=a%2Bb", "?page=2", "#top"]),
    st.tuples(st.sampled_from("/?#"), st.text(URL_CHARACTERS, max_size=20)).map("".join),
)
styles = st.sampled_from(["plain", "slashes", "ascii", "every"])
whitespace = st.sampled_from(["", " ", "  ", "\n", "\t", "\r\n  "]).map(str.encode)
text = st.text(st.characters(codec="utf-8"), max_size=12)


def escaped(text: str, style: str) -> bytes:
    """A JSON string literal's content: `slashes` writes `/` as `\\/`, `ascii` escapes all
    that is not ASCII, `every` escapes every character."""
    out = []
    for char in text:
        if style == "every" or ord(char) < 0x20 or (style == "ascii" and ord(char) > 0x7E):
            utf16 = char.encode("utf-16-be")
            out.append("".join(f"\\u{utf16[i : i + 2].hex()}" for i in range(0, len(utf16), 2)))
        elif char in '"\\' or (char == "/" and style == "slashes"):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out).encode()


@st.composite
def strings(draw: st.DrawFn, key: bool = False) -> Piece:
    style = draw(styles)
    if draw(st.booleans()):
        prefix, tail = draw(st.sampled_from(UNDER_BASE)), draw(tails)
        given = b'"' + escaped(prefix, style) + escaped(tail, style) + b'"'
        origin = PROXY.replace("/", "\\/") if style == "slashes" else PROXY
        return given, given if key else b'"' + origin.encode() + escaped(tail, style) + b'"'
    value = draw(st.one_of(st.sampled_from(NOT_UNDER_BASE), text))
    given = b'"' + escaped(value, style) + b'"'
    return given, given


numbers = st.one_of(
    st.sampled_from(["1.50", "-0", "0.0", "1E+2", "2.5e-7", "true", "false", "null"]),
    st.integers(-(2**200), 2**200).map(str),
).map(lambda number: (number.encode(), number.encode()))


def joined(pieces: list[Piece]) -> Piece:
    return b"".join(p[0] for p in pieces), b"".join(p[1] for p in pieces)


@st.composite
def arrays(draw: st.DrawFn, values: st.SearchStrategy[Piece]) -> Piece:
    items = draw(st.lists(values, max_size=5))
    pieces: list[Piece] = []
    for index, item in enumerate(items):
        gap = draw(whitespace)
        pieces += [(b",", b",")] if index else []
        pieces += [(gap, gap), item]
    gap = draw(whitespace)
    return joined([(b"[", b"["), *pieces, (gap, gap), (b"]", b"]")])


@st.composite
def objects(draw: st.DrawFn, values: st.SearchStrategy[Piece]) -> Piece:
    members = draw(st.lists(st.tuples(strings(key=True), values), max_size=5))
    pieces: list[Piece] = []
    for index, (name, value) in enumerate(members):
        gaps = [draw(whitespace) for _ in range(3)]
        pieces += [(b",", b",")] if index else []
        pieces += [(gaps[0], gaps[0]), name, (gaps[1], gaps[1]), (b":", b":")]
        pieces += [(gaps[2], gaps[2]), value]
    gap = draw(whitespace)
    return joined([(b"{", b"{"), *pieces, (gap, gap), (b"}", b"}")])


documents = st.recursive(
    st.one_of(strings(), numbers),
    lambda values: st.one_of(arrays(values), objects(values)),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(documents, whitespace, whitespace)
def test_body_is_byte_identical_outside_rewritten_links(
    document: Piece, before: bytes, after: bytes
) -> None:
    given, expected = before + document[0] + after, before + document[1] + after
    json.loads(given)  # the generator writes valid JSON
    assert rewritten(rewriter, given) == expected


# Compressed answers and limits.

BODY = b'{"links": {"next": {"href": "https://api.example.com/api/v2/x?t=a%2Bb"}}}'
REWRITTEN = b'{"links": {"next": {"href": "http://127.0.0.1:8080/v2/x?t=a%2Bb"}}}'


def deflated(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


def test_a_gzip_answer_is_rewritten_and_sent_gzip_again() -> None:
    result = rewriter.answer(gzip.compress(BODY), "GZIP", PROXY)
    assert (result.changed, result.skipped) == (True, None)
    assert gzip.decompress(result.body) == REWRITTEN


def test_a_gzip_answer_of_several_members_is_decoded_whole() -> None:
    half = len(BODY) // 2
    result = rewriter.answer(gzip.compress(BODY[:half]) + gzip.compress(BODY[half:]), "gzip", PROXY)
    assert gzip.decompress(result.body) == REWRITTEN


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
def test_a_deflate_answer_is_rewritten_and_sent_in_the_same_wrapping(wbits: int) -> None:
    result = rewriter.answer(deflated(BODY, wbits), "deflate", PROXY)
    assert result.changed
    assert zlib.decompress(result.body, wbits) == REWRITTEN


def test_a_compressed_answer_without_links_keeps_its_very_bytes() -> None:
    compressed = gzip.compress(b'{"href": "https://other.example.org/x"}')
    result = rewriter.answer(compressed, "gzip", PROXY)
    assert result.body is compressed
    assert (result.changed, result.skipped) == (False, None)


def test_an_empty_compressed_answer_is_left_alone() -> None:
    result = rewriter.answer(b"", "gzip", PROXY)
    assert (result.body, result.changed, result.skipped) == (b"", False, None)


def test_a_decompression_bomb_is_decoded_no_further_than_the_limit() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"0" * (1 << 20)
    bomb = compressor.compress(b"[") + b"".join(compressor.compress(zeros) for _ in range(256))
    bomb += compressor.flush()  # 256 MiB of digits in well under 1 MiB
    tracemalloc.start()
    try:
        result = rewriter.answer(bomb, "gzip", PROXY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (result.body, result.changed) == (bomb, False)
    assert result.skipped == "decoded answer over 16 MiB"
    assert peak < 3 * LIMIT


def test_answers_over_16_mib_pass_unchanged_with_a_reason() -> None:
    big = b'["https://api.example.com/api/x", "' + b"a" * LIMIT + b'"]'
    result = rewriter.answer(big, None, PROXY)
    assert (result.body, result.changed, result.skipped) == (big, False, "answer over 16 MiB")
    compressed = gzip.compress(big)
    result = rewriter.answer(compressed, "gzip", PROXY)
    assert (result.body, result.changed) == (compressed, False)
    assert result.skipped == "decoded answer over 16 MiB"
    noise = b"\x1f\x8b" + bytes(range(256)) * (LIMIT // 256)
    result = rewriter.answer(noise, "gzip", PROXY)
    assert (result.body, result.skipped) == (noise, "compressed answer over 16 MiB")


def test_invalid_json_passes_unchanged_with_a_reason() -> None:
    for body in (
        b'{"href": "https://api.example.com/api/x",}',
        b'{"href": "https://api.example.com/api/x"',
        b"<html>https://api.example.com/api/x</html>",
        b'"https://api.example.com/api/x" "\xff"',
        b'["https://api.example.com/api/x", "caf\xe9"]',  # Latin-1, not UTF-8
        b'["https://api.example.com/api/x", "\xed\xa0\x80"]',  # an encoded surrogate
        b'["https://api.example.com/api/x", "\\ud800"]',  # a lone surrogate escape
        b'["https://api.example.com/api/x", "\\q"]',
        b'["https://api.example.com/api/x", "tab\there"]',
        b'["https://api.example.com/api/x", 01]',
        b'["https://api.example.com/api/x"] []',
    ):
        result = rewriter.answer(body, None, PROXY)
        assert (result.body, result.changed, result.skipped) == (body, False, "not valid JSON")


def test_json_nested_too_deeply_to_check_passes_unchanged_with_a_reason() -> None:
    link = b'"https://api.example.com/api/x"'
    for depth in (2_000, 100_000):
        body = b"[" * depth + link + b"]" * depth
        result = rewriter.answer(body, None, PROXY)
        assert (result.body, result.changed) == (body, False)
        assert result.skipped == "JSON nested too deeply to be checked"
    shallow = b"[" * 100 + link + b"]" * 100
    assert rewriter.answer(shallow, None, PROXY).changed


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, gzip", "compress"])
def test_answers_in_other_encodings_pass_unchanged_with_a_reason(coding: str) -> None:
    result = rewriter.answer(BODY, coding, PROXY)
    assert (result.body, result.changed) == (BODY, False)
    assert result.skipped == f"content-encoding {coding!r} is not decoded"


def test_a_broken_or_truncated_gzip_answer_passes_unchanged_with_a_reason() -> None:
    for body in (gzip.compress(BODY)[:-12], b"not gzip at all", gzip.compress(BODY) + b"junk"):
        result = rewriter.answer(body, "gzip", PROXY)
        assert (result.body, result.changed) == (body, False)
        assert result.skipped == "gzip body could not be decoded"


# Headers.


def test_a_strong_etag_becomes_weak_and_a_weak_one_stays() -> None:
    assert weak_etag('"abc"') == 'W/"abc"'
    assert weak_etag('W/"abc"') == 'W/"abc"'


def test_location_is_rewritten_by_the_same_rule() -> None:
    assert rewriter.url("https://api.example.com/api/v2/x?t=a%2Bb", PROXY) == (
        "http://127.0.0.1:8080/v2/x?t=a%2Bb"
    )
    for unchanged in ("/api/v2/x", "https://api.example.com/apix", "https://other.example.org/"):
        assert rewriter.url(unchanged, PROXY) == unchanged


def test_an_authority_with_a_second_port_is_not_the_base() -> None:
    on_port = LinkRewriter.for_upstream("https://api.example.com:8443/api")
    for base, port in ((rewriter, ""), (on_port, ":8443")):
        for extra in (":443", ":", "::443", ":443:443", ":443:"):
            link = f"https://api.example.com{port}{extra}/api/v2/x"
            if not port and extra in (":443", ":"):
                continue  # the base itself, its port written out or left empty
            assert base.url(link, PROXY) == link
            body = json.dumps([link]).encode()
            assert rewritten(base, body) == body
    assert on_port.url("https://API.example.com:8443/api/x", PROXY) == PROXY + "/x"


def test_every_link_in_a_link_header_is_rewritten_and_its_parameters_kept() -> None:
    value = (
        '<https://api.example.com/api/v2/x?page=3>; rel="next"; title="<https://api.example.com/api/t>",'
        " <https://links.example.net/v2/x?page=1>;rel=prev,"
        " <https://other.example.org/api/v2>; rel=up"
    )
    assert rewriter.link_header(value, PROXY) == (
        '<http://127.0.0.1:8080/v2/x?page=3>; rel="next"; title="<https://api.example.com/api/t>",'
        " <http://127.0.0.1:8080/v2/x?page=1>;rel=prev,"
        " <https://other.example.org/api/v2>; rel=up"
    )


def test_json_content_types_are_recognised() -> None:
    for json_type in (
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/hal+json",
        "application/problem+json ;charset=UTF-8",
    ):
        assert is_json(json_type)
    for other in (None, "", "text/html", "text/json", "application/jsonx", "application/xml"):
        assert not is_json(other)


def test_a_base_that_is_not_an_http_url_is_refused() -> None:
    for url in ("ftp://h/x", "https://", "https://h/x?q=1", "https://u:p@h/", "https://h:port/"):
        with pytest.raises(ValueError):
            Base.parse(url)
