"""An optional LLM judge for text outputs, through any OpenAI-compatible chat endpoint.

Embedding similarity says two replies are about the same thing, not that they say the same thing ("your
flight is cancelled" and "your flight is not cancelled" embed close together). A judge model reads the
conversation, the reference reply and the candidate, and answers with a fixed rubric whether a user would
get the same information and the same next step from either. The rubric is versioned (`RUBRIC_VERSION`) so
a report can say which one produced its verdicts.

The endpoint is reached through the gateway's own upstream client (`backends/upstream.py`): pooled
connections, a timeout per call, retries with backoff on 429 and 5xx. The API key is read from the
environment variable the config names, sent only as the `Authorization` header, and kept out of `repr`,
logs and error messages. A reply the rubric cannot be read from is asked again (`reask` times) and then
becomes a verdict of None ("unknown"), not an error: one confused reply should not sink an evaluation. An
endpoint that cannot be reached or answers with an error status raises `UpstreamError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from downsize.backends.upstream import Upstream, UpstreamPool, UpstreamTimeoutError
from downsize.errors import ConfigError, UpstreamError
from downsize.prompting import render_message

logger = logging.getLogger(__name__)

RUBRIC_VERSION = 1
RUBRIC = (
    "You judge whether a CANDIDATE reply of an AI assistant is equivalent to a REFERENCE reply, given the "
    "conversation before it.\n"
    "Equivalent means that the user would get the same information and the same next step from either reply: "
    "the same facts, numbers, names and identifiers, the same question asked, the same action taken or "
    "proposed. Wording, tone, length and formatting do not matter. A contradiction, a wrong or missing fact "
    "the user needs, or a different question or action makes them not equivalent.\n"
    'Answer with one JSON object and nothing else: {"verdict": "equivalent" or "not_equivalent", '
    '"reason": "<one short sentence>"}'
)
USER_TEMPLATE = (
    "CONVERSATION:\n{conversation}\n\nREFERENCE reply:\n{reference}\n\nCANDIDATE reply:\n{candidate}\n\n"
    "Is the CANDIDATE equivalent to the REFERENCE?"
)


@dataclass
class JudgeConfig:
    """Where the judge model is and how to call it."""

    base_url: str  # an OpenAI-compatible API root, e.g. https://api.openai.com/v1 or http://localhost:8000/v1
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"  # the variable holding the key; None for a keyless endpoint
    timeout_s: float = 60.0  # per call
    retries: int = 2  # further rounds after a failed call (connect error, timeout, 429, 5xx)
    backoff_s: float = 0.5  # first pause between rounds (doubles, jittered)
    reask: int = 1  # asks again when the reply holds no readable verdict
    concurrency: int = 4  # calls in flight at once
    max_tokens: int = 200
    temperature: float = 0.0
    json_mode: bool = False  # send response_format json_object (not every endpoint accepts it)
    max_conversation_chars: int = 6000  # the newest turns are kept
    max_answer_chars: int = 3000


@dataclass(frozen=True)
class JudgeItem:
    """One pair to judge: the conversation before the reply, the candidate reply and the reference."""

    conversation: list[dict[str, Any]]
    candidate: str
    reference: str


@dataclass(frozen=True)
class Verdict:
    """The judge's answer: equivalent or not (None when no verdict could be read), a short reason, its raw text."""

    equivalent: bool | None
    reason: str = ""
    raw: str = field(default="", repr=False, compare=False)


# -- reading verdicts ----------------------------------------------------------------------------------

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_WORD = re.compile(
    r"\b(?P<no>not[\s_-]*equivalent|non[\s_-]*equivalent|inequivalent)\b|\b(?P<yes>equivalent)\b",
    re.IGNORECASE,
)
_YES_NO = re.compile(r"^\W*(?P<word>yes|no)\b", re.IGNORECASE)
_TRUE = {"equivalent", "yes", "true", "same", "equal", "correct", "1"}
_FALSE = {"not_equivalent", "not equivalent", "non_equivalent", "inequivalent", "no", "false", "different"}
_VERDICT_KEYS = ("verdict", "equivalent", "is_equivalent", "answer", "judgement", "judgment", "decision")
_REASON_KEYS = ("reason", "explanation", "rationale", "justification")


def _read_word(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    word = value.strip().strip(".!\"'").lower().replace("-", "_")
    if word in _TRUE:
        return True
    if word in _FALSE or word.replace("_", " ") in _FALSE:
        return False
    return _read_text(value)


def _read_text(text: str) -> bool | None:
    yes_no = _YES_NO.search(text)
    if yes_no:
        return yes_no.group("word").lower() == "yes"
    found = _WORD.search(text)
    if found is None:
        return None
    return found.group("yes") is not None


def _objects(text: str) -> list[Mapping[str, Any]]:
    """Every JSON object that starts somewhere in the text (a model may wrap the rubric's object in prose)."""
    decoder = json.JSONDecoder()
    out = []
    for start in (i for i, c in enumerate(text) if c == "{"):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, Mapping):
            out.append(obj)
    return out


def parse_verdict(text: str) -> Verdict:
    """A verdict from the judge's reply: the rubric's JSON object (also inside a code fence or prose), else the
    first "equivalent" / "not equivalent" (or a leading yes / no) in the text; None when neither is there."""
    raw = (text or "").strip()
    body = _FENCE.sub("", raw).strip()
    for obj in _objects(body):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        reason = next((str(lowered[k]) for k in _REASON_KEYS if lowered.get(k)), "")
        for key in _VERDICT_KEYS:
            if key in lowered:
                equivalent = _read_word(lowered[key])
                if equivalent is not None:
                    return Verdict(equivalent, reason[:300], raw[:2000])
    equivalent = _read_text(body)
    if equivalent is None:
        return Verdict(None, "no verdict in the judge's reply", raw[:2000])
    return Verdict(equivalent, "", raw[:2000])


