"""Person names: the name lexicon, the dictionary that vetoes common words, and name-shape.

The recognizers (`downsize.curate.recognizers`) find name candidates by NER, lexicon and context; what
is here judges them. Names the lexicon does not hold are the hard case (measured in bench_pii.py by
leaving half of all name words out of it): for those, a word's spelling (`NameShape`) and its place in
running prose (`in_prose`) stand in for the list.
"""

from __future__ import annotations

import importlib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

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


# a capitalised word right after these is more often a place than a person ("grew up in Moknine")
PLACE_BEFORE = frozenset("in from at near into via across around towards toward outside".split())
_WORD_BEFORE = re.compile(r"([^\W\d_]+)[^\w\n]*$")
_WORD_AFTER = re.compile(r"([^\W\d_]+)")


def in_prose(text: str, start: int, end: int) -> bool:
    """Whether the one word text[start:end] is capitalised where the words around it are not: inside a
    sentence after a lower-case word (not a preposition of place) and before no capitalised word or number,
    or opening a sentence before a lower-case word. Title-case labels ("Gift Card 7091239", "**Payment
    Method:**") and headings fail."""
    span = text[start:end]
    if not re.fullmatch(r"[A-Z][a-z]+(?:['’-][A-Za-z]+)?", span):
        return False
    rest = text[end : end + 30].lstrip(" \t")
    after = _WORD_AFTER.match(rest)
    if rest[:1].isdigit() or (after is not None and not after.group(1).islower()):
        return False
    head = text[:start].rstrip()
    if not head or head[-1] in ".!?":
        return after is not None
    before = _WORD_BEFORE.search(text[max(0, start - 40) : start])
    return before is not None and before.group(1).islower() and before.group(1) not in PLACE_BEFORE


class NameShape:
    """How much a word is spelled like a name rather than like an English word ("Bašić", "Ruoho",
    "Roksana" yes; "Optigov", "Flight" no): naive Bayes over its character 2- to 4-grams, trained on the
    lexicon's names against the dictionary's other words. It needs no name list at use, only a sample
    to learn spellings from; a place name is spelled like a person's, so it is evidence, not a verdict."""

    def __init__(self, names: Iterable[str], words: Iterable[str]) -> None:
        self.names: Counter[str] = Counter()
        self.words: Counter[str] = Counter()
        self.n_names = self.n_words = 0
        for name in names:
            self.names.update(set(self._grams(name)))
            self.n_names += 1
        for word in words:
            self.words.update(set(self._grams(word)))
            self.n_words += 1

    @staticmethod
    def _grams(word: str) -> list[str]:
        w = f"^{word.lower()}$"
        return [w[i : i + n] for n in (2, 3, 4) for i in range(len(w) - n + 1)]

    def score(self, word: str) -> float:
        """Log-odds per gram, scaled by the square root of the gram count: > 0 leans to a name."""
        grams = set(self._grams(word))
        odds = sum(
            math.log((self.names[g] + 0.5) / (self.n_names + 1))
            - math.log((self.words[g] + 0.5) / (self.n_words + 1))
            for g in grams
        )
        return odds / math.sqrt(max(1, len(grams)))


class NameFilter:
    """Judges whether a span the models call a person is likely one."""

    SHAPE_MIN = 0.0  # NameShape score above which an unknown word counts as spelled like a name

    def __init__(self, english: frozenset[str], left_out: Callable[[str], bool] | None = None) -> None:
        first, last = name_lexicon()
        if left_out is not None:  # measuring on names the recognizers never saw (benchmarks/bench_pii.py)
            first = frozenset(w for w in first if not left_out(w))
            last = frozenset(w for w in last if not left_out(w))
        self.first, self.last = first, last
        self.english = english
        self._shape: NameShape | None = None

    def shaped(self, word: str) -> bool:
        """A word neither the lexicon nor the dictionary holds, spelled like a name (`NameShape`)."""
        w = word.lower()
        if w in self.english or len(w) < 3 or not w.isalpha():
            return False
        if self._shape is None:  # trained on first use, about half a second
            names = self.first | self.last
            self._shape = NameShape(names, (e for e in self.english if e.isalpha() and e not in names))
        return self._shape.score(w) > self.SHAPE_MIN

    def known(self, word: str) -> bool:
        w = word.lower()
        return w in self.first or w in self.last

    def plausible(self, value: str, text: str | None = None, start: int = 0) -> bool:
        """Not an acronym or code (NER calls JFK a person), not a street or a company ("John Street",
        "Junar Inc"), not only dictionary words unless one is a known name ("Gift Card" no, "Green" yes)
        or, given the `text` around it, the words are capitalised inside running lower-case prose
        ("Why is Daniel so impulsive?": the dictionary holds many first names, Daniel and Sue among them)."""
        if any(ch.isdigit() for ch in value) or (value.isupper() and len(value.strip()) <= 5):
            return False
        words = [w.lower() for w in NAME_WORD.findall(value) if w.lower() not in TITLES]
        if not words or any(w in NOT_PERSON for w in words):
            return False
        if not all(w in self.english and not self.known(w) for w in words):
            return True
        return text is not None and in_prose(text, start, start + len(value))
