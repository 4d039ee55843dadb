"""The LLM judge against a real HTTP server on a loopback port standing in for the judge model."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from downsize.errors import ConfigError, UpstreamError
from downsize.evaluate.judge import RUBRIC, Judge, JudgeConfig, JudgeItem, Verdict, parse_verdict
from downsize.evaluate.outputs import score_outputs, summarize

KEY = "sk-judge-test-0123456789abcdef"
KEY_ENV = "DOWNSIZE_TEST_JUDGE_KEY"
CONVERSATION = [
    {"role": "system", "content": "You are an airline agent. Policy: ..."},
    {"role": "user", "content": "Can I cancel reservation ZFA04Y?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_reservation_details", "arguments": '{"reservation_id": "ZFA04Y"}'},
            }
        ],
    },
    {"role": "tool", "name": "get_reservation_details", "content": '{"status": "booked", "insurance": "no"}'},
]
Reply = tuple[int, Any, float]  # status, payload (str: the judge's text; dict: JSON as is; bytes: raw), delay


def chat(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-judge",
        "object": "chat.completion",
        "created": 1,
        "model": "judge-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
    }


def by_candidate(body: dict[str, Any]) -> Reply:
    """Equivalent when the candidate says "yes, you can", with a little delay that varies by pair."""
    user = body["messages"][1]["content"]
    candidate = user.split("CANDIDATE reply:\n", 1)[1]
    same = candidate.lower().startswith("yes, you can")
    verdict = {"verdict": "equivalent" if same else "not_equivalent", "reason": f"pair {len(candidate) % 7}"}
    return 200, json.dumps(verdict), 0.001 * (len(candidate) % 5)


class JudgeStub:
    """An OpenAI-compatible chat endpoint on its own event loop thread; `requests` records what it got."""

    def __init__(
        self, replies: list[Reply] | None = None, respond: Callable[[dict[str, Any]], Reply] = by_candidate
    ) -> None:
        self.replies = list(replies or [])
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> JudgeStub:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(sock), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        status, payload, delay = self.replies.pop(0) if self.replies else self.respond(body)
        if delay:
            await asyncio.sleep(delay)
        if isinstance(payload, bytes):
            return web.Response(body=payload, status=status, content_type="text/html")
        return web.json_response(chat(payload) if isinstance(payload, str) else payload, status=status)


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY_ENV


def judge_for(stub: JudgeStub, **overrides: Any) -> Judge:
    config = JudgeConfig(base_url=stub.base_url, model="judge-model", api_key_env=KEY_ENV, backoff_s=0.01)
    for name, value in overrides.items():
        setattr(config, name, value)
    return Judge(config)


def test_request_shape_key_in_header_and_never_logged(key_env: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with JudgeStub() as stub:
        judge = judge_for(stub)
        verdict = judge.judge(
            CONVERSATION, "Yes, you can cancel ZFA04Y.", "Yes, you can cancel it: it is booked."
        )
    assert verdict.equivalent is True and verdict.reason.startswith("pair ")
    (request,) = stub.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0 and body["max_tokens"] == 200
    assert "response_format" not in body
    system, user = body["messages"]
    assert system == {"role": "system", "content": RUBRIC}
    assert user["role"] == "user"
    # the conversation without the system policy, then the reference, then the candidate
    assert "Policy" not in user["content"]
    assert "user: Can I cancel reservation ZFA04Y?" in user["content"]
    assert 'assistant called: get_reservation_details {"reservation_id": "ZFA04Y"}' in user["content"]
    assert "tool get_reservation_details returned:" in user["content"]
    assert user["content"].index("REFERENCE reply:\nYes, you can cancel it") < user["content"].index(
        "CANDIDATE reply:\nYes, you can cancel ZFA04Y."
    )
    assert KEY not in caplog.text and KEY not in repr(judge) and KEY not in repr(judge.config)
    assert "judging 1 pairs" in caplog.text


def test_many_pairs_concurrently_in_order(key_env: str) -> None:
    candidates = [
        f"{'Yes, you can' if i % 3 == 0 else 'No, you cannot'} cancel it ({'x' * i})" for i in range(9)
    ]
    items = [JudgeItem(CONVERSATION, c, "Yes, you can cancel it.") for c in candidates]
    with JudgeStub() as stub:
        verdicts = judge_for(stub, concurrency=3, json_mode=True).judge_many(items)
    assert [v.equivalent for v in verdicts] == [i % 3 == 0 for i in range(9)]
    assert len(stub.requests) == 9
    assert all(r["body"]["response_format"] == {"type": "json_object"} for r in stub.requests)
    assert judge_for(stub).judge_many([]) == []


def test_a_reply_without_a_verdict_is_asked_again_then_unknown(key_env: str) -> None:
    with JudgeStub(
        replies=[
            (200, "Hmm, hard to say.", 0.0),
            (200, '```json\n{"verdict": "not_equivalent", "reason": "wrong date"}\n```', 0.0),
        ]
    ) as stub:
        verdict = judge_for(stub).judge([], "on May 2", "on May 3")
    assert verdict == Verdict(False, "wrong date") and len(stub.requests) == 2
    with JudgeStub(replies=[(200, "Hmm.", 0.0)]) as stub:
        verdict = judge_for(stub, reask=0).judge([], "a", "b")
    assert verdict.equivalent is None and verdict.raw == "Hmm." and len(stub.requests) == 1


def test_retries_then_answers(key_env: str) -> None:
    error = {"error": {"message": "overloaded", "type": "server_error"}}
    with JudgeStub(replies=[(503, error, 0.0), (429, error, 0.0)]) as stub:
        verdict = judge_for(stub, retries=2).judge([], "Yes, you can.", "Yes, you can.")
    assert verdict.equivalent is True and len(stub.requests) == 3


@pytest.mark.parametrize(
    ("replies", "retries", "calls", "message"),
    [
        ([(500, {"error": {"message": "boom"}}, 0.0)] * 3, 2, 3, "answered HTTP 500: boom"),
        (
            [(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}, 0.0)],
            2,
            1,
            "answered HTTP 401: Incorrect API key provided: ***",
        ),
        ([(200, b"<html>not an API</html>", 0.0)], 2, 1, "did not answer with a chat completion"),
        ([(200, {"choices": []}, 0.0)], 2, 1, "did not answer with a chat completion"),
        ([(200, "late", 0.5)], 0, 1, "did not answer within 0.1 s"),
    ],
)
def test_errors_are_upstream_errors_without_the_key(
    key_env: str,
    caplog: pytest.LogCaptureFixture,
    replies: list[Reply],
    retries: int,
    calls: int,
    message: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    with JudgeStub(replies=list(replies)) as stub:
        judge = judge_for(stub, retries=retries, timeout_s=0.1)
        with pytest.raises(UpstreamError) as raised:
            judge.judge_many([JudgeItem([], "a", "b"), JudgeItem([], "c", "d")][:1])
    assert message in str(raised.value) and "judge" in str(raised.value)
    assert len(stub.requests) == calls
    assert KEY not in str(raised.value) and KEY not in caplog.text


def test_unreachable_judge_and_configuration(key_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    judge = Judge(JudgeConfig(f"http://127.0.0.1:{port}/v1", "m", api_key_env=KEY_ENV, retries=0))
    with pytest.raises(UpstreamError, match=f"the judge at http://127.0.0.1:{port}/v1 could not be reached"):
        judge.judge([], "a", "b")
    with pytest.raises(ConfigError, match="holds credentials") as raised:
        Judge(JudgeConfig(f"http://user:secret-pw@127.0.0.1:{port}/v1", "m", api_key_env=KEY_ENV))
    assert "secret-pw" not in str(raised.value)
    with pytest.raises(ConfigError, match="http\\(s\\) URL"):
        Judge(JudgeConfig("localhost:8000", "m", api_key_env=KEY_ENV))
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=f"\\${KEY_ENV}, which is not set"):
        Judge(JudgeConfig("http://127.0.0.1:1/v1", "m", api_key_env=KEY_ENV))
    with JudgeStub() as stub:  # a keyless endpoint (a local vLLM or llama.cpp server)
        assert (
            Judge(JudgeConfig(stub.base_url, "m", api_key_env=None))
            .judge([], "Yes, you can.", "ok")
            .equivalent
        )
    assert "Authorization" not in stub.requests[0]["headers"]


def test_judge_many_refuses_a_running_loop(key_env: str) -> None:
    judge = Judge(JudgeConfig("http://127.0.0.1:1/v1", "m", api_key_env=KEY_ENV))

    async def inside() -> None:
        with pytest.raises(RuntimeError, match="await ajudge_many"):
            judge.judge_many([JudgeItem([], "a", "b")])
        assert await judge.ajudge_many([]) == []

    asyncio.run(inside())


@pytest.mark.parametrize(
    ("reply", "equivalent"),
    [
        ('{"verdict": "equivalent", "reason": "same facts"}', True),
        ('{"verdict": "not_equivalent", "reason": "wrong flight"}', False),
        ('{"verdict": "Not Equivalent"}', False),
        ('{"Verdict": "EQUIVALENT."}', True),
        ('{"equivalent": false, "explanation": "x"}', False),
        ('{"is_equivalent": true}', True),
        ('{"verdict": "yes"}', True),
        ('{"answer": "no"}', False),
        ('```json\n{"verdict": "equivalent", "reason": "ok"}\n```', True),
        ('Sure. Here is my judgement: {"verdict": "not_equivalent", "reason": "r"} Hope it helps {', False),
        ('{"note": "x"} then {"verdict": "equivalent"}', True),
        ("Not equivalent: the dates differ.", False),
        ("NOT_EQUIVALENT", False),
        ("non-equivalent", False),
        ("The candidate is equivalent to the reference.", True),
        ("Yes, both say the flight is cancelled.", True),
        ("No. The candidate asks a different question.", False),
        ('{"verdict": "maybe"}', None),
        ("I cannot tell.", None),
        ("", None),
        ("{broken json", None),
    ],
)
def test_parse_verdict(reply: str, equivalent: bool | None) -> None:
    assert parse_verdict(reply).equivalent is equivalent


def test_parse_verdict_keeps_the_reason() -> None:
    assert parse_verdict('{"verdict": "not_equivalent", "reason": "wrong flight"}') == Verdict(
        False, "wrong flight"
    )
    assert parse_verdict("I cannot tell.").reason == "no verdict in the judge's reply"


def test_text_scoring_with_the_judge(key_env: str) -> None:
    """Equal texts are not sent to the judge; the others get its verdict as their agreement."""
    preds = ["Yes, you can cancel it.", "Yes, you can cancel it, it is booked.", "No, you cannot cancel it."]
    refs = ["yes you can cancel it", "Yes, you can cancel it.", "Yes, you can cancel it."]

    def embed(texts: list[str]) -> Any:
        import numpy as np

        return np.array([[1.0, float(t.startswith("No"))] for t in texts])

    with JudgeStub() as stub:
        scores = score_outputs(
            "text", preds, refs, embed=embed, judge=judge_for(stub), conversations=[CONVERSATION] * 3
        )
    assert len(stub.requests) == 2  # the first pair is equal as text
    assert [s.metrics["judge_equivalent"] for s in scores] == [True, True, False]
    assert [s.agrees for s in scores] == [True, True, False]
    assert scores[2].reason.startswith("judge: pair ")
    assert summarize(scores)["by_kind"]["text"]["judge_equivalent"] == pytest.approx(2 / 3)
