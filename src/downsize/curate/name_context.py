"""Person names found by the words around them, with no name list behind them.

Names the lexicon lacks (measured in bench_pii.py by leaving half of all name words out of it) are found
here by their place in the sentence: reported speech ("said Keiko to Jessica"), a work or household
named after a person ("the Takuda novel", "the Smith family"), film and book credits ("starring Berta"),
and a list that a word for people introduces ("our 3 founders: Turgeon, Guerra and Ewing"). The cues
only propose words; the caller's `WordCheck` still judges each one (capitalised, no stop word, no
dictionary word unless tagged a proper noun, nothing NER calls a date or a nationality), so "said the"
or "told Yes" stay. "the X novel" also defers to NER's places ("the Vienna concert"), but not to its
organisations (it calls many unseen surnames one: "the Crawford novel"); "contact X" and "X ... his"
defer to both ("contact Microsoft").
"""

from __future__ import annotations

import re
from collections.abc import Callable

# (word, its offset, vetoes): whether the word can be part of a name here, unless NER gives it one of
# the labels in `vetoes`; a strong cue passes none ("starring Berta": NER says a place)
WordCheck = Callable[[str, int, frozenset[str]], bool]
PLACES = frozenset({"GPE", "LOC", "FAC"})
PLACES_AND_FIRMS = PLACES | {"ORG"}

NAME = r"[^\W\d_][\w'’-]*"
_WORD = re.compile(NAME)
_NEXT_WORD = re.compile(rf"[ \t]+({NAME})")
_SEP = re.compile(r"[ \t]*,[ \t]*(?:(?:and|or|&)[ \t]+)?|[ \t]+(?:and|or|&)[ \t]+")

# verbs of speech: the person spoken to follows ("told Jessica", "said to Jessica") or the speaker
# does, after a quotation ('"Hi!" said Keiko to Jessica')
SPEECH = re.compile(
    r"\b(?i:said|asked|told|replied|answered|whispered|shouted|yelled|exclaimed|cried|muttered|"
    r"wrote)[ \t]+(?:(?i:to)[ \t]+)?(?=[^\W\d_])"
)
SPEECH_TO = re.compile(r"[ \t]+(?i:to)[ \t]+(?=[^\W\d_])")
# a work, performance or household named after a person; "version" only for a recording of a song
# ("the Windows version" is software)
WORK = re.compile(
    rf"\b(?:[Tt]he|THE|[Aa]n?)[ \t]+((?:{NAME}[ \t]+){{1,3}}?)(?i:(?:novels?|biography|memoir|"
    r"autobiography|concerts?|albums?|songs?|symphony|sonatas?|opera|paintings?|portraits?|poems?|"
    r"estate|family|household|recordings?|rendition)\b|version[ \t]+(?:recorded|performed|sung)\b)"
)
CREDITS = re.compile(
    r"\b(?i:starring|co-starring|directed[ \t]+by|narrated[ \t]+by|composed[ \t]+by|sung[ \t]+by|"
    r"illustrated[ \t]+by|a[ \t]+tribute[ \t]+to|in[ \t]+memory[ \t]+of)[ \t]+(?=[^\W\d_])"
)
# whom one contacts, meets or works for is a person or a company
MEET = re.compile(
    r"\b(?i:contact|ask[ \t]+for|(?:speak|spoke|talk|talked|meet|met)[ \t]+(?:to|with)|reach[ \t]+out[ \t]+to|"
    r"on[ \t]+behalf[ \t]+of|assigned[ \t]+to|married[ \t]+to|signed[ \t]+by|introduce[ \t]+(?:you|me)[ \t]+to|"
    r"(?:assistant|secretary|deputy|successor|predecessor)[ \t]+to|attn:?|attention:|c/o|cc:?)[ \t]+(?=[^\W\d_])"
)
# a letter's sign-off: the name on the line below ("Best regards,\nAnna Kowalczyk")
SIGN_OFF = re.compile(
    r"\b(?i:regards|best|sincerely|cheers|thanks|thank[ \t]+you|yours(?:[ \t]+(?:truly|sincerely))?|warmly|"
    r"respectfully|best[ \t]+wishes)[ \t]*,?[ \t]*\r?\n[ \t]*(?=[^\W\d_])"
)
# a person is "who", "he" or "she" ("Alexander Wood listed his top 20", "Berta, who"): a run of capitalised
# words opening a sentence or after a lower-case word, one word at most before the pronoun
PRONOUN = re.compile(
    r"(?:^|(?<=[.!?][ \t])|(?<=[a-z,][ \t]))([A-Z][\w'’-]*(?:[ \t]+[A-Z][\w'’-]*){0,2})"
    r"(?:,?[ \t]+(?:who|whose)|(?:[ \t]+[a-z]+)?[ \t]+(?:he|she|his|her|him|himself|herself))\b"
)
PEOPLE_LIST = re.compile(
    r"\b(?i:founders|co-?founders|authors|co-?authors|attendees|participants|guests|invitees|witnesses|"
    r"employees|passengers|travell?ers|nominees|finalists|panell?ists|beneficiaries|heirs|children|kids|"
    r"parents|siblings|friends|colleagues|teammates|cast|signatories|organi[sz]ers|volunteers|patients|"
    r"tenants)[ \t]*:[ \t]*(?=[^\W\d_])"
)


