"""S2 curate: PII and secret masking (`pii`), drops, dedup and the HCI flag (`curation`), the curated view (`view`).

Heavy dependencies (presidio, spaCy, Faker, datasketch) are imported inside functions, only when used.
"""
