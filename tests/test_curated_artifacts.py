"""A specialist trained with --curated keeps no value the scrubber masked in anything it saves.

Everything fitted for it (the student, the task gate's TF-IDF vocabulary, the copied-argument rules, the
manifest, the store's record) sees only the curated view. The values checked are the tau-airline customers'
own records (names, e-mails, street addresses, birth dates: `users.json`) that occur in the raw training
conversations and that the curated view no longer holds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from downsize.config import TrainConfig
from downsize.curate.config import CurateConfig
from downsize.curate.curation import curate
from downsize.importers.tau_airline import read_exchanges
from downsize.store import Store

pytestmark = pytest.mark.slow

WORKFLOWS = {str(i) for i in range(0, 8)}


def personal_values(users_file: Path) -> set[str]:
    values: set[str] = set()
    for user in json.loads(users_file.read_text()).values():
        values |= {user["name"]["first_name"], user["name"]["last_name"], user["email"], user["dob"]}
        values |= {user["address"]["address1"], user["address"]["zip"]}
        for passenger in user.get("saved_passengers") or []:
            values |= {passenger["first_name"], passenger["last_name"], passenger["dob"]}
    return {v for v in values if isinstance(v, str) and len(v) >= 4}


def test_no_saved_artifact_of_a_curated_specialist_holds_a_masked_value(
    tau_path: Path, tmp_path: Path
) -> None:
    from downsize.train.lora import train_specialist

    store = Store.open(f"sqlite:///{tmp_path / 'curated.db'}")
    exchanges = [ex for ex in read_exchanges(tau_path) if (ex.session or "").split("#")[0] in WORKFLOWS]
    store.add_exchanges(copy.deepcopy(exchanges))
    curate(store, CurateConfig(pii=True, mode="placeholder", near_dup_threshold=None))

    raw_text = json.dumps([ex.request for ex in store.exchanges(split="dev")])
    from downsize.calls import CallSelection, select_calls

    curated = select_calls(store, CallSelection(role=None, kinds=None, curated=True, include_hci=True))
    curated_text = json.dumps([[ex.request, ex.response] for ex in curated.exchanges])
    masked = {v for v in personal_values(tau_path / "users.json") if v in raw_text and v not in curated_text}
    assert len(masked) >= 10, "the slice should hold customers' details that curation masked"

    config = TrainConfig(
        curated=True, max_tokens=200, batch_size=4, max_prompt_tokens=64, max_message_tokens=32
    )
    result = train_specialist(store, config, out_dir=tmp_path / "specialist", progress=False)
    # the weights are numbers (a byte scan of them would only find chance matches); the tokenizer is the
    # student's own: every other file was written from the training data
    saved = [
        p
        for p in (tmp_path / "specialist").iterdir()
        if p.is_file()
        and not p.name.startswith("tokenizer")
        and p.suffix not in (".safetensors", ".bin", ".gguf")
    ]
    assert {"downsize.json", "gate.pkl", "copied.json"} <= {p.name for p in saved}
    specialist = store.specialist(result.specialist_id)
    record = json.dumps([specialist.config, specialist.metrics]).encode()
    for path in [*saved, None]:
        blob = path.read_bytes() if path is not None else record
        leaked = sorted(v for v in masked if v.encode() in blob)
        assert not leaked, f"{path.name if path else 'the store record'} holds masked values: {leaked[:5]}"
