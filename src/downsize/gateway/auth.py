"""Gateway keys and roles, and the keyed hashing of origin identifiers.

Callers present a gateway key as `Authorization: Bearer <key>`. Roles:

- `agent`: call models (`/v1/chat/completions`, `/v1/models`) and report outcomes;
- `reader`: read the captured logs (`GET /v1/downsize/exchanges`);
- `admin`: everything, including managing specialists and routes.

Keys are held only as SHA-256 digests, looked up by digest: the configured key is read from its
environment variable once, at startup, and hashed; a config file may carry the digest itself so that it
holds no secret. With gateway keys configured, `Authorization` belongs to the gateway, so the agent's
upstream key travels in `X-Upstream-Authorization` (or comes from the gateway's config).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

from starlette.responses import JSONResponse

from downsize.config import GatewayKey
from downsize.errors import ConfigError
from downsize.gateway.metrics import Counter
from downsize.gateway.protocol import error_response

AGENT, READER, ADMIN = "agent", "reader", "admin"
CALL_MODELS = frozenset({AGENT, ADMIN})
READ_LOGS = frozenset({READER, ADMIN})
MANAGE = frozenset({ADMIN})


def key_digest(key: str) -> str:
    """The hex SHA-256 a config file may hold instead of a key (`downsize` keys are compared by it)."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The gateway keys: digest -> (role, label). Empty means the gateway does not authenticate callers."""

    def __init__(self, entries: dict[str, tuple[str, str]] | None = None) -> None:
        self._by_digest = entries or {}

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    @classmethod
    def from_config(cls, keys: Iterable[GatewayKey]) -> KeyRing:
        """Read each key from its environment variable (or take its digest); ConfigError when one is missing."""
        entries: dict[str, tuple[str, str]] = {}
        for key in keys:
            label = key.name or key.env or key.role
            if key.env is not None:
                value = os.environ.get(key.env, "").strip()
                if not value:
                    raise ConfigError(
                        f"gateway key {label!r} ({key.role}) is read from ${key.env}, which is not set"
                    )
                if len(value) < 16:
                    raise ConfigError(
                        f"gateway key {label!r} in ${key.env} is too short: use 16 characters or more"
                    )
                digest = key_digest(value)
            else:
                digest = (key.sha256 or "").strip().lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise ConfigError(f"gateway key {label!r}: sha256 must be 64 hex digits")
            if digest in entries and entries[digest][0] != key.role:
                raise ConfigError(f"gateway key {label!r} is configured twice with different roles")
            entries[digest] = (key.role, label)
        return cls(entries)

    def role(self, authorization: str | None) -> tuple[str, str] | None:
        """(role, label) for an `Authorization` header value, or None when it carries no known key."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        return self._by_digest.get(key_digest(token.strip()))


class Authorizer:
    """Checks a request's gateway key against the roles an endpoint allows; counts refusals."""

    def __init__(self, keys: KeyRing, failures: Counter) -> None:
        self.keys = keys
        self.enabled = keys.enabled
        self.failures = failures

    def check(self, authorization: str | None, allowed: frozenset[str]) -> JSONResponse | None:
        """None when the caller may go on; else the OpenAI-shaped 401/403 to answer.

        Without gateway keys the model endpoints are open (as with any OpenAI proxy) and the log and
        admin endpoints closed: they would otherwise hand every captured conversation to anyone.
        """
        wanted = " or ".join(sorted(allowed))
        if not self.enabled:
            if AGENT in allowed:
                return None
            self.failures.inc("no_keys")
            return error_response(
                403,
                f"this endpoint needs a gateway key with role {wanted}, and the gateway has no gateway_keys "
                "configured: add them to its config (see docs/gateway.md)",
                type_="permission_error",
                code="no_gateway_keys",
            )
        found = self.keys.role(authorization)
        if found is None:
            reason = "missing" if not authorization else "invalid"
            self.failures.inc(reason)
            what = "no gateway key was sent" if reason == "missing" else "the gateway key is not valid"
            return error_response(
                401,
                f"{what}: send 'Authorization: Bearer <gateway key>' (the upstream key, if any, goes in "
                "X-Upstream-Authorization)",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if found[0] not in allowed:
            self.failures.inc("forbidden")
            return error_response(
                403,
                f"a gateway key with role {found[0]} may not use this endpoint: it needs role {wanted}",
                type_="permission_error",
                code="insufficient_role",
            )
        return None


class OriginHasher:
    """HMAC-SHA256 of origin identifiers (user, session, agent) under a key from the environment.

    Keyed, so that a known user name cannot be hashed by whoever reads the database to find its rows;
    deterministic, so a session's exchanges still group together and outcomes still find them.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_env(cls, name: str) -> OriginHasher:
        value = os.environ.get(name, "")
        if len(value) < 16:
            raise ConfigError(
                f"anonymize is on but ${name} is {'too short' if value else 'not set'}: set it to a secret of "
                "16 characters or more (e.g. base64 of 32 random bytes); keep it to hash later outcomes alike"
            )
        return cls(value.encode())

    def __repr__(self) -> str:
        return "OriginHasher(<key hidden>)"

    def __call__(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()