def name_at(
    text: str, pos: int, ok: WordCheck, vetoes: frozenset[str] = frozenset(), most: int = 3
) -> tuple[int, int] | None:
    """The run of up to `most` name words that starts at `pos`, each one passing `ok`; None if the first fails."""
    end = pos
    for count in range(most):
        m = (_WORD if count == 0 else _NEXT_WORD).match(text, end)
        if m is None or not ok(m.group(m.lastindex or 0), m.start(m.lastindex or 0), vetoes):
            break
        end = m.end()
    return (pos, end) if end > pos else None


def names_listed(text: str, pos: int, ok: WordCheck) -> list[tuple[int, int]]:
    """The name at `pos` and the names that follow it in a list ("Turgeon, Guerra and Ewing")."""
    out: list[tuple[int, int]] = []
    while (span := name_at(text, pos, ok)) is not None:
        out.append(span)
        sep = _SEP.match(text, span[1])
        if sep is None:
            break
        pos = sep.end()
    return out


def names_in_context(text: str, ok: WordCheck) -> list[tuple[int, int]]:
    """Spans of the names that the cues above point at."""
    out: list[tuple[int, int]] = []
    for m in SPEECH.finditer(text):
        span = name_at(text, m.end(), ok)
        if span is not None:
            out.append(span)
            to = SPEECH_TO.match(text, span[1])  # "said Keiko to Jessica"
            if to is not None and (other := name_at(text, to.end(), ok)) is not None:
                out.append(other)
    for m in WORK.finditer(text):
        words = list(_WORD.finditer(m.group(1)))
        if all(ok(w.group(0), m.start(1) + w.start(), PLACES) for w in words):
            out.append((m.start(1), m.start(1) + words[-1].end()))
    for m in CREDITS.finditer(text):
        out += names_listed(text, m.end(), ok)
    for m in PEOPLE_LIST.finditer(text):
        out += names_listed(text, m.end(), ok)
    for m in MEET.finditer(text):
        span = name_at(text, m.end(), ok, PLACES_AND_FIRMS)
        out += [span] if span is not None else []
    for m in SIGN_OFF.finditer(text):
        span = name_at(text, m.end(), ok)
        if span is not None and re.match(r"[ \t]*(?:$|\r?\n)", text[span[1] :]):  # the name fills its line
            out.append(span)
    for m in PRONOUN.finditer(text):
        words = list(_WORD.finditer(m.group(1)))
        if all(ok(w.group(0), m.start(1) + w.start(), PLACES_AND_FIRMS) for w in words):
            out.append(m.span(1))
    return out
