"""An async client for any OpenAI-compatible API (the upstream LLM the gateway falls back to).

One aiohttp `ClientSession` per upstream and app lifetime, opened by `start()` inside the running event
loop and closed by `close()`: connections are pooled and kept alive, which matters more than anything else
for the gateway's throughput. The caller's headers (its `Authorization` key among them) are sent as given
and never kept: not on the object, not in logs, not in error messages. `UpstreamPool` puts several
upstreams in a fallback order, with retries, exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from downsize.errors import UpstreamError

logger = logging.getLogger(__name__)

# Hop-by-hop and framing headers: the gateway's server sets its own (aiohttp has already decoded the body).
_DROP_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "date",
        "server",
        "set-cookie",
        "proxy-authenticate",
        "upgrade",
        "trailer",
        "te",
    }
)


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not answer in time (the gateway maps it to 504, other upstream errors to 502)."""


def response_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    """The upstream's end-to-end response headers, fit to pass on to the gateway's client."""
    return {k: v for k, v in response.headers.items() if k.lower() not in _DROP_RESPONSE_HEADERS}


class UpstreamStream:
    """A streaming chat completion in flight: `status` and `headers` now, the body's bytes as they come.

    Use as `async with await upstream.stream_chat(body, headers) as stream:` or call `release()`.
    """

    def __init__(self, response: aiohttp.ClientResponse, upstream: Upstream) -> None:
        self.status = response.status
        self.headers = response_headers(response)
        self._response = response
        self._upstream = upstream

    @property
    def is_event_stream(self) -> bool:
        """True when the upstream answered with SSE (an error answer is plain JSON even for stream requests)."""
        return self._response.content_type == "text/event-stream"

    async def chunks(self) -> AsyncIterator[bytes]:
        """Raw body bytes as they arrive (SSE framing untouched); UpstreamError if the stream breaks."""
        try:
            async for data in self._response.content.iter_any():
                yield data
        except TimeoutError as exc:
            raise self._upstream.timeout_error("stopped streaming") from exc
        except aiohttp.ClientError as exc:
            raise self._upstream.connection_error(exc, "broke off the stream") from exc

    async def read(self) -> bytes:
        """The whole remaining body (for an upstream error answer to a stream request)."""
        try:
            return await self._response.read()
        except TimeoutError as exc:
            raise self._upstream.timeout_error("did not send its answer") from exc
        except aiohttp.ClientError as exc:
            raise self._upstream.connection_error(exc, "broke off its answer") from exc

    def release(self) -> None:
        """Give the connection back to the pool (or close it if the body was not read to the end)."""
        self._response.release()

    async def __aenter__(self) -> UpstreamStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Upstream:
    """An OpenAI-compatible API at `base_url` (e.g. `https://api.openai.com/v1`), called with pooled connections.

    `api_key` is a key of the gateway's own for this upstream (from its config). It is sent when the
    agent sent none, or always when `own_key` is set (an upstream of another provider must never see the
    agent's key). It is kept out of `repr` and of every message.
    """

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 120.0,
        max_connections: int = 512,
        connect_timeout_s: float = 10.0,
        api_key: str | None = None,
        own_key: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        # For logs and metrics: no userinfo, query or fragment (they may carry credentials).
        self.label = (
            f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
        )
        self.chat_url = f"{self.base_url}/chat/completions"
        self.models_url = f"{self.base_url}/models"
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._authorization = f"Bearer {api_key}" if api_key else None
        self._own_key = own_key and api_key is not None
        connect_s = min(timeout_s, connect_timeout_s)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_s)
        # A stream may last longer than `timeout_s` in total; only silence longer than that is an error.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> aiohttp.ClientSession:
        """Open the connection pool (idempotent); call inside the event loop that will use it."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300),
                timeout=self._timeout,
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def __repr__(self) -> str:
        return f"Upstream({self.label!r})"

    def with_auth(self, headers: Mapping[str, str], client_auth: str | None) -> Mapping[str, str]:
        """The headers to send this upstream: the agent's key, or this upstream's own (see the class doc)."""
        auth = self._authorization if self._own_key or client_auth is None else client_auth
        if auth is None:
            return headers
        return {**headers, "Authorization": auth}

    # -- errors: say where and what to do, never echo request headers ------------------------------------

    def connection_error(self, exc: BaseException, what: str = "could not be reached") -> UpstreamError:
        return UpstreamError(
            f"the upstream LLM at {self.label} {what} ({type(exc).__name__}: {exc}); "
            "check the gateway's --upstream URL and that the upstream server is up"
        )

    def timeout_error(self, what: str = "did not answer") -> UpstreamTimeoutError:
        return UpstreamTimeoutError(
            f"the upstream LLM at {self.label} {what} within {self.timeout_s:g} s; "
            "retry, or raise the gateway's upstream_timeout_s"
        )

    # -- calls ---------------------------------------------------------------------------------------------

    @staticmethod
    def _json_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
        # aiohttp would label raw bytes application/octet-stream.
        if "Content-Type" in headers or "content-type" in headers:
            return headers
        return {**headers, "Content-Type": "application/json"}

    async def post_chat(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        """POST a chat completion (not streaming): the upstream's status, headers and body, 4xx/5xx included."""
        session = self._session or await self.start()
        try:
            async with session.post(self.chat_url, data=body, headers=self._json_headers(headers)) as resp:
                return resp.status, response_headers(resp), await resp.read()
        except TimeoutError as exc:
            raise self.timeout_error() from exc
        except aiohttp.ClientError as exc:
            raise self.connection_error(exc) from exc

    async def stream_chat(self, body: bytes, headers: Mapping[str, str]) -> UpstreamStream:
        """POST a streaming chat completion; returns once the status and headers are in."""
        session = self._session or await self.start()
        try:
            resp = await session.post(
                self.chat_url, data=body, headers=self._json_headers(headers), timeout=self._stream_timeout
            )
        except TimeoutError as exc:
            raise self.timeout_error() from exc
        except aiohttp.ClientError as exc:
            raise self.connection_error(exc) from exc
        return UpstreamStream(resp, self)

    async def models(self, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """GET the upstream's model list: status and body."""
        session = self._session or await self.start()
        try:
            async with session.get(self.models_url, headers=headers) as resp:
                return resp.status, await resp.read()
        except TimeoutError as exc:
            raise self.timeout_error() from exc
        except aiohttp.ClientError as exc:
            raise self.connection_error(exc) from exc


class BufferedReply:
    """An upstream's whole (error) answer to a stream request, read so that the next upstream could be tried.

    It quacks like `UpstreamStream` where the gateway needs it: status, headers, `is_event_stream`
    (always False), `read()` and `release()`.
    """

    is_event_stream = False

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    async def read(self) -> bytes:
        return self.body

    def release(self) -> None:
        """Nothing to give back: the connection was released when the body was read."""


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds an upstream asked us to wait (`retry-after-ms` or numeric `Retry-After`), if it said."""
    for name, scale in (("retry-after-ms", 0.001), ("Retry-After", 1.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue  # an HTTP date: not worth parsing, the backoff applies
            if seconds >= 0:
                return seconds
    return None


AttemptHook = Callable[[Upstream, str], None]


class UpstreamPool:
    """Upstreams in fallback order, each request tried on one then the next, in rounds.

    A connect error, a timeout, or a status in `retry_statuses` (429 and 5xx by default) moves on to the
    next upstream at once; after a round over all of them fails, the pool waits (exponential backoff from
    `backoff_base_s`, doubling, capped at `backoff_max_s`, with jitter in [d/2, d]; at least the upstream's
    Retry-After when that is within the cap) and starts another round, `retries` times. When every
    attempt failed, the last upstream answer (status and body) is passed on if there was one, else the
    last connection error is raised. A stream is only retried before its first byte is relayed.

    Retrying a chat completion that timed out may make the upstream bill it twice: set `retries` to 0
    and list a single upstream where that matters more than availability.
    """

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        retries: int = 2,
        retry_statuses: Iterable[int] = (429, 500, 502, 503, 504),
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 4.0,
        on_attempt: AttemptHook | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("an UpstreamPool needs at least one upstream")
        self.upstreams = list(upstreams)
        self.retries = retries
        self.retry_statuses = frozenset(retry_statuses)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.on_attempt = on_attempt

    @property
    def primary(self) -> Upstream:
        return self.upstreams[0]

    async def start(self) -> None:
        for upstream in self.upstreams:
            await upstream.start()

    async def close(self) -> None:
        for upstream in self.upstreams:
            await upstream.close()

    def backoff_s(self, round_: int, retry_after: float | None = None) -> float:
        """The pause before round `round_` (1 = the first retry), jittered."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (round_ - 1))
        delay *= 0.5 + random.random() / 2
        if retry_after is not None and retry_after <= self.backoff_max_s:
            delay = max(delay, retry_after)
        return delay

    def _attempts(self) -> Iterable[tuple[int, Upstream]]:
        for round_ in range(self.retries + 1):
            for upstream in self.upstreams:
                yield round_, upstream

    def _note(self, upstream: Upstream, outcome: str) -> None:
        if self.on_attempt is not None:
            self.on_attempt(upstream, outcome)

    async def _pause(self, round_: int, last_round: int, retry_after: float | None) -> None:
        if round_ > last_round and round_ > 0:
            await asyncio.sleep(self.backoff_s(round_, retry_after))

    async def post_chat(
        self, body: bytes, headers: Mapping[str, str], client_auth: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """POST a chat completion along the fallback order: the first usable answer, 4xx included."""
        last_answer: tuple[int, dict[str, str], bytes] | None = None
        last_error: UpstreamError | None = None
        retry_after: float | None = None
        last_round = 0
        for round_, upstream in self._attempts():
            await self._pause(round_, last_round, retry_after)
            last_round = round_
            try:
                status, out_headers, data = await upstream.post_chat(
                    body, upstream.with_auth(headers, client_auth)
                )
            except UpstreamError as exc:
                self._note(upstream, "timeout" if isinstance(exc, UpstreamTimeoutError) else "error")
                logger.warning("upstream attempt failed, trying the next: %s", exc)
                last_error = exc
                continue
            if status not in self.retry_statuses:
                self._note(upstream, "ok")
                return status, out_headers, data
            self._note(upstream, f"status_{status}")
            logger.warning("upstream %s answered %d; trying the next", upstream.label, status)
            last_answer, retry_after = (status, out_headers, data), retry_after_s(out_headers)
        if last_answer is not None:
            return last_answer
        assert last_error is not None
        raise last_error

    async def stream_chat(
        self, body: bytes, headers: Mapping[str, str], client_auth: str | None = None
    ) -> UpstreamStream | BufferedReply:
        """Open a streaming chat completion along the fallback order; returns once status and headers are in."""
        last_answer: BufferedReply | None = None
        last_error: UpstreamError | None = None
        retry_after: float | None = None
        last_round = 0
        for round_, upstream in self._attempts():
            await self._pause(round_, last_round, retry_after)
            last_round = round_
            try:
                stream = await upstream.stream_chat(body, upstream.with_auth(headers, client_auth))
                if stream.status not in self.retry_statuses:
                    self._note(upstream, "ok")
                    return stream
                try:
                    data = await stream.read()
                finally:
                    stream.release()
            except UpstreamError as exc:
                self._note(upstream, "timeout" if isinstance(exc, UpstreamTimeoutError) else "error")
                logger.warning("upstream attempt failed, trying the next: %s", exc)
                last_error = exc
                continue
            self._note(upstream, f"status_{stream.status}")
            logger.warning("upstream %s answered %d; trying the next", upstream.label, stream.status)
            last_answer = BufferedReply(stream.status, stream.headers, data)
            retry_after = retry_after_s(stream.headers)
        if last_answer is not None:
            return last_answer
        assert last_error is not None
        raise last_error

    async def models(self, headers: Mapping[str, str], client_auth: str | None = None) -> tuple[int, bytes]:
        """GET the model list from the first upstream that answers usably (no backoff: a listing is cheap)."""
        last: tuple[int, bytes] | None = None
        last_error: UpstreamError | None = None
        for upstream in self.upstreams:
            try:
                status, data = await upstream.models(upstream.with_auth(headers, client_auth))
            except UpstreamError as exc:
                last_error = exc
                continue
            if status not in self.retry_statuses:
                return status, data
            last = status, data
        if last is not None:
            return last
        assert last_error is not None
        raise last_error


# -- reading a streamed chat completion back into one object ---------------------------------------------


def sse_data(raw: bytes | Iterable[bytes]) -> list[str]:
    """The `data` payloads of a server-sent-event stream, in order (multi-line data joined by newlines)."""
    blob = raw if isinstance(raw, bytes) else b"".join(raw)
    out: list[str] = []
    data: list[str] = []
    for line in blob.decode("utf-8", errors="replace").splitlines():
        if not line:
            if data:
                out.append("\n".join(data))
                data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        out.append("\n".join(data))
    return out


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: Mapping[str, Any], position: int) -> None:
    index = delta.get("index")
    slot = calls.setdefault(index if isinstance(index, int) else position, {"name": [], "arguments": []})
    for key in ("id", "type"):
        if delta.get(key):
            slot[key] = delta[key]
    fn = delta.get("function")
    if isinstance(fn, Mapping):
        if fn.get("name"):
            slot["name"].append(str(fn["name"]))
        if fn.get("arguments"):
            slot["arguments"].append(str(fn["arguments"]))


def reassemble_stream(raw: bytes | Iterable[bytes]) -> dict[str, Any] | None:
    """One `chat.completion` from the `chat.completion.chunk` events of a stream, as if it had not streamed.

    Content and refusal deltas are concatenated per choice; tool-call deltas are merged by their `index`
    (name and argument fragments concatenated). An `error` event is returned as `{"error": ...}`; a stream
    without a single chunk gives None.
    """
    top: dict[str, Any] = {}
    usage: Any = None
    choices: dict[int, dict[str, Any]] = {}
    seen = False
    for payload in sse_data(raw):
        if payload.strip() == "[DONE]":
            break
        try:
            chunk = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        if chunk.get("error"):
            return {"error": chunk["error"]}
        seen = True
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if key not in top and chunk.get(key) is not None:
                top[key] = chunk[key]
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index")
            if not isinstance(index, int):
                index = 0
            acc = choices.setdefault(
                index,
                {"role": "assistant", "content": [], "refusal": [], "tool_calls": {}, "function_call": None},
            )
            if choice.get("finish_reason"):
                acc["finish_reason"] = choice["finish_reason"]
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            if delta.get("role"):
                acc["role"] = delta["role"]
            if isinstance(delta.get("content"), str):
                acc["content"].append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                acc["refusal"].append(delta["refusal"])
            for position, call in enumerate(delta.get("tool_calls") or []):
                if isinstance(call, dict):
                    _merge_tool_call(acc["tool_calls"], call, position)
            if isinstance(delta.get("function_call"), dict):  # the legacy single-function form
                legacy = acc["function_call"] = acc["function_call"] or {"name": [], "arguments": []}
                for key in ("name", "arguments"):
                    if delta["function_call"].get(key):
                        legacy[key].append(str(delta["function_call"][key]))
    if not seen:
        return None
    out_choices = []
    for index in sorted(choices):
        acc = choices[index]
        message: dict[str, Any] = {
            "role": acc["role"],
            "content": "".join(acc["content"]) if acc["content"] else None,
        }
        if acc["refusal"]:
            message["refusal"] = "".join(acc["refusal"])
        if acc["tool_calls"]:
            message["tool_calls"] = [
                {
                    "id": slot.get("id"),
                    "type": slot.get("type", "function"),
                    "function": {"name": "".join(slot["name"]), "arguments": "".join(slot["arguments"])},
                }
                for _, slot in sorted(acc["tool_calls"].items())
            ]
        if acc["function_call"]:
            message["function_call"] = {k: "".join(v) for k, v in acc["function_call"].items()}
        out_choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": acc.get("finish_reason")}
        )
    result: dict[str, Any] = {"id": top.get("id"), "object": "chat.completion", **top, "choices": out_choices}
    if usage is not None:
        result["usage"] = usage
    return result