# -- asking ----------------------------------------------------------------------------------------------


def render_conversation(messages: Sequence[Mapping[str, Any]], max_chars: int) -> str:
    """The conversation as one line per turn (system turns left out), its newest `max_chars` kept."""
    lines = [line for m in messages if (line := render_message(dict(m))) is not None]
    text = "\n".join(lines) or "(no earlier turns)"
    return text if len(text) <= max_chars else "[earlier turns cut]\n" + text[-max_chars:]


def _cut(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars] + " [cut]"


class Judge:
    """Asks an OpenAI-compatible model whether candidate replies are equivalent to references."""

    def __init__(self, config: JudgeConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        parts = urlsplit(config.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("the judge's base_url must be an http(s) URL, e.g. https://api.openai.com/v1")
        if parts.username or parts.password:
            raise ConfigError(
                "the judge's base_url holds credentials: drop them from the URL and put the key in the "
                "environment variable that api_key_env names"
            )
        env = os.environ if environ is None else environ
        self._key: str | None = None
        if config.api_key_env:
            self._key = env.get(config.api_key_env) or None
            if self._key is None:
                raise ConfigError(
                    f"the judge reads its API key from ${config.api_key_env}, which is not set: export it, "
                    "or set the judge's api_key_env to none for an endpoint that needs no key"
                )
        self.label = Upstream(config.base_url).label

    def __repr__(self) -> str:
        return f"Judge({self.label!r}, model={self.config.model!r})"

    def request_body(self, item: JudgeItem) -> dict[str, Any]:
        """The chat-completion request sent for one pair (the rubric, then the pair)."""
        cfg = self.config
        user = USER_TEMPLATE.format(
            conversation=render_conversation(item.conversation, cfg.max_conversation_chars),
            reference=_cut(item.reference, cfg.max_answer_chars) or "(empty)",
            candidate=_cut(item.candidate, cfg.max_answer_chars) or "(empty)",
        )
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}],
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        if cfg.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _status_error(self, status: int, data: bytes) -> UpstreamError:
        detail = data.decode("utf-8", "replace")[:300]
        try:
            error = json.loads(data).get("error")
            if isinstance(error, Mapping) and error.get("message"):
                detail = str(error["message"])[:300]
        except (ValueError, AttributeError):
            pass
        where = f"${self.config.api_key_env}" if self.config.api_key_env else "the endpoint's access"
        return UpstreamError(
            self._scrub(
                f"the judge at {self.label} answered HTTP {status}: {detail}; check the judge's base URL, "
                f"the model name {self.config.model!r} and {where}"
            )
        )

    def _content(self, data: bytes) -> str:
        try:
            message = json.loads(data)["choices"][0]["message"]
            content = message.get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamError(
                self._scrub(
                    f"the judge at {self.label} did not answer with a chat completion "
                    f"({type(exc).__name__}; body starts {data[:120]!r}): is the base URL an OpenAI-compatible API root?"
                )
            ) from None
        return content if isinstance(content, str) else ""

    async def _judge_one(self, pool: UpstreamPool, item: JudgeItem) -> Verdict:
        payload = json.dumps(self.request_body(item)).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        verdict = Verdict(None, "not asked")
        for _ in range(self.config.reask + 1):
            try:
                status, _headers, data = await pool.post_chat(payload, headers)
            except UpstreamTimeoutError:
                raise UpstreamError(
                    f"the judge at {self.label} did not answer within {self.config.timeout_s:g} s "
                    f"({self.config.retries + 1} tries): raise the judge's timeout_s, or check its server"
                ) from None
            except UpstreamError as exc:
                cause = exc.__cause__
                detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
                raise UpstreamError(
                    self._scrub(
                        f"the judge at {self.label} could not be reached{detail}; check the judge's base URL "
                        "and that its server is up"
                    )
                ) from None
            if not 200 <= status < 300:
                raise self._status_error(status, data)
            verdict = parse_verdict(self._content(data))
            if verdict.equivalent is not None:
                return verdict
            logger.info("the judge's reply held no verdict; asking again")
        return verdict

    async def ajudge_many(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """Judge every pair, `concurrency` at a time, in the event loop that is running; verdicts in order."""
        if not items:
            return []
        cfg = self.config
        upstream = Upstream(cfg.base_url, timeout_s=cfg.timeout_s, api_key=self._key, own_key=True)
        pool = UpstreamPool([upstream], retries=cfg.retries, backoff_base_s=cfg.backoff_s)
        limit = asyncio.Semaphore(max(1, cfg.concurrency))
        logger.debug("judging %d pairs with %s at %s", len(items), cfg.model, self.label)

        async def one(item: JudgeItem) -> Verdict:
            async with limit:
                return await self._judge_one(pool, item)

        await pool.start()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(item)) for item in items]
        except BaseExceptionGroup as failed:  # the first error cancelled the rest: raise it plainly
            first = failed.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            await pool.close()
        return [t.result() for t in tasks]

    def judge_many(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """Judge every pair (blocking; from async code, await `ajudge_many`)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ajudge_many(items))
        raise RuntimeError(
            "Judge.judge_many was called inside a running event loop: await ajudge_many instead"
        )

    def judge(self, conversation: Sequence[Mapping[str, Any]], candidate: str, reference: str) -> Verdict:
        """Judge one pair."""
        return self.judge_many([JudgeItem([dict(m) for m in conversation], candidate, reference)])[0]
