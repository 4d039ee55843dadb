"""Curation of logged calls into the training view: what is dropped, flagged, deduplicated and masked.

Each exchange gets exactly one outcome, so the report's counts add up: kept, or removed for the first
reason that applies, in this order:

1. `error`: the upstream failed (status >= 400, an error body): nothing to learn.
2. `empty`: no content and no tool call.
3. `refused`: the model declined (OpenAI's `refusal` field, or a reply opening with a refusal).
4. `hci`: a text reply to a human. Flagged always, excluded unless `include_hci` (the paper keeps
   human-facing turns with the large model: tone and judgement, not a narrow skill).
5. `outcome_failed` / `outcome_unknown`: with `success_only`, workflows not reported successful.
6. `exact_duplicate`: the same request and response as an exchange already kept (retries, replays).
7. `near_duplicate`: a pruned prompt (the newest `dedup_words` words of the conversation: what the
   specialist sees) whose MinHash Jaccard similarity to an exchange already kept from another session is
   at least `near_dup_threshold`. Calls of one session are never each other's duplicates: each is a step.

Dedup runs on the originals (surrogates differ between conversations) and compares only with what is
kept, so a duplicate of a dropped call survives. PII masking then runs per conversation on what is kept.
The test split is never curated unless asked (`include_test`): it is never trained on.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from downsize.curate.config import CurateConfig
from downsize.errors import ConfigError
from downsize.prompting import PromptBudget, prune_messages
from downsize.shapes import response_message
from downsize.store import Store
from downsize.types import Exchange

REASONS = (
    "error",
    "empty",
    "refused",
    "hci",
    "outcome_failed",
    "outcome_unknown",
    "exact_duplicate",
    "near_duplicate",
)

Progress = Callable[[str], None]


@dataclass
class CurationReport:
    """What a curation run did; `kept + sum(removed.values()) == exchanges` always."""

    run_id: int
    exchanges: int = 0
    kept: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    hci_flagged: int = 0
    hci_kept: int = 0
    kept_by_kind: dict[str, int] = field(default_factory=dict)
    test_split_skipped: int = 0
    pii: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_hci(exchange: Exchange) -> bool:
    """A text reply to a human. The importer or gateway may have said so; otherwise a text response is."""
    if exchange.is_hci is not None:
        return bool(exchange.is_hci)
    return exchange.response_kind == "text"


def _refusal(exchange: Exchange, patterns: list[re.Pattern[str]]) -> bool:
    message = response_message(exchange.response) or {}
    if message.get("refusal"):
        return True
    if message.get("tool_calls"):
        return False
    content = message.get("content")
    return isinstance(content, str) and any(p.search(content) for p in patterns)


def drop_reason(exchange: Exchange, config: CurateConfig, refusals: list[re.Pattern[str]]) -> str | None:
    """The first quality or scope reason to remove an exchange (duplicates are judged later), or None."""
    if (
        exchange.response_kind == "error"
        or (exchange.upstream_status or 200) >= 400
        or exchange.response is None
    ):
        return "error"
    if exchange.response_kind == "empty":
        return "empty"
    if _refusal(exchange, refusals):
        return "refused"
    if is_hci(exchange) and not config.include_hci:
        return "hci"
    if config.success_only:
        if exchange.outcome is None:
            return "outcome_unknown"
        if exchange.outcome < config.success_threshold:
            return "outcome_failed"
    return None


def fingerprint(exchange: Exchange) -> str:
    """Hash of the whole call (request and the response's message), key order ignored."""
    payload = {"request": exchange.request, "message": response_message(exchange.response)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def pruned_prompt(exchange: Exchange, words: int) -> str:
    """The newest `words` words of the conversation, system prompt and tool schemas left out."""
    vocab: dict[str, int] = {}
    names: list[str] = []

    def encode(text: str) -> list[int]:
        ids = []
        for word in text.split():
            if word not in vocab:
                vocab[word] = len(names)
                names.append(word)
            ids.append(vocab[word])
        return ids

    def decode(ids: Any) -> str:
        return " ".join(names[i] for i in ids)

    messages = exchange.request.get("messages") or []
    return prune_messages(messages, encode, decode, PromptBudget(words, max(8, words // 2)))


class NearDuplicates:
    """MinHash LSH over word 3-gram shingles; an exchange is a near duplicate of a kept one from another session."""

    def __init__(self, threshold: float, num_perm: int = 128) -> None:
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError as exc:
            raise ConfigError(
                "near-duplicate removal needs datasketch: pip install 'downsize[pii]' "
                "(or set near_dup_threshold to null)"
            ) from exc
        self._minhash = MinHash
        self.threshold = threshold
        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=min(threshold, 0.99), num_perm=num_perm)
        self.kept: dict[str, tuple[Any, str | None]] = {}

    def signature(self, text: str) -> Any:
        words = text.lower().split()
        shingles = {" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))}
        m = self._minhash(num_perm=self.num_perm)
        m.update_batch([s.encode() for s in shingles])
        return m

    def is_duplicate(self, key: str, text: str, session: str | None) -> bool:
        """True if a kept exchange of another session is similar enough; otherwise remember this one."""
        m = self.signature(text)
        for other in self.lsh.query(m):
            other_m, other_session = self.kept[other]
            if (session is None or other_session != session) and m.jaccard(other_m) >= self.threshold:
                return True
        self.lsh.insert(key, m)
        self.kept[key] = (m, session)
        return False


def _conversation_key(exchange: Exchange) -> str:
    return f"session:{exchange.session}" if exchange.session else f"exchange:{exchange.id}"


def curate(store: Store, config: CurateConfig, progress: Progress | None = None) -> CurationReport:
    """Curate the store's exchanges into a new curation run; returns its report (also stored with the run)."""
    from downsize.curate import view

    say = progress or (lambda _msg: None)
    try:
        refusals = [re.compile(p, re.I) for p in config.refusal_patterns]
    except re.error as exc:
        raise ConfigError(f"refusal_patterns: bad regex: {exc}") from exc
    near = NearDuplicates(config.near_dup_threshold, config.num_perm) if config.near_dup_threshold else None
    run_id = view.start_run(store, asdict(config))
    report = CurationReport(run_id=run_id)
    try:
        started = time.perf_counter()
        kept, last_of = _decide(store, config, refusals, near, report, run_id)
        report.seconds["filter_dedup"] = round(time.perf_counter() - started, 2)
        say(
            f"{report.exchanges} exchanges: {report.kept} kept, "
            f"{report.exchanges - report.kept} removed; masking {len(last_of)} conversations"
            if config.pii
            else f"{report.exchanges} exchanges: {report.kept} kept"
        )
        started = time.perf_counter()
        _write_kept(store, config, run_id, kept, last_of, report, say)
        report.seconds["mask_write"] = round(time.perf_counter() - started, 2)
        view.finish_run(store, run_id, report.as_dict())
    except BaseException:
        # Any failure (including Ctrl-C) leaves the run marked failed, never half-done and "latest".
        view.finish_run(store, run_id, report.as_dict(), status="failed")
        raise
    return report


def _decide(
    store: Store,
    config: CurateConfig,
    refusals: list[re.Pattern[str]],
    near: NearDuplicates | None,
    report: CurationReport,
    run_id: int,
) -> tuple[dict[int, bool], dict[str, int]]:
    """Pass 1: every exchange's outcome; removed ones are written now, kept ones after masking.

    Returns the kept exchange ids (with their HCI flag) and the last kept id of each conversation."""
    from downsize.curate import view

    seen: set[str] = set()
    kept: dict[int, bool] = {}
    last_of: dict[str, int] = {}
    removed_rows: list[dict[str, Any]] = []
    kinds: Counter[str] = Counter()
    for ex in store.exchanges(source=config.source):
        if ex.split == "test" and not config.include_test:
            report.test_split_skipped += 1
            continue
        assert ex.id is not None
        report.exchanges += 1
        hci = is_hci(ex)
        report.hci_flagged += hci
        reason = drop_reason(ex, config, refusals)
        if reason is None:
            digest = fingerprint(ex)
            if digest in seen:
                reason = "exact_duplicate"
            elif near is not None and near.is_duplicate(
                str(ex.id), pruned_prompt(ex, config.dedup_words), ex.session
            ):
                reason = "near_duplicate"
            seen.add(digest)
        if reason is not None:
            report.removed[reason] += 1
            removed_rows.append({"exchange_id": ex.id, "kept": False, "reason": reason, "is_hci": hci})
            if len(removed_rows) >= 500:
                view.write_curated(store, run_id, removed_rows)
                removed_rows = []
            continue
        report.kept += 1
        report.hci_kept += hci
        kinds[ex.response_kind or "unknown"] += 1
        kept[ex.id] = hci
        last_of[_conversation_key(ex)] = ex.id  # ids ascend: the last one seen is the last
    view.write_curated(store, run_id, removed_rows)
    report.kept_by_kind = dict(kinds)
    return kept, last_of


def _write_kept(
    store: Store,
    config: CurateConfig,
    run_id: int,
    kept: dict[int, bool],
    last_of: dict[str, int],
    report: CurationReport,
    say: Progress,
) -> None:
    """Pass 2: stream the store again, mask each conversation once its last kept exchange has been read."""
    from downsize.curate import view

    if not config.pii:
        rows = [{"exchange_id": i, "kept": True, "is_hci": hci} for i, hci in sorted(kept.items())]
        for start in range(0, len(rows), 1000):
            view.write_curated(store, run_id, rows[start : start + 1000])
        report.pii = {"masked": False}
        return

    from downsize.curate.pii import PiiScrubber

    scrubber = PiiScrubber.from_config(config)
    values: Counter[str] = Counter()
    pending: dict[str, list[Exchange]] = defaultdict(list)
    done = 0
    for ex in store.exchanges(source=config.source):
        if ex.id not in kept:
            continue
        key = _conversation_key(ex)
        pending[key].append(ex)
        if ex.id != last_of[key]:
            continue
        batch = pending.pop(key)
        masked, found = scrubber.mask_conversation(key, [(e.request, e.response) for e in batch])
        values.update(found)
        view.write_curated(
            store,
            run_id,
            [
                {
                    "exchange_id": e.id,
                    "kept": True,
                    "is_hci": kept[e.id],
                    "request": request,
                    "response": response,
                    "pii": dict(found),
                }
                for e, (request, response) in zip(batch, masked, strict=True)
                if e.id is not None
            ],
        )
        done += 1
        if done % 25 == 0:
            say(f"  masked {done}/{len(last_of)} conversations")
    report.pii = {
        "masked": True,
        "mode": config.mode,
        "policy": config.pii_policy,
        "conversations": len(last_of),
        "values_by_entity": dict(sorted(values.items())),
        "values": sum(values.values()),
    }
