"""Sealing the fleet's token for Redis: opened only with the same secret, client, token URL and
scopes; a fresh nonce each time; nothing of the token in clear."""

from __future__ import annotations

from proxy.credentials import Secret
from proxy.token_seal import TokenSeal

TOKEN = Secret("eyJhbGciOiJSUzI1NiJ9.a-token-of-the-fleet")
URL = "https://auth.agentsync.io/oauth2/token"


def seal_of(secret: str = "s3cret", client: str = "client", scope: str | None = "a b") -> TokenSeal:
    return TokenSeal(Secret(secret), client, URL, scope)


def test_a_sealed_token_opens_with_the_same_secret_client_and_scopes() -> None:
    entry = seal_of().seal(TOKEN, 3600.0, "a b")
    opened = seal_of(scope="b a").open(entry)  # the same scopes in another order
    assert opened is not None
    assert opened.value == TOKEN
    assert (opened.lifetime, opened.scope) == (3600.0, "a b")


def test_another_secret_client_or_scope_cannot_open_it_and_has_another_key_id() -> None:
    entry = seal_of().seal(TOKEN, 3600.0, None)
    for other in (seal_of(secret="other"), seal_of(client="other"), seal_of(scope="a")):
        assert other.open(entry) is None
        assert other.key_id != seal_of().key_id


def test_each_seal_has_a_fresh_nonce_and_no_token_in_clear() -> None:
    seal = seal_of()
    first, second = seal.seal(TOKEN, 60.0, None), seal.seal(TOKEN, 60.0, None)
    assert first != second
    assert first[:17] == second[:17]  # the version and the token's fingerprint
    for entry in (first, second):
        assert TOKEN.reveal().encode() not in entry
        assert b"s3cret" not in entry


def test_a_damaged_entry_does_not_open() -> None:
    seal = seal_of()
    entry = seal.seal(TOKEN, 60.0, None)
    for damaged in (
        entry[:-1] + bytes([entry[-1] ^ 1]),  # the ciphertext
        entry[:5] + bytes([entry[5] ^ 1]) + entry[6:],  # the fingerprint
        b"\x02" + entry[1:],  # another version
        entry[:20],  # cut short
        b"",
    ):
        assert seal.open(damaged) is None


def test_the_seal_shows_no_secret() -> None:
    assert "s3cret" not in repr(seal_of())
