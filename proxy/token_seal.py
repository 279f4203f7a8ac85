"""Tokens as a fleet keeps them in Redis: sealed with AES-GCM under a key derived from the client
secret, so that read access to Redis gives no usable token."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.credentials import Secret

VERSION = b"\x01"
FINGERPRINT_SIZE = 16
FINGERPRINT_SLICE = (2, 1 + FINGERPRINT_SIZE)  # in an entry, 1-based, inclusive (Lua's string.sub)
NONCE_SIZE = 12  # 96 bits, AES-GCM's own size; random for every write
_SALT = b"agentsync-proxy fleet token v1"


@dataclass(frozen=True)
class SealedToken:
    """What a sealed entry holds besides its remaining lifetime (the Redis key's TTL)."""

    value: Secret = field(repr=False)
    lifetime: float
    scope: str | None


class TokenSeal:
    """Seals and opens tokens for one client (its id, secret and token URL) and scope.

    An entry is VERSION | fingerprint | nonce | ciphertext. The fingerprint, a keyed hash of the
    token, lets Redis compare an entry with the token a replica saw rejected (compare-and-delete
    in a script) without holding the token in clear."""

    def __init__(
        self, client_secret: Secret, client_id: str, token_url: str, scope: str | None = None
    ) -> None:
        secret = client_secret.reveal().encode()
        # A token is only ever shared with a replica of the same client asking the same scopes.
        scopes = " ".join(sorted(set((scope or "").split())))
        binding = b"\0".join((client_id.encode(), token_url.encode(), scopes.encode()))
        self._aead = AESGCM(_derive(secret, b"token encryption\0" + binding, 32))
        self._fingerprint_key = _derive(secret, b"token fingerprint\0" + binding, 32)
        # Names the key, not the secret: replicas with different secrets (or scopes) keep
        # different entries, so that none overwrites a token the others can open.
        self.key_id = _derive(secret, b"key id\0" + binding, 8).hex()
        self._associated = b"agentsync-proxy token\0" + binding

    def fingerprint(self, token: Secret) -> bytes:
        digest = hmac.new(self._fingerprint_key, token.reveal().encode(), hashlib.sha256)
        return digest.digest()[:FINGERPRINT_SIZE]

    def seal(self, token: Secret, lifetime: float, scope: str | None) -> bytes:
        plain = msgspec.json.encode({"token": token.reveal(), "lifetime": lifetime, "scope": scope})
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._aead.encrypt(nonce, plain, self._associated)
        return VERSION + self.fingerprint(token) + nonce + sealed

    def open(self, entry: bytes) -> SealedToken | None:
        """The token in `entry`, or None when it cannot be opened with this key (another
        secret, another client, a damaged or forged entry)."""
        head = 1 + FINGERPRINT_SIZE
        if len(entry) <= head + NONCE_SIZE or entry[:1] != VERSION:
            return None
        nonce, sealed = entry[head : head + NONCE_SIZE], entry[head + NONCE_SIZE :]
        try:
            payload = msgspec.json.decode(self._aead.decrypt(nonce, sealed, self._associated))
        except (InvalidTag, msgspec.DecodeError):
            return None
        if not isinstance(payload, dict):
            return None
        value, lifetime, scope = payload.get("token"), payload.get("lifetime"), payload.get("scope")
        if not isinstance(value, str) or not value:
            return None
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            return None
        token = Secret(value)
        if not hmac.compare_digest(entry[1:head], self.fingerprint(token)):
            return None
        return SealedToken(token, float(lifetime), scope if isinstance(scope, str) else None)


def _derive(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT, info=info).derive(secret)
