"""Street addresses as one span: number, street, unit, town, region, country, postal code.

An address is found from its street line (a house number before or after the street's words, a P.O.
box, "the corner of X and Y") and then extended over the parts that follow it, on the same line or the
next ones: a unit (Apt., Suite), a town, a region code, a country, a postal code. A candidate is kept
on evidence, not on shape alone ("I have 3 cats" has a number and words): a street type in one of
several languages (Street, Rue, Via, ul., Rua, -straße, -vej, -katu, ...), a unit, a postal code, a
country, a house number after the street's name, or a cue before it ("address", "lives at", "ship
to"). A postal code alone is an address when a cue says so ("zip code is 78750").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

STREET_TYPES = frozenset(
    """street st str road rd avenue ave av drive dr lane ln boulevard blvd bd court ct way place pl terrace ter
    circle cir parkway pkwy highway hwy square sq trail trl alley crescent cres close row mews loop
    rue allée allee chemin impasse quai cours via viale piazza corso vicolo calle avenida camino camiño
    carrera paseo plaza ctra carretera rua estrada travessa largo praça ul ulica al aleja straße strasse
    weg gasse platz allee ring damm laan straat plein gracht vej gade plads gatan vägen väg gata
    veien katu tie utca út útja tér ulitsa prospekt odos οδός strada intrarea aleea soseaua bulevardul
    stræde allé gränd bulevardi kuja polku""".split()
)
_SUFFIXES = (
    "straße strasse str weg gasse platz allee damm straat laan plein gracht vej gade plads gatan vägen "
    "väg gata gate veien katu tie utca stræde gränd bulevardi kuja polku pad steeg singel kade"
).split()
UNIT_WORD = (
    r"(?:(?i:apt|apartment|suite|ste|unit|flat|floor|room|bldg|building|level|piso|planta|puerta|ap|bl|sc|"
    r"etage|stock|scala|interno)\b|Fl\b|Rm\b|#)\.?[ \t]*#?"
)
UNIT = UNIT_WORD + r"[\w-]{1,6}"
_STOP = (
    r"(?!(?i:to|at|is|a|an|the|in|of|and|or|my|was|on|for|from|by|with|his|her|who|it|i|we|you|"
    r"apt|apartment|suite|ste|unit|flat|room|address|billing|shipping|mailing|delivery|postal)\b)"
)
_WORD = r"[^\W\d_][\w'’.-]*"
# street types written before the name, for a street line without a house number ("avenue Julie Ledoux")
_TYPE_FIRST = (
    "rue|avenue|boulevard|chemin|impasse|allée|place|quai|calle|avenida|camino|paseo|rua|travessa|largo|"
    "estrada|via|viale|strada|vicolo|piazza|corso|ulica|aleja|intrarea|aleea|soseaua|drumul|calea"
)
_SWORD = _STOP + _WORD  # a street or town word, not a function word of the sentence around it
# a house number: "12", "5th", "90F", "47-26" or "08/37" (number and flat), "Nr. 777"
_NUM = r"(?:(?:Nr|NR|nr)\.?[ \t]*|(?:No|no|n°|nº)\.[ \t]*)?\d{1,5}(?:[/-]\d{1,4}(?![\d-]))?(?:st|nd|rd|th|[A-Za-z])?(?![\w/:.,]\d)"
# a street line: "55 Halsey Road", "92 Eusebio Dávila 57", "03 2657 Koontz Lane", "Kromwater 38",
# "ul. Karpacka 69", "P.O. Box 101", "PSC 7004, Box 8380"
STREET_LINE = re.compile(
    rf"(?<![\w.-])(?:"
    rf"(?:(?:P\.?[ ]?O\.?[ ]?Box|Postfach|PSC|CMR|Box)[ \t]+\d{{1,6}}(?:,[ \t]*Box[ \t]+\d{{1,6}})?)"
    rf"|(?:USNS|USNV|USS|USCGC)[ \t]+{_WORD}"
    rf"|(?i:the[ \t]+corner[ \t]+of)[ \t]+(?:{_NUM}[ \t]+)?(?:{_WORD}[ \t]+){{0,4}}?(?:{_NUM}[ \t]+)?(?i:and)"
    rf"[ \t]+(?:{_NUM}[ \t]+)?{_WORD}(?:[ \t]+{_SWORD}){{0,3}}(?:[ \t]+{_NUM})?"
    rf"|(?:{_NUM},?[ \t]+){{1,3}}(?:{_SWORD}[ \t]+){{0,5}}{_SWORD}(?:[ \t]+{_NUM})?"
    rf"|(?:{_SWORD}[ \t]+){{0,4}}{_SWORD},?[ \t]+{_NUM}(?![\w-])"
    rf"|(?i:{_TYPE_FIRST})\.?[ \t]+(?:{_SWORD}[ \t]+){{0,4}}{_SWORD}(?=[ \t]*(?:,|\n))"
    rf")"
)
# postal codes: US ZIP(+4), most of Europe, Brazil "31706-690", Poland "64-567", Czechia and Sweden "537 78",
# the Netherlands "1317 YB", a country letter "H-7317", the UK "SW1A 1AA", Canada "K1A 0B1"
POSTAL = (
    r"(?:\d{4}[ ]?[A-Z]{2}(?![\w-])|\d{5}-?\d{3}|\d{4,6}(?:-\d{3,4})?|\d{2}-\d{3}|\d{3}[ ]\d{2}|[A-Z]{1,2}-\d{4,5}"
    r"|[A-Z]{1,2}\d[A-Z\d]?[ ]\d[A-Z]{2}|[A-Z]\d[A-Z][ ]?\d[A-Z]\d)"
)
_SEP = r"(?:[ \t]*,[ \t]*|[ \t]*\n[ \t>?]*(?:,[ \t]*)?\n?[ \t>?]*|[ \t]+)"
_PART = re.compile(
    rf"{_SEP}(?:(?P<unit>{UNIT})|(?P<postal>{POSTAL}(?![\w-]|[ \t.()-]*\d))"
    rf"|(?P<region>\([A-Z]{{2}}\)|/[ \t]*[A-Z]{{2}}\b)|(?P<words>(?:{_WORD}[ \t]+){{0,3}}{_WORD}))"
)
CUE = re.compile(
    r"(?i)(?:address(?:[ \t]+[\w']+){0,3}?(?:[ \t]+(?:is|to|at))?|addr|lives?\s+at|living\s+at|located\s+at|moved\s+to|send(?:\s+\w+){0,3}\s+to|"
    r"(?:ship(?:ped|ping)?|deliver(?:ed|y)?|mail(?:ed)?|post(?:ed)?|forward(?:ed)?)(?:\s+\w+){0,3}\s+to|office\s+is\s+at|meet\s+me\s+at|"
    r"taxi\s+to|return\s+to|arrived\s+at|residence|street|home\s+is)\W{0,12}$"
)
POSTAL_CUE = re.compile(
    r"(?i)\b(?:zip|postal|post|postcode|zipcode)(?:[ \t_-]*code)?(?:[ \t]+(?:is|was))?[ \t:=#]*"
    r"(\d{5}(?:-\d{4})?|\d{4,6}|[A-Z]{1,2}\d[A-Z\d]?[ ]?\d[A-Z]{2}|[A-Z]\d[A-Z][ ]?\d[A-Z]\d)\b"
)

_US_STATES = (
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "
    "OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR GU VI AS MP AA AE AP"
).split()
CITY_STATE_ZIP = re.compile(
    rf"(?<![\w-])(?:[A-Z][\w'’.-]*[ \t]+){{0,2}}[A-Z][\w'’.-]*,?[ \t]+(?:{'|'.join(_US_STATES)})[ \t]+"
    rf"\d{{5}}(?:-\d{{4}})?(?![\w-])"
)


@lru_cache(maxsize=1)
def countries() -> frozenset[str]:
    """Lower-cased country names in the languages Faker has address data for (about 5,900 names from
    67 locales: "Deutschland", "People's Republic of China", "Kingdom of the Netherlands"), plus common
    short forms. Addresses name their country in the writer's language and often in its long form."""
    import importlib
    import pkgutil

    import faker.providers.address as address_providers

    names = {"usa", "us", "u.s.a.", "uk", "u.k.", "united states", "england", "uae"}
    for module in pkgutil.iter_modules(address_providers.__path__):
        provider = importlib.import_module(f"{address_providers.__name__}.{module.name}").Provider
        names.update(c.lower() for c in getattr(provider, "countries", ()) or ())
    return frozenset(n for n in names if len(n) > 1)


