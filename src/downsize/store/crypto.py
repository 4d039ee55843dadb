"""Encryption at rest of exchange bodies: AES-256-GCM, one random nonce per value, the column name as AAD.

An encrypted body is stored in its usual JSON column as the envelope
`{"enc": "aesgcm-v1", "nonce": <base64>, "ct": <base64>}`, so the schema does not change and a database may
hold clear and encrypted rows side by side (rows written before the key was set stay readable). Binding
the column name as associated data means a request's ciphertext cannot be swapped into a response column.
`cryptography` is imported only when a key is given.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from downsize.errors import ConfigError, StoreError

ENVELOPE = "aesgcm-v1"
DEFAULT_KEY_ENV = "DOWNSIZE_STORE_KEY"
_HOW = 'python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"'


def is_envelope(value: Any) -> bool:
    """True when a stored JSON value is an encrypted envelope rather than a clear body."""
    return isinstance(value, dict) and value.get("enc") == ENVELOPE and "ct" in value


def parse_key(key: str | bytes, source: str = "the store key") -> bytes:
    """32 raw key bytes from their base64 text (or the raw bytes themselves); ConfigError says how to make one."""
    if isinstance(key, bytes) and len(key) == 32:
        return key
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{source} is not valid base64; make one with {_HOW}") from exc
    if len(raw) != 32:
        raise ConfigError(
            f"{source} must be base64 of 32 bytes (AES-256), not {len(raw)}; make one with {_HOW}"
        )
    return raw


class BodyCipher:
    """Encrypts and decrypts JSON bodies with one AES-256-GCM key. The key is never printed or logged."""

    __slots__ = ("_aead",)

    def __init__(self, key: str | bytes) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:
            raise ConfigError(
                "encryption at rest needs the 'cryptography' package: pip install cryptography"
            ) from exc
        self._aead = AESGCM(parse_key(key))

    @classmethod
    def from_env(cls, name: str = DEFAULT_KEY_ENV) -> BodyCipher | None:
        """The cipher for the key in environment variable `name`, or None when it is unset or empty."""
        value = os.environ.get(name)
        if not value:
            return None
        return cls(parse_key(value, f"${name}"))

    def __repr__(self) -> str:
        return "BodyCipher(<key hidden>)"

    def encrypt(self, value: Any, column: str) -> dict[str, str] | None:
        """The envelope for a JSON-able value (None stays None: nothing to hide)."""
        if value is None:
            return None
        nonce = os.urandom(12)
        plain = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        ct = self._aead.encrypt(nonce, plain, column.encode())
        return {
            "enc": ENVELOPE,
            "nonce": base64.b64encode(nonce).decode(),
            "ct": base64.b64encode(ct).decode(),
        }

    def decrypt(self, value: Any, column: str) -> Any:
        """The clear value of an envelope; clear values pass through. StoreError on a wrong key or damage."""
        if not is_envelope(value):
            return value
        from cryptography.exceptions import InvalidTag

        try:
            plain = self._aead.decrypt(
                base64.b64decode(value["nonce"]), base64.b64decode(value["ct"]), column.encode()
            )
        except (InvalidTag, binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"an encrypted {column} body could not be decrypted ({type(exc).__name__}): the store key "
                "is not the one it was written with, or the row is damaged"
            ) from exc
        return json.loads(plain)


def require_key(column: str) -> StoreError:
    """The error for an encrypted body read without a key."""
    return StoreError(
        f"this exchange's {column} is encrypted at rest and the store has no key: set ${DEFAULT_KEY_ENV} "
        "(base64 of the 32-byte key it was written with) or pass encryption_key to Store.open"
    )
