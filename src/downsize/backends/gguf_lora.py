"""A PEFT LoRA adapter rewritten as a llama.cpp GGUF LoRA, so the shipped GGUF base can serve it.

llama.cpp's own converter (`convert_lora_to_gguf.py`) lives only in its source tree and needs torch and
transformers; this writer needs numpy and the `gguf` package. What it must get right:

- names: PEFT's `model.layers.N.self_attn.q_proj.lora_A.weight` becomes `blk.N.attn_q.weight.lora_a`
  (gguf's own tensor-name map for the base's architecture);
- layout: lora_a is (r, in) and lora_b is (out, r), as PEFT stores them;
- RoPE: llama.cpp's HF→GGUF conversion of llama-architecture models permutes the rows of q_proj and
  k_proj (and transformers undoes it when it loads the GGUF we train on), so lora_b of q and k gets the
  same row permutation: B·A permuted by rows is (permuted B)·A;
- scale: llama.cpp applies alpha / rank with the rank read from each tensor; PEFT's per-module ranks and
  alphas (`rank_pattern`, `alpha_pattern`) and rsLoRA's alpha / sqrt(r) are folded into lora_b.

DoRA and extra trained modules (`modules_to_save`) have no GGUF LoRA form: serve those with transformers.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from downsize.errors import ConfigError

ADAPTER_GGUF = "adapter.gguf"  # written beside the PEFT adapter's files and reused while they are unchanged
_PEFT_PREFIX = "base_model.model."


def read_safetensors(path: str | Path) -> dict[str, Any]:
    """{name: numpy float32 array} of a safetensors file (F32, F16 or BF16), without the safetensors package."""
    import numpy as np

    raw = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    base = 8 + size
    tensors: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        data = raw[base + start : base + end]
        dtype = info["dtype"]
        if dtype == "F32":
            array = np.frombuffer(data, dtype="<f4")
        elif dtype == "F16":
            array = np.frombuffer(data, dtype="<f2").astype(np.float32)
        elif dtype == "BF16":
            array = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ConfigError(f"{path}: tensor {name} has dtype {dtype}; a LoRA adapter holds floats")
        tensors[name] = array.reshape(info["shape"]).astype(np.float32)
    return tensors


def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The base GGUF's architecture facts the conversion needs (and its chat template, when it has one)."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> Any:
        entry = reader.fields.get(key)
        return entry.contents() if entry is not None else None

    arch = str(field("general.architecture"))
    return {
        "architecture": arch,
        "block_count": int(field(f"{arch}.block_count")),
        "head_count": int(field(f"{arch}.attention.head_count")),
        "head_count_kv": int(
            field(f"{arch}.attention.head_count_kv") or field(f"{arch}.attention.head_count")
        ),
        "chat_template": field("tokenizer.chat_template"),
    }


def rope_permute(rows: Any, n_head: int) -> Any:
    """llama.cpp's HF→GGUF row permutation of q/k projections (convert_hf_to_gguf LlamaModel.permute)."""
    return (
        rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: a key matches the module name or a dotted suffix of it."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def lora_tensors(adapter_dir: str | Path, meta: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(alpha, {gguf tensor name: float32 array}) of a PEFT LoRA adapter folder, ready for llama.cpp."""
    import gguf
    import numpy as np

    folder = Path(adapter_dir)
    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise ConfigError(
            f"{folder} is not a PEFT LoRA adapter (adapter_config.json and adapter_model.safetensors): "
            "serve it with --engine transformers"
        )
    config = json.loads(config_path.read_text())
    if config.get("use_dora"):
        raise ConfigError(
            f"{folder} is a DoRA adapter, which llama.cpp cannot apply: use --engine transformers"
        )
    if config.get("modules_to_save"):
        raise ConfigError(f"{folder} also trains {config['modules_to_save']}: use --engine transformers")
    alpha = float(config.get("lora_alpha") or 0.0)
    rslora = bool(config.get("use_rslora"))
    arch_ids = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    if meta["architecture"] not in arch_ids:
        raise ConfigError(f"the gguf package does not know architecture {meta['architecture']!r}")
    names = gguf.get_tensor_name_map(arch_ids[meta["architecture"]], meta["block_count"])
    pairs: dict[str, dict[str, Any]] = {}
    for key, array in read_safetensors(weights_path).items():
        match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if match is None:
            raise ConfigError(f"{weights_path}: {key} is not a LoRA A/B weight; use --engine transformers")
        pairs.setdefault(match.group(1), {})[match.group(2)] = array
    tensors: dict[str, Any] = {}
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise ConfigError(f"{weights_path}: {module} lacks its lora_A or lora_B weight")
        base_name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if base_name is None:
            raise ConfigError(f"{module} has no counterpart in a {meta['architecture']} GGUF")
        lora_a, lora_b = pair["A"], pair["B"]
        rank = int(lora_a.shape[0])
        module_alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, alpha))
        peft_scale = module_alpha / (math.sqrt(rank) if rslora else rank)
        llama_scale = alpha / rank if alpha else 1.0
        if not math.isclose(peft_scale, llama_scale, rel_tol=1e-6):
            lora_b = lora_b * np.float32(peft_scale / llama_scale)
        if meta["architecture"] == "llama" and base_name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = meta["head_count"] if ".attn_q." in base_name else meta["head_count_kv"]
            lora_b = rope_permute(lora_b, heads)
        tensors[base_name + ".lora_a"] = np.ascontiguousarray(lora_a, dtype=np.float32)
        tensors[base_name + ".lora_b"] = np.ascontiguousarray(lora_b, dtype=np.float32)
    if not tensors:
        raise ConfigError(f"{weights_path} holds no LoRA weights")
    return alpha, tensors


def write_gguf_lora(adapter_dir: str | Path, base_gguf: str | Path, out: str | Path | None = None) -> Path:
    """Write the adapter as a GGUF LoRA for `base_gguf` (default: adapter.gguf in the adapter folder)."""
    import gguf

    meta = gguf_metadata(base_gguf)
    alpha, tensors = lora_tensors(adapter_dir, meta)
    target = Path(out) if out is not None else Path(adapter_dir) / ADAPTER_GGUF
    tmp = target.with_name(target.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), meta["architecture"])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_string("downsize.base_gguf", Path(base_gguf).name)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(target)
    return target


def gguf_lora_for(adapter_dir: str | Path, base_gguf: str | Path) -> Path:
    """The adapter's GGUF LoRA, written once beside it and rewritten only when the adapter is newer."""
    folder = Path(adapter_dir)
    target = folder / ADAPTER_GGUF
    weights = folder / "adapter_model.safetensors"
    if target.is_file() and weights.is_file() and target.stat().st_mtime >= weights.stat().st_mtime:
        return target
    return write_gguf_lora(folder, base_gguf, target)