@lru_cache(maxsize=1)
def _country_regex() -> re.Pattern[str]:
    """A country name at a position, whole words only, longest name first."""
    alternation = "|".join(re.escape(c) for c in sorted(countries(), key=len, reverse=True))
    return re.compile(rf"(?i:{alternation})(?![\w'’-])")


@lru_cache(maxsize=1)
def usps_suffixes() -> frozenset[str]:
    """The street suffixes of USPS Publication 28 (as Faker's en_US list carries them: Glen, Light, Plains,
    Mall, ...). Many are common words, so they count only after a house number and a name ("17 Jones
    Light", not "3 Points")."""
    from faker.providers.address.en_US import Provider

    return frozenset(s.lower() for s in Provider.street_suffixes)


def _is_street_word(word: str) -> bool:
    w = word.lower().rstrip(".")
    return (
        w in STREET_TYPES
        or w.rsplit("-", 1)[-1] in STREET_TYPES
        or any(w.endswith(s) and len(w) > len(s) + 2 for s in _SUFFIXES)
    )


_PARTICLES = frozenset(
    "de del la le les van von der den di da do dos das du des al el nad am an sur sous y e i nan u pri pod na "
    "bei ob im".split()
)


@dataclass(frozen=True)
class AddressMatch:
    start: int
    end: int
    score: float


