"""PII and secrets: mask them in logged calls, consistently within a conversation.

Detection is `downsize.curate.recognizers` (presidio on the packaged spaCy model, plus secrets, names,
phones, payment ids). Agent logs are mostly JSON: tool results and tool-call arguments. They are parsed
and every string (and dict key) is masked on its own, so the JSON stays valid; a JSON key says what its
value is (`first_name`, `email`, `dob`, `user_id`, ...), which no NER model sees as well. A value found
once in a conversation (a name in a tool result) is masked wherever it recurs there ("Thank you, Mia").

Two modes, both consistent within a conversation (one mapping per conversation): typed placeholders
(`<PERSON_1>`) and realistic surrogates (Faker, seeded by conversation and value, so a curated data set
is reproducible and the same person differs between conversations). Names map word by word, and
emails and user ids are rebuilt from the surrogate names they contain, so "Mia Li", "mia.li3818@..."
and "mia_li_3668" stay one person. Secrets always become placeholders: a model must never learn to
write something that looks like a key.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from downsize.curate.cards import luhn_ok
from downsize.curate.config import DEFAULT_ENTITIES, STRICT_ENTITIES, CurateConfig
from downsize.curate.names import FIELD_LABEL, NAME_WORD, TITLES, NameFilter
from downsize.curate.recognizers import build_analyzer, phone_ok
from downsize.curate.secrets import SECRET_ENTITIES, SecretScanner, placeholder
from downsize.errors import ConfigError

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

SECRETS = frozenset(SECRET_ENTITIES)

DEFAULT_KEY_RULES: dict[str, str] = {
    **dict.fromkeys(
        ["first_name", "last_name", "given_name", "family_name", "surname", "middle_name", "full_name"],
        "PERSON",
    ),
    **dict.fromkeys(["passenger_name", "customer_name", "contact_name", "cardholder_name"], "PERSON"),
    **dict.fromkeys(["email", "email_address", "e_mail"], "EMAIL_ADDRESS"),
    **dict.fromkeys(["phone", "phone_number", "mobile", "telephone", "tel", "cell"], "PHONE_NUMBER"),
    **dict.fromkeys(["dob", "date_of_birth", "birth_date", "birthdate", "birthday"], "DATE_OF_BIRTH"),
    **dict.fromkeys(
        ["address", "address1", "address2", "address_line1", "address_line2", "street", "street_address"],
        "ADDRESS",
    ),
    **dict.fromkeys(["city", "zip", "zip_code", "zipcode", "postal_code", "postcode"], "ADDRESS"),
    **dict.fromkeys(["card_number", "credit_card_number", "cc_number", "pan"], "CREDIT_CARD"),
    **dict.fromkeys(["last_four", "last4", "card_last4", "last_4"], "CARD_LAST4"),
    **dict.fromkeys(["ssn", "social_security_number"], "US_SSN"),
    "iban": "IBAN_CODE",
    **dict.fromkeys(["ip", "ip_address", "client_ip"], "IP_ADDRESS"),
    **dict.fromkeys(["user_id", "customer_id", "username", "user_name", "account_id", "login"], "USER_ID"),
    **dict.fromkeys(["payment_id", "payment_method_id"], "PAYMENT_ID"),
    **dict.fromkeys(["password", "passwd", "pwd", "passphrase"], "PASSWORD"),
    **dict.fromkeys(
        ["api_key", "apikey", "secret", "client_secret", "secret_key", "access_key", "private_key"], "API_KEY"
    ),
    **dict.fromkeys(["token", "access_token", "refresh_token", "id_token", "authorization"], "BEARER_TOKEN"),
}

_PROPAGATE = frozenset(  # pattern detections sure enough to chase elsewhere (not context-scored ones)
    {"EMAIL_ADDRESS", "PAYMENT_ID", "USER_ID", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "PHONE_NUMBER"}
)
_BOUNDARY = r"(?<![\w@.-])"
_END = r"(?![\w@-])"


@dataclass(frozen=True)
class Span:
    """One detection inside a string: where, what, how sure, and which rule found it."""

    start: int
    end: int
    entity: str
    score: float
    source: str  # key | pattern | name | ner | known
    hint: str | None = None  # the JSON key, or first/last for a name token


# -- surrogates ------------------------------------------------------------------------------------

_KEEP_DOMAINS = frozenset(
    "example.com example.org example.net gmail.com yahoo.com outlook.com hotmail.com icloud.com aol.com".split()
)


def _match_case(template: str, value: str) -> str:
    if template.isupper() and len(template) > 1:
        return value.upper()
    if template.islower():
        return value.lower()
    return value[:1].upper() + value[1:]


def _scramble(value: str, rng: random.Random, letters: bool = True, keep: int = 0) -> str:
    """Same shape, other characters: digits stay digits, letters stay letters of the same case."""
    out = list(value[:keep])
    for ch in value[keep:]:
        if ch.isdigit():
            out.append(rng.choice(string.digits))
        elif letters and ch.isascii() and ch.isalpha():
            pool = string.ascii_uppercase if ch.isupper() else string.ascii_lowercase
            out.append(rng.choice(pool))
        else:
            out.append(ch)
    return "".join(out)


def _card_surrogate(value: str, rng: random.Random) -> str:
    digits = [i for i, ch in enumerate(value) if ch.isdigit()]
    chars = list(_scramble(value, rng, letters=False))
    if digits:
        for check in string.digits:
            chars[digits[-1]] = check
            if luhn_ok("".join(chars[i] for i in digits)):
                break
    return "".join(chars)


def _date_surrogate(value: str, rng: random.Random) -> str:
    day = date(rng.randint(1940, 2005), rng.randint(1, 12), rng.randint(1, 28))
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return day.isoformat()
    if re.fullmatch(r"\d{1,2}/\d{1,2}/\d{4}", value):
        return f"{day.month}/{day.day}/{day.year}"
    if re.fullmatch(r"[A-Z][a-z]+\.? \d{1,2},? \d{4}", value):
        return day.strftime("%B %-d, %Y")
    return _scramble(value, rng, letters=False)


# -- masking a conversation ------------------------------------------------------------------------

Visit = Callable[[str, str | None], str]


def _walk_json(value: Any, key: str | None, visit: Visit) -> Any:
    if isinstance(value, str):
        return visit(value, key)
    if isinstance(value, list):
        return [_walk_json(v, key, visit) for v in value]
    if isinstance(value, dict):
        return {visit(k, None): _walk_json(v, k.lower(), visit) for k, v in value.items()}
    return value


def _parse_json(text: str) -> Any | None:
    if text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict | list) else None


def _dump_like(original: str, parsed: Any, value: Any) -> str:
    """Re-serialise masked JSON in the original's separator style (compact for tool-call arguments)."""
    compact = json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))
    if compact == original or json.dumps(parsed, separators=(",", ":")) == original:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(value, ensure_ascii=False)


