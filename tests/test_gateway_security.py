"""Gateway keys and roles, upstream keys never stored or logged, anonymised origins, encryption at rest,
the capture-time redaction hook, CORS, and workflow outcomes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from downsize.config import GatewayConfig
from downsize.errors import ConfigError, StoreError
from downsize.gateway.app import create_app
from downsize.gateway.logs import JsonFormatter, mask_secrets
from downsize.store.store import Store
from downsize.types import Exchange
from upstream_stub import TEXT, StubUpstream, serve_gateway

UPSTREAM_KEY = "sk-upstream-PLANTED-4d2c8e0a6b1f3e5d7c9a"
KEYS = {
    "agent": "gw-agent-PLANTED-1111111111111111",
    "reader": "gw-reader-PLANTED-2222222222222222",
    "admin": "gw-admin-PLANTED-3333333333333333",
}
SENTENCE = "My passport number is X1234567 and I fly to Lisbon on Friday."
CARD = "4111 1111 1111 1111"
MESSAGES: Any = [{"role": "user", "content": SENTENCE}]


@pytest.fixture(scope="module")
def stub() -> Iterator[StubUpstream]:
    server = StubUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gw.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{db_path}")
    yield store
    store.close()


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """Gateway keys for the three roles, read from the environment as in production."""
    for role, key in KEYS.items():
        monkeypatch.setenv(f"TEST_{role.upper()}_KEY", key)
    return [{"role": role, "env": f"TEST_{role.upper()}_KEY"} for role in KEYS]


def _call(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status, out = response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, out = exc.read(), exc.code, dict(exc.headers)
    try:
        return status, out, json.loads(raw) if raw else None
    except ValueError:
        return status, out, raw.decode()


def _bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def _chat(url: str, headers: dict[str, str], **extra: Any) -> tuple[int, dict[str, str], Any]:
    return _call(f"{url}/v1/chat/completions", "POST", {"model": "m", "messages": MESSAGES, **extra}, headers)


def _db_bytes(db_path: Path) -> bytes:
    """Every byte the store wrote (the database file and its WAL)."""
    return b"".join(p.read_bytes() for p in db_path.parent.iterdir() if p.name.startswith(db_path.name))


# -- keys and roles ------------------------------------------------------------------------------------------


def test_roles(stub: StubUpstream, store: Store, keyed: list[dict[str, str]]) -> None:
    config = GatewayConfig(upstream=stub.base_url, gateway_keys=keyed)  # type: ignore[arg-type]
    with serve_gateway(config, store) as (url, app):
        upstream = {"X-Upstream-Authorization": f"Bearer {UPSTREAM_KEY}"}
        for headers in ({}, {"Authorization": "Bearer gw-wrong-key-0000000000"}):
            status, out, body = _chat(url, headers)
            assert (status, body["error"]["code"], out.get("www-authenticate")) == (
                401,
                "invalid_api_key",
                "Bearer",
            )
        status, out, body = _chat(url, {**_bearer("agent"), **upstream})
        assert status == 200 and body["choices"][0]["message"]["content"] == TEXT
        assert stub.requests[-1]["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert KEYS["agent"] not in json.dumps(stub.requests[-1]["headers"]), "the gateway key stays here"
        # The official client: the gateway key as api_key, the upstream key in a header.
        client = openai.OpenAI(
            base_url=f"{url}/v1",
            api_key=KEYS["agent"],
            max_retries=0,
            default_headers={"X-Upstream-Authorization": UPSTREAM_KEY},
        )
        assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == TEXT
        assert stub.requests[-1]["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        with pytest.raises(openai.PermissionDeniedError, match="role reader may not use this endpoint"):
            openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS["reader"], max_retries=0).models.list()
        assert app.state.writer.flush(5)

        expected = {
            ("agent", "/v1/downsize/exchanges"): 403,
            ("agent", "/v1/downsize/specialists"): 403,
            ("reader", "/v1/downsize/exchanges"): 200,
            ("reader", "/v1/downsize/specialists"): 403,
            ("admin", "/v1/downsize/exchanges"): 200,
            ("admin", "/v1/downsize/specialists"): 200,
        }
        for (role, path), want in expected.items():
            status, _, body = _call(f"{url}{path}", headers=_bearer(role))
            assert status == want, (role, path, body)
            if want == 403:
                assert body["error"]["code"] == "insufficient_role"
        status, _, body = _call(f"{url}/v1/downsize/exchanges?limit=1", headers=_bearer("reader"))
        assert status == 200 and len(body["data"]) == 1
        assert body["data"][0]["request"]["messages"] == MESSAGES and body["data"][0]["id"] == 2
        status, _, body = _call(f"{url}/v1/downsize/exchanges?limit=0", headers=_bearer("reader"))
        assert status == 400 and body["error"]["param"] == "limit"
        status, _, body = _call(
            f"{url}/v1/downsize/outcomes", "POST", {"session": "s", "success": True}, _bearer("reader")
        )
        assert status == 403
        status, _, _ = _call(
            f"{url}/v1/downsize/outcomes", "POST", {"session": "s", "success": True}, _bearer("agent")
        )
        assert status == 200
        status, _, text = _call(f"{url}/metrics")
        assert status == 200
        for reason in ("missing", "invalid", "forbidden"):
            assert f'downsize_auth_failures_total{{reason="{reason}"}}' in text


def test_without_gateway_keys_the_log_endpoints_are_closed(stub: StubUpstream, store: Store) -> None:
    with serve_gateway(GatewayConfig(upstream=stub.base_url, public_metrics=False), store) as (url, _):
        for path in ("/v1/downsize/exchanges", "/v1/downsize/specialists", "/metrics"):
            status, _, body = _call(f"{url}{path}")
            assert status == 403 and body["error"]["code"] == "no_gateway_keys", path
        assert _chat(url, {"Authorization": f"Bearer {UPSTREAM_KEY}"})[0] == 200


def test_keys_never_stored_or_logged(
    stub: StubUpstream,
    store: Store,
    db_path: Path,
    keyed: list[dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    failing = StubUpstream(fail_status=503).start()
    try:
        # With gateway keys (upstream key in its own header), and a failing primary so that warnings are logged.
        config = GatewayConfig(
            upstream=failing.base_url,
            fallback_upstreams=[stub.base_url],  # type: ignore[list-item]
            upstream_retries=0,
            gateway_keys=keyed,  # type: ignore[arg-type]
        )
        with serve_gateway(config, store) as (url, app):
            headers = {**_bearer("agent"), "X-Upstream-Authorization": UPSTREAM_KEY}
            assert _chat(url, headers)[0] == 200
            assert _chat(url, headers, stream=True)[0] == 200
            assert _chat(url, {"Authorization": f"Bearer {UPSTREAM_KEY}"})[0] == 401  # logged as a failure
            assert app.state.writer.flush(5)
        # Without gateway keys (the upstream key in Authorization), with an unreachable upstream.
        with serve_gateway(GatewayConfig(upstream="http://127.0.0.1:9/v1", upstream_retries=0), store) as (
            url,
            app,
        ):
            assert _chat(url, {"Authorization": f"Bearer {UPSTREAM_KEY}"})[0] == 502
            assert app.state.writer.flush(5)
    finally:
        failing.stop()
    assert store.count_exchanges() == 3
    assert failing.requests and all(
        r["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}" for r in failing.requests
    )
    store.close()
    stored = _db_bytes(db_path)
    logged = caplog.text + "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "upstream attempt failed" in logged or "answered 503" in logged, "the failures were logged"
    for secret in (UPSTREAM_KEY, *KEYS.values()):
        assert secret.encode() not in stored
        assert secret not in logged
    assert b"PLANTED" not in stored and "PLANTED" not in logged


def test_log_lines_are_json_and_masked() -> None:
    record = logging.LogRecord(
        "downsize.gateway",
        logging.WARNING,
        __file__,
        1,
        "sent Authorization: Bearer %s",
        (UPSTREAM_KEY,),
        None,
    )
    record.upstream = "http://x/v1"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["upstream"] == "http://x/v1" and "PLANTED" not in line["msg"]
    assert mask_secrets("key sk-abcdefghijklmnop and api-key: secret123") == "key *** and api-key: ***"


# -- anonymisation and outcomes ------------------------------------------------------------------------------


def test_origin_ids_are_keyed_hashes_and_outcomes_find_them(
    stub: StubUpstream, store: Store, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    anon_key = "anon-key-0123456789abcdef0123456789"
    monkeypatch.setenv("DOWNSIZE_ANON_KEY", anon_key)

    def h(value: str) -> str:
        return hmac.new(anon_key.encode(), value.encode(), hashlib.sha256).hexdigest()

    with serve_gateway(GatewayConfig(upstream=stub.base_url, anonymize=True), store) as (url, _):
        meta = {"X-Downsize-Session": "order-77#1", "X-Downsize-Agent": "billing-bot"}
        assert _chat(url, meta, user="alice@example.com")[0] == 200
        assert _chat(url, {"X-Downsize-Session": "order-78#1"})[0] == 200
        status, _, body = _call(
            f"{url}/v1/downsize/outcomes", "POST", {"session": "order-77#1", "success": True}
        )
        assert (status, body["updated"]) == (200, 1)
        status, _, body = _call(
            f"{url}/v1/downsize/outcomes", "POST", {"session": "order-78#1", "success": False}
        )
        assert (status, body["updated"]) == (200, 1)
        for bad in ({"session": "", "success": True}, {"session": "x", "success": "yes"}, ["x"]):
            status, _, body = _call(f"{url}/v1/downsize/outcomes", "POST", bad)
            assert status == 400 and body["error"]["type"] == "invalid_request_error"
    first, second = store.exchanges()
    assert (first.session, first.agent, first.request["user"]) == (
        h("order-77#1"),
        h("billing-bot"),
        h("alice@example.com"),
    )
    assert (first.outcome, second.outcome, second.session) == (1.0, 0.0, h("order-78#1"))
    store.close()
    raw = _db_bytes(db_path)
    for clear in (b"alice@example.com", b"order-77#1", b"billing-bot"):
        assert clear not in raw


def test_anonymize_without_a_key_is_a_config_error(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOWNSIZE_ANON_KEY", raising=False)
    with pytest.raises(ConfigError, match="DOWNSIZE_ANON_KEY"):
        create_app(GatewayConfig(anonymize=True), store)


# -- encryption at rest -------------------------------------------------------------------------------------


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_bodies_encrypted_at_rest(
    stub: StubUpstream, tmp_path: Path, keyed: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _key()
    db_path = tmp_path / "enc.db"
    url_db = f"sqlite:///{db_path}"
    store = Store.open(url_db, encryption_key=key)
    config = GatewayConfig(upstream=stub.base_url, encrypt_bodies=True, gateway_keys=keyed)  # type: ignore[arg-type]
    with serve_gateway(config, store) as (url, app):
        assert _chat(url, _bearer("agent"))[0] == 200
        assert _chat(url, _bearer("agent"), stream=True)[0] == 200
        assert app.state.writer.flush(5)
        status, _, body = _call(f"{url}/v1/downsize/exchanges", headers=_bearer("reader"))
        assert status == 200 and [row["request"]["messages"] for row in body["data"]] == [MESSAGES] * 2
    stored = list(store.exchanges())
    assert stored[0].response is not None and stored[0].response["choices"][0]["message"]["content"] == TEXT
    store.close()
    raw = _db_bytes(db_path)
    assert b"aesgcm-v1" in raw
    for clear in (SENTENCE.encode(), b"passport", TEXT.encode(), b"Lisbon"):
        assert clear not in raw

    monkeypatch.delenv("DOWNSIZE_STORE_KEY", raising=False)
    with pytest.raises(StoreError, match="encrypted at rest and the store has no key"):
        list(Store.open(url_db).exchanges())
    with pytest.raises(StoreError, match="not the one it was written with"):
        list(Store.open(url_db, encryption_key=_key()).exchanges())
    monkeypatch.setenv("DOWNSIZE_STORE_KEY", key)
    reopened = Store.open(url_db)
    assert reopened.encrypts and [ex.request["messages"] for ex in reopened.exchanges()] == [MESSAGES] * 2
    assert reopened.count_exchanges(response_kind="text") == 2, "the extracted columns stay queryable"


def test_encryption_needs_a_valid_key(store: Store) -> None:
    with pytest.raises(ConfigError, match="encrypt_bodies is on but the store has no key"):
        create_app(GatewayConfig(encrypt_bodies=True), store)
    with pytest.raises(ConfigError, match="base64 of 32 bytes"):
        Store.open("sqlite://", encryption_key=base64.b64encode(b"short").decode())
    with pytest.raises(ConfigError, match="not valid base64"):
        Store.open("sqlite://", encryption_key="not base64 at all!")


# -- the redaction hook --------------------------------------------------------------------------------------


def redact_cards(exchange: Exchange) -> Exchange | None:
    """Mask card numbers in the request; keep nothing of requests marked private."""
    text = json.dumps(exchange.request)
    if "PRIVATE" in text:
        return None
    exchange.request = json.loads(re.sub(r"\b(?:\d{4} ){3}\d{4}\b", "[CARD]", text))
    return exchange


def redact_badly(exchange: Exchange) -> Exchange:
    raise ValueError(f"cannot redact {exchange.request}")


def test_redaction_hook_runs_before_storing(stub: StubUpstream, store: Store, db_path: Path) -> None:
    config = GatewayConfig(upstream=stub.base_url, redact="test_gateway_security:redact_cards")
    with serve_gateway(config, store) as (url, app):
        card = [{"role": "user", "content": f"Charge card {CARD} please"}]
        assert _call(f"{url}/v1/chat/completions", "POST", {"messages": card})[0] == 200
        assert (
            _call(
                f"{url}/v1/chat/completions", "POST", {"messages": [{"role": "user", "content": "PRIVATE"}]}
            )[0]
            == 200
        )
        assert app.state.writer.flush(5)
        assert app.state.writer.filtered == 1
    [ex] = store.exchanges()
    assert ex.request["messages"][0]["content"] == "Charge card [CARD] please"
    store.close()
    assert CARD.encode() not in _db_bytes(db_path)


def test_a_failing_hook_stores_nothing_and_logs_no_content(
    stub: StubUpstream, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with serve_gateway(
        GatewayConfig(upstream=stub.base_url, redact="test_gateway_security.redact_badly"), store
    ) as (
        url,
        app,
    ):
        assert _chat(url, {})[0] == 200, "the agent's call never fails for logging"
        assert app.state.writer.flush(5)
        assert app.state.writer.failed == 1
    assert store.count_exchanges() == 0
    assert "ValueError" in caplog.text and "passport" not in caplog.text
    with pytest.raises(ConfigError, match="cannot import"):
        create_app(GatewayConfig(redact="no_such_module_here:redact"), store)


# -- CORS ----------------------------------------------------------------------------------------------------


def test_cors_is_off_unless_origins_are_listed(stub: StubUpstream, store: Store) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with serve_gateway(GatewayConfig(upstream=stub.base_url), store) as (url, _):
        status, headers, _ = _call(f"{url}/v1/chat/completions", "OPTIONS", headers=preflight)
        assert status == 405 and "access-control-allow-origin" not in {k.lower() for k in headers}
    config = GatewayConfig(upstream=stub.base_url, cors_origins=["https://app.example"])
    with serve_gateway(config, store) as (url, _):
        status, headers, _ = _call(f"{url}/v1/chat/completions", "OPTIONS", headers=preflight)
        assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
        status, headers, _ = _call(
            f"{url}/v1/chat/completions", "OPTIONS", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert status == 400 and "access-control-allow-origin" not in {k.lower() for k in headers}
