"""Person names found by their context (`downsize.curate.name_context`), pinned on hand-written
examples: each cue on its own with a plain word check, then through the analyzer on names the lexicon
never held, beside the false alarms each cue must not raise."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from downsize.curate.name_context import name_at, names_in_context, names_listed
from downsize.curate.pii import PiiScrubber
from downsize.curate.recognizers import build_analyzer

STOP = {"the", "to", "him", "her", "me", "for", "a", "and", "about", "i", "was", "this"}


def capitalised(word: str, at: int, overrule: bool) -> bool:
    """A stand-in for the recognizer's word check: capitalised and no stop word."""
    return word[:1].isupper() and word.lower() not in STOP


def _cued(text: str) -> set[str]:
    return {text[s:e] for s, e in names_in_context(text, capitalised)}


# -- the cues alone (no model) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("I'm so jealous! said Qorvith to Ysandre", {"Qorvith", "Ysandre"}),
        ("She told Ysandre about the refund.", {"Ysandre"}),
        ("Unlike the Tamsk novel, it is short.", {"Tamsk"}),
        ("The Qorvith Tamsk version recorded for the label sold well.", {"Qorvith Tamsk"}),
        ("We stayed with the Tamsk family in May.", {"Tamsk"}),
        ("a 2001 film directed by Qorvith Tamsk and starring Ysandre", {"Qorvith Tamsk", "Ysandre"}),
        ("Our 3 founders: Qorvith, Tamsk and Ysandre.", {"Qorvith", "Tamsk", "Ysandre"}),
        ("Please contact Ysandre Tamsk before Friday.", {"Ysandre Tamsk"}),
        ("Best regards,\nQorvith Tamsk", {"Qorvith Tamsk"}),
        ("Qorvith Tamsk listed his top 20 songs.", {"Qorvith Tamsk"}),
        ("We asked Ysandre, who said no.", {"Ysandre"}),
    ],
)
def test_each_cue_points_at_the_name(text: str, names: set[str]) -> None:
    assert names <= _cued(text), _cued(text)


@pytest.mark.parametrize(
    "text",
    [
        "I told him about the refund and he said to wait.",  # pronouns and stop words
        "The Windows version is out.",  # software, not a recording
        "Please contact support before Friday.",  # lower case: no name to take
        "Best regards,\nthe billing team",
        "Thanks, I will check the balance.",  # a sign-off needs the name alone on the next line
        "The API returns his id.",  # a word in capitals is no name
    ],
)
def test_cues_take_no_common_words(text: str) -> None:
    assert _cued(text) == set(), _cued(text)


def test_a_name_run_stops_at_the_first_word_that_fails() -> None:
    text = "said Qorvith Tamsk to me"
    assert name_at(text, 5, capitalised) == (5, 18)
    assert names_listed("Qorvith, Tamsk and Ysandre went", 0, capitalised) == [(0, 7), (9, 14), (19, 26)]


# -- through the analyzer, on names the lexicon never held ---------------------------------------


@pytest.fixture(scope="module")
def unseen() -> Iterator[PiiScrubber]:
    left_out = {"keiko", "jessica", "ewing", "turgeon", "guerra", "berta", "takuda", "wood", "alexander"}
    s = PiiScrubber(mode="placeholder")
    s._analyzer, s._names = build_analyzer(names_left_out=lambda w: w in left_out)
    yield s


def _persons(scrubber: PiiScrubber, text: str) -> set[str]:
    conv = scrubber.conversation("t")
    conv.mask_text(text)
    return {
        text[s.start : s.end] for spans in conv.detected().values() for s in spans if s.entity == "PERSON"
    }


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("I'm so jealous! said Keiko to Jessica", "Jessica"),
        ("Unlike the Takuda novel, it's not about that.", "Takuda"),
        ("A 2001 comedy directed by Tom Lee and starring Berta", "Berta"),  # NER calls Berta a place
        ("Sas is the brainchild of our 3 founders: Turgeon, Guerra and Ewing.", "Ewing"),
        ("Alexander Wood listed his top 20 songs for the magazine.", "Alexander Wood"),  # dictionary words
    ],
)
def test_unseen_names_by_their_context(unseen: PiiScrubber, text: str, name: str) -> None:
    assert name in _persons(unseen, text), _persons(unseen, text)


@pytest.mark.parametrize(
    "text",
    [
        "The Vienna concert was sold out.",  # NER's place vetoes "the X concert"
        "I'd like to contact Microsoft about my order.",  # NER's organisation vetoes "contact X"
        "In London he met the team.",  # a place before "he"
        "Your Gift Card Balance is low, she said.",
        "Please speak to support, they can help.",
        "Our partners: Google, Microsoft and Amazon.",  # not a word for people
    ],
)
def test_cues_leave_places_companies_and_words(unseen: PiiScrubber, text: str) -> None:
    assert _persons(unseen, text) == set()
