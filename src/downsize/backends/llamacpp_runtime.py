"""The fast CPU runtime: llama.cpp serves the student's shipped GGUF with the adapter as a GGUF LoRA.

Same contract as the transformers runtime (the reference path): the same prompt (`build_prompt`, with the
chat template rendered from the GGUF, or the catalog's template for a base model), the same grammar-driven
greedy decoding (`decoding.constrained_greedy`), the same confidence (the lowest unmasked token
log-probability, computed here from llama.cpp's logits) and early stop. What differs is the forward pass:
llama.cpp's quantised kernels, and a KV cache kept between calls so the prompt's constant head (the chat
template and the system line) is evaluated once. Batches are decoded one prompt at a time: on a CPU the
gateway serves batch 1, and llama.cpp already uses every thread for one sequence.

llama-cpp-python is imported inside functions only (the `serve` extra); the GGUF LoRA is written once
beside the adapter (`gguf_lora.gguf_lora_for`).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from downsize.backends.decoding import Completion, TokenTexts, ToolCallRuntime, constrained_greedy
from downsize.backends.gguf_lora import gguf_lora_for, gguf_metadata
from downsize.backends.students import OFFLINE_STUDENTS, specialist_artifact, student_folder
from downsize.backends.transformers_runtime import build_prompt
from downsize.errors import ConfigError
from downsize.prompting import PromptBudget

INSTALL_HINT = "pip install 'downsize[serve]' (llama-cpp-python==0.3.36, ~9 min to compile) or `make install`"


def check_llama_cpp() -> None:
    """Raise a one-line error saying how to install llama-cpp-python when it is missing (nothing imported)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError(f"the llamacpp engine needs llama-cpp-python: run `{INSTALL_HINT}`")


def require_llama_cpp() -> Any:
    """The llama_cpp module, or a one-line error saying how to install it."""
    check_llama_cpp()
    import llama_cpp

    return llama_cpp


def base_gguf(student: str) -> Path:
    """The GGUF file of a student: a catalog entry's shipped GGUF, or a path to a .gguf file."""
    if student.endswith(".gguf") and Path(student).is_file():
        return Path(student)
    folder, name = student_folder(student)
    if name is None:
        raise ConfigError(
            f"the llamacpp engine serves GGUF students and {student!r} is not one: use a catalog student "
            f"({', '.join(OFFLINE_STUDENTS)}), a .gguf path, or --engine transformers"
        )
    return Path(folder) / name


class GGUFTokenizer:
    """The few tokenizer calls `build_prompt` makes (encode, decode, chat template), from the GGUF's vocabulary."""

    def __init__(self, llm: Any, chat_template: str | None) -> None:
        self.llm = llm
        self.chat_template = chat_template
        self.eos_token = self._token_text(llm.token_eos())
        self.bos_token = self._token_text(llm.token_bos())
        self._template: Any = None

    def _token_text(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        return str(self.llm.detokenize([token_id], special=True).decode("utf-8", errors="replace"))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.llm.detokenize(list(ids), special=True).decode("utf-8", errors="replace"))

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool = False, add_generation_prompt: bool = True
    ) -> str:
        """The chat rendered as transformers renders it (same Jinja environment flags)."""
        if self._template is None:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise jinja2.exceptions.TemplateError(message)

            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template or "")
        return str(
            self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        )


class _LlamaScores:
    """One step's next-token log-probabilities (numpy), from llama.cpp's logits of the last token."""

    def __init__(self, logits: Any) -> None:
        import numpy as np

        x = np.asarray(logits, dtype=np.float64)
        top = x.max()
        self.logp = x - (top + np.log(np.exp(x - top).sum()))

    def top(self, k: int) -> tuple[list[list[int]], list[list[float]]]:
        import numpy as np

        k = min(k, self.logp.shape[0])
        idx = np.argpartition(-self.logp, k - 1)[:k]
        idx = idx[np.argsort(-self.logp[idx], kind="stable")]
        return [idx.tolist()], [self.logp[idx].tolist()]

    def ranked(self, row: int, ids: Sequence[int]) -> tuple[list[int], list[float]]:
        import numpy as np

        if not ids:
            return [], []
        arr = np.asarray(ids, dtype=np.int64)
        arr = arr[np.argsort(-self.logp[arr], kind="stable")]
        return arr.tolist(), self.logp[arr].tolist()


