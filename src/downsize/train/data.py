"""Supervised examples from logged exchanges: pruned prompt in the student's chat template, teacher's call as target."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from downsize.backends.student_prompt import build_prompt, end_of_turn
from downsize.calls import CallSelection, select_calls
from downsize.config import TrainConfig
from downsize.contracts import OutputContract, content_text, detect_contract
from downsize.copying import Copied
from downsize.errors import ConfigError
from downsize.prompting import PromptBudget
from downsize.sites import site_key
from downsize.store import Store
from downsize.types import Exchange


@dataclass
class Example:
    exchange_id: int | None
    prompt_ids: list[int]
    target_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


def selection(
    config: TrainConfig, role: str, kinds: tuple[str, ...] | None = ("tool_call",)
) -> CallSelection:
    """The calls a specialist's config names, in a split role: the one selection training, the gate, the
    copied-argument rules and evaluation share."""
    return CallSelection(
        source=config.source,
        agent=config.agent,
        role=role,
        kinds=kinds,
        tasks=tuple(config.tasks),
        discovery_run=config.discovery_run,
        tool_set=frozenset(config.tools) if config.tools else None,
        site=config.site,
        curated=config.curated,
        # every text answer is flagged as a possible reply to a human when logged; a call site chosen for a
        # JSON, label or text specialist is taken as machine-facing (`include_hci`)
        include_hci=kinds is not None and kinds != ("tool_call",),
        validation_fraction=config.validation_fraction,
        held_out_fold=config.fold,
    )


def answer_kinds(kind: str) -> tuple[str, ...]:
    """The stored response kinds a contract kind trains on (auto: every answer kind)."""
    if kind == "tool_call":
        return ("tool_call",)
    if kind == "auto":
        return ("tool_call", "json", "text")
    return ("json", "text")


def training_exchanges(store: Store, config: TrainConfig, role: str = "train") -> list[Exchange]:
    """The exchanges a config trains on (masked with `curated`), from one call site.

    A specialist answers one call site (`sites.site_key`: the tool set its requests offer, else its system
    prompt's template). Without --task, a store holding several call sites (several agents, or one agent with
    several steps) must be narrowed first. A call site that offers tools trains on its tool calls (the text
    replies there are the task gate's to learn); any other trains on its text and JSON answers.
    """
    chosen = select_calls(store, selection(config, role, answer_kinds(config.kind))).exchanges
    sites = Counter(site_key(ex.request) for ex in chosen)
    if len(sites) > 1 and not config.tasks:
        listed = "; ".join(f"{n} calls at {site[:90]}" for site, n in sites.most_common(5))
        raise ConfigError(
            f"the selected calls come from {len(sites)} call sites: {listed}. Pick one with --site KEY "
            "(`downsize sites` lists them), --agent, --source or --tools NAME,..., or train discovered tasks "
            "with --task KEY or --suitable (`downsize tasks`)"
        )
    if config.kind == "auto" and any(site.startswith("tools:") for site in sites):
        chosen = [ex for ex in chosen if ex.response_kind == "tool_call"]
    return chosen


def contract_for(config: TrainConfig, exchanges: list[Exchange]) -> OutputContract:
    """The output contract of the training calls: detected, and checked against the kind asked for.

    `--kind text` trains long free text too (a user's opt-in); any other kind must be the one detected.
    """
    found = detect_contract(exchanges)
    if config.kind in ("auto", found.kind):
        return found
    if config.kind == "text" and found.kind in ("long_text", "label"):
        longest = max((len(t) for ex in exchanges if (t := content_text(ex.response))), default=0)
        return replace(found, kind="text", max_tokens=max(16, int(longest / 3.5 * 1.25) + 8))
    raise ConfigError(
        f"the training calls are {found.kind} answers ({found.reason}), not {config.kind}: "
        f"train with --kind {found.kind} or --kind auto"
    )


def resolve_tasks(store: Store, config: TrainConfig) -> TrainConfig:
    """Pin `discovery_run` to the run the task keys come from, checking every key exists in it.

    A key `tool:NAME` stands for every tool-call task of the run whose dominant tool is NAME (discovered tasks
    are fine-grained: one tool's calls usually fall in dozens of them); the config returned lists the keys.
    """
    if not config.tasks:
        return config
    sites = [key.removeprefix("site:") for key in config.tasks if key.startswith("site:")]
    if sites:  # a call site unit (`downsize tasks`): every answer there, no discovered task needed
        if len(sites) > 1 or len(config.tasks) > 1 or (config.site and config.site != sites[0]):
            raise ConfigError(
                "a specialist answers one call site: pass one `--task site:KEY` and nothing else"
            )
        return replace(config, tasks=[], site=sites[0])
    from downsize.discover import runs

    run_id = runs.require_run(store, config.discovery_run)
    rows = runs.run_tasks(store, run_id)
    known = {t["task_key"]: t for t in rows}
    keys: list[str] = []
    unknown = []
    for key in config.tasks:
        if key.startswith("tool:"):
            tool = key.removeprefix("tool:")
            found = [
                t["task_key"] for t in rows if t["output_kind"] == "tool_call" and t["dominant_tool"] == tool
            ]
            if not found:
                unknown.append(key)
            keys += [k for k in found if k not in keys]
        elif key not in known:
            unknown.append(key)
        elif key not in keys:
            keys.append(key)
    if unknown:
        raise ConfigError(
            f"no task {', '.join(map(repr, unknown))} in discovery run {run_id}: "
            "`downsize tasks` lists the task keys and their dominant tools"
        )
    return replace(config, tasks=keys, discovery_run=run_id)


def build_examples(
    exchanges: list[Exchange],
    tokenizer: Any,
    config: TrainConfig,
    copied: Copied | None = None,
    contract: OutputContract | None = None,
) -> tuple[list[Example], int]:
    """Tokenised examples (loss on the target only) and how many were skipped (a target too long, or an
    answer that does not fit the contract).

    The target is the teacher's answer in the contract's form (`OutputContract.target`); the prompt carries
    the contract's instruction. `copied` (the parameters copied from the conversation) adds their options
    line to each prompt, as the runtime will at serving.
    """
    contract = contract or OutputContract("tool_call")
    budget = PromptBudget(config.max_prompt_tokens, config.max_message_tokens)
    limit = (
        config.max_target_tokens
        if contract.kind == "tool_call"
        else max(config.max_target_tokens, contract.max_tokens)
    )
    eot = end_of_turn(tokenizer)
    examples, skipped = [], 0
    for ex in exchanges:
        target = contract.target(ex.response)
        if target is None:
            skipped += contract.kind != "tool_call"  # a text reply at a tool call site is not skipped data
            continue
        prompt = build_prompt(
            tokenizer, ex.request.get("messages") or [], budget, copied, contract.instruction
        )
        target_ids = list(tokenizer.encode(target + eot, add_special_tokens=False))
        if len(target_ids) > limit:
            skipped += 1
            continue
        prompt_ids = list(tokenizer.encode(prompt, add_special_tokens=False))
        examples.append(Example(ex.id, prompt_ids, target_ids))
    return examples, skipped


def data_hash(examples: list[Example]) -> str:
    """Hash of exactly what the model is trained on (token ids), recorded with every adapter."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.prompt_ids, ex.target_ids]).encode())
    return h.hexdigest()