def map_strings(text: str, visit: Visit) -> str:
    """Apply `visit` to every string of a JSON text (values and keys) or to the whole text if it is not JSON."""
    parsed = _parse_json(text)
    if parsed is None:
        return visit(text, None)
    masked = _walk_json(parsed, None, visit)
    return text if masked == parsed else _dump_like(text, parsed, masked)


def map_message(message: dict[str, Any], visit: Visit) -> dict[str, Any]:
    """A copy of an OpenAI chat message with `visit` applied to its content, refusal and tool-call arguments."""
    out = dict(message)
    content = message.get("content")
    if isinstance(content, str):
        out["content"] = map_strings(content, visit)
    elif isinstance(content, list):
        out["content"] = [
            {**part, "text": map_strings(part["text"], visit)}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
    if isinstance(message.get("refusal"), str):
        out["refusal"] = visit(message["refusal"], None)
    if isinstance(message.get("tool_calls"), list):
        calls = []
        for call in message["tool_calls"]:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                call = {**call, "function": {**fn, "arguments": map_strings(fn["arguments"], visit)}}
            calls.append(call)
        out["tool_calls"] = calls
    return out


def map_exchange(
    request: dict[str, Any], response: dict[str, Any] | None, visit: Visit
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Copies of a request and its response with `visit` applied to every message string (tools untouched)."""
    new_request = dict(request)
    if isinstance(request.get("messages"), list):
        new_request["messages"] = [
            map_message(m, visit) if isinstance(m, dict) else m for m in request["messages"]
        ]
    if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
        return new_request, response
    choices = [
        {**c, "message": map_message(c["message"], visit)}
        if isinstance(c, dict) and isinstance(c.get("message"), dict)
        else c
        for c in response["choices"]
    ]
    return new_request, {**response, "choices": choices}


class Conversation:
    """One mapping from original values to replacements, shared by every exchange of a conversation.

    Use: `prepare()` every exchange (collects strings), then `mask()` each one. Preparing first lets
    a value found anywhere in the conversation be masked everywhere in it.
    """

    def __init__(self, scrubber: PiiScrubber, key: str) -> None:
        self.scrubber = scrubber
        self.key = key
        self._units: dict[tuple[str, str | None], None] = {}
        self._spans: dict[tuple[str, str | None], list[Span]] | None = None
        self._mapping: dict[tuple[str, str], str] = {}
        self._numbers: Counter[str] = Counter()
        self._used: set[str] = set()
        self._originals: set[str] = set()
        self._masked: dict[tuple[str, str | None], str] = {}
        self._roles: dict[str, str] = {}  # name word (lower) -> first_name | last_name
        self.values: Counter[str] = Counter()  # distinct values masked, by entity

    def _collect(self, text: str, key: str | None) -> str:
        self._units[(text, key)] = None
        return text

    def prepare(self, request: dict[str, Any], response: dict[str, Any] | None) -> None:
        if self._spans is not None:
            raise RuntimeError("prepare() every exchange of a conversation before masking any")
        map_exchange(request, response, self._collect)

    def _detect(self) -> dict[tuple[str, str | None], list[Span]]:
        units = list(self._units)
        found = self.scrubber.detect_units(units)
        if self.scrubber.propagate:  # only values that won where they were found ("03 2657" in an address no)
            known = self._known_values(units, [_resolve(spans) for spans in found])
            if known:
                for unit, spans in zip(units, found, strict=True):
                    spans.extend(_find_known(unit[0], known))
        resolved = {unit: _resolve(spans) for unit, spans in zip(units, found, strict=True)}
        for (text, _), spans in resolved.items():
            self._originals.update(text[s.start : s.end] for s in spans)
            for s in spans:
                if s.entity == "PERSON":
                    self._note_roles(text[s.start : s.end], s.hint)
        return resolved

    def _note_roles(self, value: str, hint: str | None) -> None:
        """Whether a name word is a first or a last name, for a surrogate of the same kind."""
        words = [w for w in NAME_WORD.findall(value) if w.lower() not in TITLES]
        if hint in ("first_name", "last_name", "surname", "family_name", "given_name"):
            role = "first_name" if hint in ("first_name", "given_name") else "last_name"
            for w in words:
                self._roles[w.lower()] = role
        elif len(words) > 1:
            self._roles.setdefault(words[0].lower(), "first_name")
            self._roles.setdefault(words[-1].lower(), "last_name")

    def _allocate_names(self) -> None:
        """Map every name word before anything else, so emails and user ids can be built from the surrogates."""
        assert self._spans is not None
        for (text, _), spans in self._spans.items():
            for s in spans:
                if s.entity == "PERSON":
                    self._replace(text[s.start : s.end], s)

    def _known_values(
        self, units: list[tuple[str, str | None]], found: list[list[Span]]
    ) -> dict[str, tuple[str, bool, str | None]]:
        """Values worth searching for elsewhere: what keys, patterns and the name lexicon found.

        Not NER guesses (one wrong guess would spread) and not cities (too common to chase)."""
        known: dict[str, tuple[str, bool, str | None]] = {}
        for (text, _), spans in zip(units, found, strict=True):
            for s in spans:
                if s.source == "ner" or s.hint == "city":
                    continue
                if s.source == "pattern" and s.entity not in _PROPAGATE:
                    continue
                value = text[s.start : s.end].strip()
                if s.entity == "PERSON":
                    for word in NAME_WORD.findall(value):
                        if len(word) >= 2 and word.lower() not in TITLES and not word.islower():
                            known.setdefault(word, ("PERSON", True, None))
                elif len(value) >= 4:
                    known.setdefault(value, (s.entity, False, s.hint))
        return known

    def detected(self) -> dict[tuple[str, str | None], list[Span]]:
        """What will be masked in each prepared (text, JSON key) unit (for measuring detection)."""
        if self._spans is None:
            self._spans = self._detect()
            self._allocate_names()
        return self._spans

    def mask(
        self, request: dict[str, Any], response: dict[str, Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Masked copies of one exchange's request and response; the originals are not touched."""
        if self._spans is None:
            self._spans = self._detect()
            self._allocate_names()
        return map_exchange(request, response, self._mask_unit)

    def mask_text(self, text: str) -> str:
        """Mask a single text (or JSON text) of this conversation, preparing it first if needed."""
        if self._spans is None:
            map_strings(text, self._collect)
            self._spans = self._detect()
            self._allocate_names()
        return map_strings(text, self._mask_unit)

    def _mask_unit(self, text: str, key: str | None) -> str:
        unit = (text, key)
        if unit in self._masked:
            return self._masked[unit]
        assert self._spans is not None
        spans = self._spans.get(unit)
        if spans is None:  # a string not seen in prepare(): detect it alone
            spans = _resolve(self.scrubber.detect_units([unit])[0])
            self._spans[unit] = spans
        out = text
        for s in sorted(spans, key=lambda s: s.start, reverse=True):
            out = out[: s.start] + self._replace(text[s.start : s.end], s) + out[s.end :]
        self._masked[unit] = out
        return out

    # -- replacements ------------------------------------------------------------------------------

    def _rng(self, entity: str, value: str, attempt: int) -> random.Random:
        digest = hashlib.sha256(
            f"{self.scrubber.seed}|{self.key}|{entity}|{value}|{attempt}".encode()
        ).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def _placeholder(self, entity: str, value: str) -> str:
        mapping_key = (entity if entity in SECRETS else "", value)
        if mapping_key not in self._mapping:
            self._numbers[entity] += 1
            self._mapping[mapping_key] = f"<{entity}_{self._numbers[entity]}>"
            self.values[entity] += 1
        return self._mapping[mapping_key]

    def _replace(self, value: str, span: Span) -> str:
        if span.entity == "PERSON":
            return NAME_WORD.sub(lambda m: self._name_word(m.group(0), span, m.start(), value), value)
        if self.scrubber.mode == "placeholder" or span.entity in SECRETS:
            return self._placeholder(span.entity, value)
        mapping_key = ("", value.lower() if span.entity == "EMAIL_ADDRESS" else value)
        if mapping_key not in self._mapping:
            self._mapping[mapping_key] = self._fresh(span, value)
            self.values[span.entity] += 1
        return self._mapping[mapping_key]

    def _fresh(self, span: Span, value: str) -> str:
        """A surrogate not used yet in this conversation and not equal to any original value in it."""
        for attempt in range(20):
            candidate = self._surrogate(span, value, self._rng(span.entity, value, attempt))
            if candidate not in self._used and candidate not in self._originals and candidate != value:
                self._used.add(candidate)
                return candidate
        return f"<{span.entity}>"

    def _name_word(self, word: str, span: Span, offset: int, whole: str) -> str:
        core = re.sub(r"['’]s$", "", word)
        if core.lower() in TITLES or len(core) < 2:
            return word
        suffix = word[len(core) :]
        if self.scrubber.mode == "placeholder":
            return self._placeholder("PERSON", core.lower()) + suffix
        mapping_key = ("PERSON", core.lower())
        if mapping_key not in self._mapping:
            role = self._roles.get(core.lower())
            last = role == "last_name"
            for attempt in range(20):
                fake = self.scrubber.faker(self._rng("PERSON", core.lower(), attempt))
                candidate = fake.last_name() if last else fake.first_name()
                if candidate.lower() not in self._used and candidate not in self._originals:
                    break
            self._used.add(candidate.lower())
            self._mapping[mapping_key] = candidate
            self.values["PERSON"] += 1
        return _match_case(core, self._mapping[mapping_key]) + suffix

    def _handle(self, value: str, rng: random.Random) -> str:
        """An email local part or a user id rebuilt from the surrogates of the names it contains."""
        parts = re.split(r"([A-Za-z]+)", value)
        replaced = False
        for i, part in enumerate(parts):
            mapped = self._mapping.get(("PERSON", part.lower())) if i % 2 == 1 else None
            if mapped:
                parts[i] = _match_case(part, mapped.lower())
                replaced = True
            elif i % 2 == 0:
                parts[i] = _scramble(part, rng, letters=False)
        if replaced:
            return "".join(parts)
        fake = self.scrubber.faker(rng)
        digits = re.sub(r"\D", "", value)
        sep = "_" if "_" in value else "."
        made = f"{fake.first_name()}{sep}{fake.last_name()}".lower()
        return made + (_scramble(digits, rng) if digits else "")

    def _surrogate(self, span: Span, value: str, rng: random.Random) -> str:
        entity, hint = span.entity, span.hint
        fake = self.scrubber.faker(rng)
        if entity == "EMAIL_ADDRESS" and "@" in value:
            local, _, domain = value.rpartition("@")
            domain = domain if domain.lower() in _KEEP_DOMAINS else fake.free_email_domain()
            return f"{self._handle(local, rng)}@{domain}"
        if entity == "USER_ID":
            return self._handle(value, rng)
        if entity == "CREDIT_CARD":
            return _card_surrogate(value, rng)
        if entity in ("PAYMENT_ID",):
            head, sep, tail = value.rpartition("_")
            return f"{head}{sep}{_scramble(tail, rng)}" if sep else _scramble(value, rng)
        if entity == "DATE_OF_BIRTH":
            return _date_surrogate(value, rng)
        if entity == "IP_ADDRESS":
            return str(fake.ipv6() if ":" in value else fake.ipv4_public())
        if entity == "ADDRESS":
            if hint == "city":
                return str(fake.city())
            if re.fullmatch(r"\d+[A-Za-z]?\s+\D.*", value) and not re.search(
                r"(?i)\b(apt|suite|unit)\b", value
            ):
                return str(fake.street_address())
            return _scramble(value, rng, letters=False)
        if entity == "LOCATION":
            return str(fake.city())
        if entity == "ORGANIZATION":
            return str(fake.company())
        if entity == "PHONE_NUMBER":  # the country code stays: +44 remains a UK number
            country = re.match(r"\s*(?:\+|00)\d{1,3}", value)
            return _scramble(value, rng, letters=False, keep=country.end() if country else 0)
        if entity in (
            "CARD_LAST4",
            "CARD_CVV",
            "CARD_EXPIRY",
            "AGE",
            "US_SSN",
            "US_BANK_NUMBER",
            "US_DRIVER_LICENSE",
        ):
            return _scramble(value, rng, letters=False)
        if entity in ("IBAN_CODE", "US_PASSPORT", "US_ITIN"):
            return _scramble(value, rng, keep=2 if entity == "IBAN_CODE" else 0)
        return f"<{entity}>"


def _find_known(text: str, known: dict[str, tuple[str, bool, str | None]]) -> list[Span]:
    if len(text) < 2:
        return []
    out: list[Span] = []
    lower = text.lower()
    for value, (entity, case_sensitive, hint) in known.items():
        if value not in text if case_sensitive else value.lower() not in lower:
            continue
        regex = re.compile(_BOUNDARY + re.escape(value) + _END, 0 if case_sensitive else re.I)
        out.extend(Span(m.start(), m.end(), entity, 0.95, "known", hint) for m in regex.finditer(text))
    return out


def _merge_same(spans: list[Span]) -> list[Span]:
    """Overlapping spans of one entity become their union ("Dr. Jacob van" + "Jacob van Gameren")."""
    out: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.entity, s.start)):
        last = out[-1] if out else None
        if last is not None and last.entity == s.entity and s.start < last.end:
            best = last if last.score >= s.score else s
            out[-1] = Span(
                last.start, max(last.end, s.end), s.entity, max(last.score, s.score), best.source, best.hint
            )
        else:
            out.append(s)
    return out