def _country_ends(words: str) -> bool:
    """Whether the last words of a town part name a country ("Hvammstangi Israel")."""
    tokens = words.split()
    return any(
        " ".join(tokens[-n:]).lower().strip(",.") in countries() for n in range(1, min(4, len(tokens)))
    )


_SEP_RE = re.compile(_SEP)
_MONTH_DAY = re.compile(
    r"(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?[ \t]+\d{1,2}(?:st|nd|rd|th)?"
)
_CORNER_AND = re.compile(r"[ \t]+(?:and|&)[ \t]+$")


def _corner_start(text: str, start: int) -> int | None:
    """Where "X and <street>" begins when a street line at `start` follows a corner written without
    "the corner of" ("Eloise and 226 Thomas Avenue", "Romano and ul. Paderewskiego 85"): the first
    street is one to three capitalised words or numbers right before "and"."""
    m = _CORNER_AND.search(text, max(0, start - 50), start)
    if m is None:
        return None
    begin = None
    for word in list(re.finditer(r"\S+", text[max(0, m.start() - 40) : m.start()]))[::-1][:3]:
        if not (word.group(0)[:1].isupper() or word.group(0)[:1].isdigit()):
            break
        begin = max(0, m.start() - 40) + word.start()
    return begin


def _trim(text: str, start: int, end: int) -> int:
    """Drop what the greedy parts took from the sentence after an address: a full stop, and lower-case
    words that are no street type in an address written in capitals ("... 5th Avenue yesterday")."""
    span = text[start:end]
    if not span.islower():
        while True:
            m = re.search(r"[ \t]+([^\W\d_][\w'’-]*)$", span)
            if (
                m is None
                or not m.group(1).islower()
                or _is_street_word(m.group(1))
                or m.group(1) in _PARTICLES
            ):
                break
            span = span[: m.start()]
    if span.endswith(".") and not _is_street_word(span.split()[-1]):
        span = span[:-1]
    return start + len(span)