class _LlamaScorer:
    """One sequence through llama.cpp, reusing the KV cache of the longest prefix shared with the last call."""

    def __init__(self, runtime: LlamaCppRuntime) -> None:
        self.runtime = runtime

    def _scores(self) -> _LlamaScores:
        import numpy as np

        rt = self.runtime
        pointer = rt.llama_cpp.llama_get_logits_ith(rt.llm.ctx, -1)
        return _LlamaScores(np.ctypeslib.as_array(pointer, shape=(rt.n_vocab,)))

    def start(self, prompts: list[str]) -> _LlamaScores:
        (prompt,) = prompts
        llm = self.runtime.llm
        ids = self.runtime.tokenizer.encode(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) + self.runtime.max_new_tokens > llm.n_ctx():
            raise ValueError(f"the prompt has {len(ids)} tokens; the context holds {llm.n_ctx()}")
        cached = llm.input_ids[: llm.n_tokens].tolist()
        shared = 0
        for a, b in zip(cached, ids[:-1], strict=False):  # keep at least one token to evaluate
            if a != b:
                break
            shared += 1
        llm.n_tokens = shared  # eval() drops the KV cache from here on
        llm.eval(ids[shared:])
        return self._scores()

    def advance(self, next_ids: list[int | None]) -> _LlamaScores:
        (token_id,) = next_ids
        assert token_id is not None
        self.runtime.llm.eval([token_id])
        return self._scores()


class LlamaCppRuntime(ToolCallRuntime):
    """A student's shipped GGUF, with a LoRA adapter converted to GGUF, generating tool calls on llama.cpp."""

    engine = "llamacpp"

    def __init__(
        self,
        student: str,
        adapter_path: str | Path | None = None,
        budget: PromptBudget | None = None,
        max_new_tokens: int = 64,
        top_k: int = 32,
        threads: int | None = None,
        n_ctx: int = 4096,
        lora_path: str | Path | None = None,
    ) -> None:
        """`lora_path` names a GGUF LoRA directly; else `adapter_path` (a PEFT folder) is converted once."""
        llama_cpp = require_llama_cpp()
        model_path = base_gguf(student)
        if lora_path is None and adapter_path is not None:
            if specialist_artifact(adapter_path) != "adapter":
                raise ConfigError(
                    f"{adapter_path} holds a fully fine-tuned model, not an adapter: serve it with "
                    "--engine transformers"
                )
            lora_path = gguf_lora_for(adapter_path, model_path)
        threads = threads or os.cpu_count() or 1
        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(model_path),
            lora_path=str(lora_path) if lora_path is not None else None,
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
        )
        self.model_path, self.lora_path = model_path, lora_path
        entry = OFFLINE_STUDENTS.get(student)
        template = entry.chat_template if entry is not None and entry.chat_template else None
        self.tokenizer = GGUFTokenizer(self.llm, template or gguf_metadata(model_path)["chat_template"])
        self.budget = budget or PromptBudget()
        self.max_new_tokens = max_new_tokens
        self.top_k = top_k
        self.n_vocab = int(self.llm.n_vocab())
        self.token_texts = TokenTexts([self.tokenizer._token_text(i) for i in range(self.n_vocab)])

    def prompt(self, messages: list[dict[str, Any]]) -> str:
        return build_prompt(
            self.tokenizer, messages, self.budget, self.copied if self.copied_in_prompt else None
        )

    def complete(
        self, prompts: list[str], grammars: list[Any], stop_below: float | None = None
    ) -> list[Completion]:
        """Greedy completion of each prompt (one after another) under its grammar: copy/feed/done.

        Same contract as `TransformersRuntime.complete`: unmasked log-probabilities, early stop below
        `stop_below`.
        """
        results: list[Completion] = []
        for prompt, grammar in zip(prompts, grammars, strict=True):
            results += constrained_greedy(
                _LlamaScorer(self),
                [prompt],
                [grammar],
                self.token_texts,
                self.max_new_tokens,
                top_k=self.top_k,
                stop_below=stop_below,
            )
        return results
