"""Payment cards of every major network: issuer prefixes, lengths 12 to 19, the Luhn check.

Presidio's card recognizer knows 16-digit cards starting 4, 5[0-5], 6, 3 and 1; issued cards also
start 2 (Mastercard 2221-2720, Mir 2200-2204), run 12 (Maestro) to 19 digits (Visa, UnionPay,
Discover, Maestro, JCB) and are written in groups (Amex 4-6-5). A number counts as a card when a
network issues cards of its prefix at its length and it passes the Luhn check; the table follows the
networks' published IIN ranges (ISO/IEC 7812 registrations as summarised by the networks' docs).
"""

from __future__ import annotations

import re

# (prefix ranges as (low, high) of the first n digits, allowed lengths), by network
_NETWORKS: dict[str, tuple[list[tuple[str, str]], range | tuple[int, ...]]] = {
    "visa": ([("4", "4")], (13, 16, 19)),
    "mastercard": ([("51", "55"), ("2221", "2720")], (16,)),
    "amex": ([("34", "34"), ("37", "37")], (15,)),
    "discover": ([("6011", "6011"), ("644", "649"), ("65", "65"), ("622126", "622925")], range(16, 20)),
    "jcb": ([("3528", "3589")], range(15, 20)),
    "jcb15": ([("1800", "1800"), ("2131", "2131")], (15,)),
    "diners": ([("300", "305"), ("3095", "3095"), ("36", "36"), ("38", "39")], range(14, 20)),
    "unionpay": ([("62", "62"), ("81", "81")], range(16, 20)),
    "maestro": ([("50", "50"), ("56", "69")], range(12, 20)),
    "mir": ([("2200", "2204")], range(16, 20)),
    "rupay": (
        [("60", "60"), ("65", "65"), ("81", "82"), ("508", "508"), ("353", "353"), ("356", "356")],
        (16,),
    ),
    "troy": ([("9792", "9792")], (16,)),
    "uatp": ([("1", "1")], (15,)),
}

# 12-19 digits, contiguous or in groups of 2-6 split by spaces or by dashes (one kind throughout)
_EDGE_BEFORE, _EDGE_AFTER = r"(?<![\w.,/-])", r"(?![\w/-]|[.,]\d)"
CARD_PATTERNS = [
    _EDGE_BEFORE + r"\d{12,19}" + _EDGE_AFTER,
    _EDGE_BEFORE + r"\d{4,6}(?: \d{2,6}){1,4}" + _EDGE_AFTER,
    _EDGE_BEFORE + r"\d{4,6}(?:-\d{2,6}){1,4}" + _EDGE_AFTER,
]


def luhn_ok(digits: str) -> bool:
    """The card-number checksum (surrogate card numbers are made to pass it too)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_network(digits: str) -> str | None:
    """The network that issues cards of this prefix and length, or None."""
    for network, (ranges, lengths) in _NETWORKS.items():
        if len(digits) not in lengths:
            continue
        for low, high in ranges:
            if low <= digits[: len(low)] <= high:
                return network
    return None


def card_ok(value: str) -> bool:
    """12-19 digits of a network's prefix and length that pass the Luhn check (separators ignored)."""
    digits = re.sub(r"[ -]", "", value)
    return (
        digits.isdigit()
        and 12 <= len(digits) <= 19
        and len(set(digits)) > 1
        and card_network(digits) is not None
        and luhn_ok(digits)
    )