def find_addresses(text: str) -> list[AddressMatch]:
    """Address spans in `text`, each the street line and the parts that follow it."""
    out: list[AddressMatch] = []
    pos = 0
    while True:
        m = STREET_LINE.search(text, pos)
        if m is None:
            break
        start, end = m.span()
        line = m.group(0)
        if _MONTH_DAY.fullmatch(line):  # "May 21st" is a date
            pos = end
            continue
        evidence = 0.0
        unit_before = re.search(rf"{UNIT_WORD}[ \t]*$", text[max(0, start - 12) : start])
        if unit_before:  # "Apt. 434 40 Rue de la Sarthe 421" or "Suite 683 11 Brucknerweg 141"
            start -= len(unit_before.group(0))
            evidence += 1
        words = re.findall(r"[^\W\d_][\w'’.-]*", line)
        if re.match(r"(?i)P\.?\s?O\.?\s?Box|Postfach|PSC|CMR|USNS|USNV|USS|USCGC|the\s+corner", line):
            evidence += 2
        line_start, line_end = text.rfind("\n", 0, start) + 1, text.find("\n", end)
        lower_block = text[line_start : line_end if line_end >= 0 else len(text)].islower()  # all lower case
        if line.islower() and not lower_block:
            pass  # "2 hours each way": a street in lower case inside capitalised text is no street
        elif any(_is_street_word(w) or w == "u." for w in words):  # "u." is Hungarian utca
            evidence += 2 if any(ch.isdigit() for ch in line) else 1
        elif (
            line[:1].isdigit()
            and len(words) >= 2
            and words[-1].lower() in usps_suffixes()
            and words[-2][:1].isupper()
            and line.rstrip().endswith(words[-1])
        ):
            evidence += 2  # "41144 Robert Glen"
        if re.search(rf"{_WORD}[ \t]+{_NUM}$", line) and line[:1].isdigit():
            evidence += 1  # "92 Eusebio Dávila 57": a European house number after the street name
        corner = None if line.lower().startswith("the") else _corner_start(text, start)
        if corner is not None:
            start = corner
            evidence += 1
        if CUE.search(text[max(0, start - 60) : start]):
            evidence += 2
        if re.match(r"\.[ \t]*(?:\n|,)", text[end:]):  # "Victor Hugo u. 97.\nSečovlje"
            end += 1
        towns = 0.0
        after_postal = False
        closed = False  # "postal code, town" ends the block; only a country may follow
        # the parts after the street line
        cursor = end
        while True:
            sep = _SEP_RE.match(text, cursor)
            country = _country_regex().match(text, sep.end()) if sep else None
            if country:
                evidence += 1.5
                cursor = end = country.end()
                continue
            p = None if closed else _PART.match(text, cursor)
            if p is None:
                break
            if p.group("words") and re.match(r"[APD]PO\b", p.group("words")):
                evidence += 2  # US military mail: "FPO AE 37876"
            if p.group("unit"):
                evidence += 1
            elif p.group("postal"):
                evidence += 1
                # a year is no postal code before a "town": "iPhone 15, 2023 Model"
                after_postal = not re.fullmatch(r"(?:19|20)\d\d", p.group("postal"))
            elif p.group("region"):  # "Gabella (PI)", "Pastor do Norte / PR"
                evidence += 0.5
            else:
                part = p.group("words")
                tokens = part.split()
                town = all(
                    t[:1].isupper() or (lower_block and t.islower()) or t.lower() in _PARTICLES
                    for t in tokens
                )
                if after_postal and not town and tokens[0][:1].isupper():
                    # "3662 Moe by Friday": the town after a postal code, not the sentence after it
                    n = 1
                    while n < len(tokens) and tokens[n][:1].isupper():
                        n += 1
                    first_words = re.match(rf"(?:\S+[ \t]+){{{n - 1}}}\S+", part)
                    part = first_words.group(0) if first_words else tokens[0]
                    p = re.compile(rf"{_SEP}(?P<words>{re.escape(part)})").match(text, cursor) or p
                    tokens, town = tokens[:n], True
                if not town or any(
                    t.lower() in ("and", "or", "is", "the", "for", "in", "please") for t in tokens
                ):
                    break
                gap = text[cursor : p.start("words")]
                same_line = "\n" not in gap and "," not in gap
                if same_line and not after_postal:
                    # a town on the street's own line must be followed by more address ("Reykjavík Benin")
                    if _PART.match(text, p.end()) is None and not re.match(
                        r"[ \t]*(?:$|\n|[.?!,])", text[p.end() :]
                    ):
                        break
                if _country_ends(part):
                    evidence += 1.5
                elif towns < 1:  # a town of its own after a street line ("Bäckgränd 8\n88344 Karlskoga")
                    towns += 0.5
                    # "postal code, town": Europe's last line (not "total 1250 USD")
                    evidence += 1 if after_postal and not part.isupper() else 0.5
                closed = after_postal
            cursor = p.end()
            end = cursor
        end = _trim(text, start, end)
        if evidence >= 2 and not re.fullmatch(r"\d+[ \t]+\w+", text[start:end]):
            # outranks the names and places NER finds inside an address (0.85); with more parts, the
            # names found by titles and cues too (0.9: "Dr. Megan Sato Apt. 630" is cut before "Apt")
            out.append(AddressMatch(start, end, 0.95 if evidence >= 3 else 0.9))
            pos = end
        else:
            pos = m.start() + max(1, len(m.group(0).split()[0]))
    for m in CITY_STATE_ZIP.finditer(text):  # a US last line on its own: "Springfield, IL 62704"
        if not any(a.start < m.end() and m.start() < a.end for a in out):
            out.append(AddressMatch(m.start(), m.end(), 0.85))
    for m in POSTAL_CUE.finditer(text):
        if not any(a.start <= m.start(1) < a.end for a in out):
            out.append(AddressMatch(m.start(1), m.end(1), 0.85))
    return out