def _resolve(spans: list[Span]) -> list[Span]:
    """Non-overlapping spans: same-entity overlaps merged, then the surest (then the longest) winning."""
    chosen: list[Span] = []
    order = lambda s: (-s.score, s.entity not in SECRETS, -(s.end - s.start), s.start)  # noqa: E731
    for s in sorted(_merge_same(spans), key=order):
        if all(s.end <= c.start or s.start >= c.end for c in chosen):
            chosen.append(s)
    return sorted(chosen, key=lambda s: s.start)


class PiiScrubber:
    """Detects PII in strings (with a cache: agents resend the same messages) and hands out conversations."""

    def __init__(
        self,
        entities: Iterable[str] = DEFAULT_ENTITIES,
        mode: str = "surrogate",
        min_score: float = 0.4,
        patterns: Sequence[dict[str, Any]] = (),
        key_rules: dict[str, str] | None = None,
        allow: Iterable[str] = (),
        propagate: bool = True,
        seed: int = 0,
        ner: str = "sm",
    ) -> None:
        if mode not in ("placeholder", "surrogate"):
            raise ConfigError(f"mode must be placeholder or surrogate, not {mode!r}")
        self.patterns = list(patterns)
        self.entities = set(entities) | {str(p["entity"]) for p in self.patterns}
        self.mode = mode
        self.min_score = min_score
        self.key_rules = {**DEFAULT_KEY_RULES, **{k.lower(): v for k, v in (key_rules or {}).items()}}
        self.allow = set(allow)
        self.propagate = propagate
        self.seed = seed
        self.ner = ner
        self._analyzer: AnalyzerEngine | None = None
        self._names: NameFilter | None = None
        self._faker: Any = None
        self._cache: dict[str, list[Span]] = {}

    @classmethod
    def from_config(cls, config: CurateConfig) -> PiiScrubber:
        strict = STRICT_ENTITIES if config.pii_policy == "strict" else []
        return cls(
            entities=[*config.pii_entities, *strict],
            mode=config.mode,
            min_score=config.pii_min_score,
            patterns=config.pii_patterns,
            key_rules=config.pii_key_rules,
            allow=config.pii_allow,
            propagate=config.propagate,
            seed=config.seed,
            ner=config.pii_ner,
        )

    @property
    def analyzer(self) -> AnalyzerEngine:
        if self._analyzer is None:
            self._analyzer, self._names = build_analyzer(self.patterns, ner=self.ner)
        return self._analyzer

    def share_analyzer(self, other: PiiScrubber) -> None:
        """Reuse another scrubber's loaded analyzer (same user patterns), e.g. to compare entity sets."""
        self._analyzer, self._names = other.analyzer, other._names

    def faker(self, rng: random.Random) -> Any:
        """The shared Faker, reseeded from `rng` so each surrogate depends only on its own seed."""
        if self._faker is None:
            from faker import Faker

            self._faker = Faker("en_US")
        self._faker.seed_instance(rng.getrandbits(64))
        return self._faker

    def conversation(self, key: str) -> Conversation:
        return Conversation(self, key)

    def analyze(self, texts: Sequence[str], batch_size: int = 32) -> list[list[Span]]:
        """Spans of the masked entities in each text (cached by text), batched through spaCy."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache and t.strip()))
        if todo:
            analyzer = self.analyzer
            assert self._names is not None
            names = self._names
            entities = sorted(self.entities & set(analyzer.get_supported_entities("en")))
            if not entities:  # presidio reads an empty list as "every entity"
                self._cache.update((t, []) for t in todo)
                return [list(self._cache.get(t, [])) for t in texts]
            ner = {"SpacyRecognizer"}
            for text, artifacts in analyzer.nlp_engine.process_batch(todo, "en", batch_size=batch_size):
                results = analyzer.analyze(
                    text=str(text),
                    language="en",
                    entities=entities,
                    nlp_artifacts=artifacts,
                    score_threshold=self.min_score,
                )
                spans = []
                for r in results:
                    value = text[r.start : r.end]
                    if value in self.allow:
                        continue
                    name = (r.recognition_metadata or {}).get("recognizer_name", "")
                    source = "ner" if name in ner else "name" if name == "downsize_names" else "pattern"
                    prose = str(text) if source == "ner" else None  # NER's own call, in running prose
                    if (
                        r.entity_type == "PERSON"
                        and r.score < 0.9
                        and not names.plausible(value, prose, r.start)
                    ):
                        continue  # titles, cues and two-name runs (0.9) need no second opinion
                    if (
                        r.entity_type == "PERSON"
                        and r.score < 0.9
                        and FIELD_LABEL.match(text, r.end)
                        and value.strip().lower() not in names.first
                    ):
                        continue  # a field label in a reply ("**Date**:", "Date of Birth"), not "Sara: hi"
                    if r.entity_type == "PHONE_NUMBER" and not phone_ok(value):
                        continue  # presidio's phone recognizer also takes IPv4 addresses and dates
                    spans.append(Span(r.start, r.end, r.entity_type, float(r.score), source))
                self._cache[str(text)] = spans
        return [list(self._cache.get(t, [])) for t in texts]

    def detect_units(self, units: Sequence[tuple[str, str | None]]) -> list[list[Span]]:
        """Spans for (text, JSON key) units: a known key masks its whole value, other text goes to the analyzer."""
        out: list[list[Span] | None] = []
        to_analyze = []
        for text, key in units:
            entity = self.key_rules.get(key) if key else None
            stripped = text.strip()
            if (
                entity in self.entities
                and stripped
                and stripped not in self.allow
                and not (entity in SECRETS and placeholder(stripped))  # {"api_key": "<your key here>"}
            ):
                start = text.index(stripped)
                out.append([Span(start, start + len(stripped), str(entity), 1.0, "key", key)])
            else:
                out.append(None)
                to_analyze.append(text)
        analyzed = iter(self.analyze(to_analyze))
        results = [spans if spans is not None else next(analyzed) for spans in out]
        for (text, key), spans in zip(units, results, strict=True):
            if key and not any(sp.source == "key" for sp in spans):
                spans.extend(self._keyed_secrets(text, key))
        return results

    def _keyed_secrets(self, text: str, key: str) -> list[Span]:
        """gitleaks' rules want `name = value`; a JSON value is scanned with its key put back in front."""
        if not text.strip() or not SECRETS & self.entities:
            return []
        prefix = f'{key} = "'
        return [
            Span(f.start - len(prefix), f.end - len(prefix), f.entity, 0.95, "pattern", key)
            for f in SecretScanner.gitleaks().scan(f'{prefix}{text}"')
            if f.start >= len(prefix) and f.end <= len(prefix) + len(text) and f.entity in self.entities
        ]

    def mask_conversation(
        self, key: str, exchanges: Sequence[tuple[dict[str, Any], dict[str, Any] | None]]
    ) -> tuple[list[tuple[dict[str, Any], dict[str, Any] | None]], Counter[str]]:
        """Masked copies of a conversation's (request, response) pairs and the distinct values masked by entity."""
        conv = self.conversation(key)
        for request, response in exchanges:
            conv.prepare(request, response)
        masked = [conv.mask(request, response) for request, response in exchanges]
        return masked, conv.values
