"""The fast CPU runtime: llama.cpp serves the student's GGUF (converted once to bf16 or q8_0, `serving_gguf`)
with the adapter as a GGUF LoRA.

Same contract as the transformers runtime (the reference path): the same prompt (`build_prompt`, with the
chat template rendered from the GGUF, or the catalog's template for a base model), the same grammar-driven
greedy decoding (`decoding.constrained_greedy`), the same confidence (the lowest unmasked token
log-probability, computed here from llama.cpp's logits) and early stop. What differs is the forward pass:
llama.cpp's quantised kernels, and a KV cache kept between calls so the prompt's constant head (the chat
template and the system line) is evaluated once. Batches are decoded one prompt at a time: on a CPU the
gateway serves batch 1, and llama.cpp already uses every thread for one sequence.

Several specialists share one student in memory: a `LoadedStudent` is one GGUF loaded once (weights
memory-mapped, one context) with each specialist's GGUF LoRA loaded beside it and selected per call, and a
`StudentPool` keeps one per GGUF file for a process that serves many specialists (the specialist worker).

llama-cpp-python is imported inside functions only (the `serve` extra); the GGUF LoRA is written once
beside the adapter (`gguf_lora.gguf_lora_for`).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from downsize.backends.decoding import Completion, Sampling, TokenTexts, ToolCallRuntime, constrained_greedy
from downsize.backends.gguf_lora import gguf_lora_for, gguf_metadata
from downsize.backends.students import OFFLINE_STUDENTS, specialist_artifact, student_folder
from downsize.config import models_dir
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


# The weights llama.cpp computes with, for a catalog student (its shipped GGUF is 4-bit). Converted once
# from the shipped GGUF (the same values the student was trained on: training dequantises that very file),
# so nothing is lost but memory. On 2 cores of an AVX512-BF16 EPYC, 230 prompt tokens with a LoRA take
# 0.35 s in bf16, 0.47 s in q8_0 and 0.83 s in the shipped Q4_1, which llama.cpp does not repack for SIMD
# (2026-12-03, docs/log.md); the price is memory: 271 MB mapped for SmolLM2-135M in bf16, 145 MB in q8_0,
# 98 MB shipped.
GGUF_WEIGHTS = ("auto", "bf16", "q8_0", "shipped")


def weights_choice() -> str:
    """$DOWNSIZE_GGUF_WEIGHTS, else `auto`: bf16 where the CPU multiplies bf16 natively, q8_0 elsewhere."""
    choice = (os.environ.get("DOWNSIZE_GGUF_WEIGHTS") or "auto").strip().lower()
    if choice not in GGUF_WEIGHTS:
        raise ConfigError(
            f"DOWNSIZE_GGUF_WEIGHTS={choice!r} is not one of {', '.join(GGUF_WEIGHTS)}: unset it for auto"
        )
    if choice != "auto":
        return choice
    info = require_llama_cpp().llama_print_system_info().decode(errors="replace")
    return "bf16" if "AVX512_BF16 = 1" in info or "AMX_BF16 = 1" in info else "q8_0"


def serving_gguf(student: str) -> Path:
    """The GGUF llama.cpp serves a student from: a catalog student's shipped GGUF converted to the fast
    weights (`weights_choice`) once under models_dir()/gguf, or a user's own .gguf file as it is."""
    shipped = base_gguf(student)
    choice = weights_choice()
    if student not in OFFLINE_STUDENTS or choice == "shipped":
        return shipped
    target = models_dir() / "gguf" / f"{shipped.stem}.{choice.upper()}.gguf"
    if target.is_file():
        return target
    llama_cpp = require_llama_cpp()
    import ctypes

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[
        choice
    ]
    params.allow_requantize = True  # from the shipped 4-bit values: exact in bf16, within q8_0's rounding
    params.nthread = os.cpu_count() or 1
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):  # llama.cpp logs every tensor
        status = llama_cpp.llama_model_quantize(
            str(shipped).encode(), str(tmp).encode(), ctypes.byref(params)
        )
    if status != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"llama.cpp could not convert {shipped.name} to {choice} (code {status}): "
            "set DOWNSIZE_GGUF_WEIGHTS=shipped to serve the shipped file"
        )
    tmp.replace(target)  # atomic: a concurrent converter writes its own tmp and the same bytes
    return target


def context_size(budget: PromptBudget, max_new_tokens: int) -> int:
    """The llama.cpp context a specialist needs: its prompt budget twice over (the chat template and the
    system line come on top of the pruned conversation: 245 tokens at most for the default 192 on every
    airline-agent call in the shipped logs), the generated tokens and 256 spare, in steps of 256, and at least 1024.

    The KV cache and the attention buffers grow with the context: 4096 tokens cost SmolLM2-135M 68 MB more
    than 1024 per context (RssAnon 132 vs 64 MB, 2026-12-03; 512 would save 12 MB more).
    """
    needed = 2 * budget.max_prompt_tokens + max_new_tokens + 256
    return max(1024, -(-needed // 256) * 256)


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


class LoadedStudent:
    """One student GGUF in llama.cpp (weights and one context) with the GGUF LoRAs of the specialists on it.

    Why one model with several adapters: a `Llama(lora_path=...)` per specialist turns off mmap and copies
    the weights into anonymous memory, ~210 MB each on SmolLM2-135M with a 4096-token context. Here the
    weights are mapped once, each adapter adds its own tensors (~13 MB for r=8 on every projection), and one
    context serves every specialist, since the worker decodes one request at a time: five specialists take
    269 MB of RSS instead of 1143 MB (bench-results/shared_student.json, 2026-12-03).
    `select` puts a specialist's adapter on the context before it is evaluated and, when that changes the
    adapter, drops the KV cache: the cached prefix was computed under another adapter and must not be reused.
    """

    def __init__(self, model_path: Path, n_ctx: int, threads: int) -> None:
        self.llama_cpp = require_llama_cpp()
        self.model_path, self.threads = model_path, threads
        self.lock = threading.RLock()  # one sequence at a time on the shared context
        self._adapters: dict[Path, Any] = {}  # GGUF LoRA path -> llama_adapter_lora handle (owned here)
        self._tokenizers: dict[str | None, GGUFTokenizer] = {}  # by chat template
        self._active: Path | None = None  # the adapter on the context, which the KV cache was computed with
        self.reusable = 0  # leading cached tokens a later prompt may reuse (see `_LlamaScorer.start`)
        self.llm: Any = self._open(n_ctx)
        self.n_vocab = int(self.llm.n_vocab())
        vocab = self.tokenizer(None)
        self.token_texts = TokenTexts([vocab._token_text(i) for i in range(self.n_vocab)])

    def _open(self, n_ctx: int) -> Any:
        return self.llama_cpp.Llama(
            model_path=str(self.model_path),
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            logits_all=False,
            verbose=False,
        )

    @property
    def n_ctx(self) -> int:
        return int(self.llm.n_ctx())

    def fit_context(self, n_ctx: int) -> None:
        """Reload with a larger context when a specialist needs more than the loaded one holds (the weights
        come back from the page cache; the adapters are loaded again on their next use)."""
        with self.lock:
            if n_ctx <= self.n_ctx:
                return
            self._release()
            self.llm = self._open(n_ctx)
            for tokenizer in self._tokenizers.values():
                tokenizer.llm = self.llm

    def tokenizer(self, chat_template: str | None) -> GGUFTokenizer:
        """The vocabulary with a chat template (a catalog student's own, or the GGUF's for None)."""
        if chat_template not in self._tokenizers:
            template = chat_template or gguf_metadata(self.model_path)["chat_template"]
            self._tokenizers[chat_template] = GGUFTokenizer(self.llm, template)
        return self._tokenizers[chat_template]

    def load_adapter(self, lora_path: Path) -> None:
        """Load a GGUF LoRA onto the model once (no-op when it is loaded)."""
        with self.lock:
            if lora_path in self._adapters:
                return
            handle = self.llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(lora_path).encode())
            if not handle:
                raise ConfigError(
                    f"llama.cpp could not load the LoRA {lora_path}: delete it to have it written again"
                )
            self._adapters[lora_path] = handle

    def select(self, lora_path: Path | None) -> None:
        """Put this adapter (None: the bare student) on the context; a change empties the KV cache."""
        import ctypes

        if lora_path == self._active:
            return
        llama_cpp = self.llama_cpp
        if lora_path is None:
            status = llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, None, 0, None)
        else:
            self.load_adapter(lora_path)
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[lora_path])
            scales = (ctypes.c_float * 1)(1.0)
            status = llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, adapters, 1, scales)
        if status:
            raise ConfigError(f"llama.cpp could not put the LoRA {lora_path} on its context (code {status})")
        self.llm.n_tokens = self.reusable = 0  # nothing cached under another adapter is reused
        self._active = lora_path

    @property
    def adapters(self) -> list[Path]:
        """The GGUF LoRAs loaded on this student."""
        return list(self._adapters)

    def _release(self) -> None:
        """Free the adapters, then the model and context (adapters before the model they belong to)."""
        for handle in self._adapters.values():
            self.llama_cpp.llama_adapter_lora_free(handle)
        self._adapters.clear()
        self._active, self.reusable = None, 0
        if self.llm is not None:
            self.llm.close()

    def close(self) -> None:
        with self.lock:
            if self.llm is None:
                return
            self._release()
            self.llm = None


class StudentPool:
    """The students one process has loaded, one `LoadedStudent` per GGUF file, shared by its specialists.

    The specialist worker keeps one and passes it to `runtime_for`: ten specialists on SmolLM2-135M then
    hold one copy of the weights and one context instead of ten (bench-results/shared_student.json).
    Constructing a pool loads nothing, so it costs nothing where no specialist runs on llama.cpp.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.students: dict[Path, LoadedStudent] = {}
        self._lock = threading.Lock()

    def student(self, model_path: Path, n_ctx: int, threads: int | None = None) -> LoadedStudent:
        """The loaded student of this GGUF, loaded on first use, with a context of at least `n_ctx`."""
        key = model_path.resolve()
        with self._lock:
            loaded = self.students.get(key)
            if loaded is None:
                loaded = LoadedStudent(model_path, n_ctx, self.threads or threads or os.cpu_count() or 1)
                self.students[key] = loaded
        loaded.fit_context(n_ctx)
        return loaded

    def close(self) -> None:
        """Free every adapter and student (runtimes made from the pool cannot generate afterwards)."""
        with self._lock:
            for loaded in self.students.values():
                loaded.close()
            self.students.clear()


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
    """One sequence through llama.cpp, reusing the KV cache of the longest prefix shared with the last prompt.

    A prompt scores the same whatever came before it: the runtime's adapter is selected first (which empties
    the cache when another one was on), only tokens evaluated as part of a prompt are reused (not generated
    ones), and at least two tokens are evaluated. With a LoRA, llama.cpp's one-token pass rounds differently
    from a batch (up to 0.75 apart in a logit, 2026-12-03), so a repeated prompt scored from its cache with
    one token left gave other log-probabilities than the first time.
    """

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
        student = self.runtime.student
        student.select(self.runtime.lora_path)
        cached = llm.input_ids[: min(llm.n_tokens, student.reusable)].tolist()
        shared = 0
        for a, b in zip(cached, ids[:-2], strict=False):  # keep at least two tokens to evaluate
            if a != b:
                break
            shared += 1
        llm.n_tokens = shared  # eval() drops the KV cache from here on
        student.reusable = 0  # until the prompt is in
        llm.eval(ids[shared:])
        student.reusable = len(ids)
        return self._scores()

    def advance(self, next_ids: list[int | None]) -> _LlamaScores:
        (token_id,) = next_ids
        assert token_id is not None
        self.runtime.llm.eval([token_id])
        return self._scores()


class LlamaCppRuntime(ToolCallRuntime):
    """A student's shipped GGUF, with a LoRA adapter converted to GGUF, generating tool calls on llama.cpp.

    Alone it loads its own student; given a `pool`, it shares the pool's student of the same GGUF with the
    other specialists made from that pool (one set of weights, one context, an adapter each).
    """

    engine = "llamacpp"

    def __init__(
        self,
        student: str,
        adapter_path: str | Path | None = None,
        budget: PromptBudget | None = None,
        max_new_tokens: int = 64,
        top_k: int = 32,
        threads: int | None = None,
        n_ctx: int | None = None,
        lora_path: str | Path | None = None,
        pool: StudentPool | None = None,
    ) -> None:
        """`lora_path` names a GGUF LoRA directly; else `adapter_path` (a PEFT folder) is converted once.
        `n_ctx` defaults to what the budget needs (`context_size`)."""
        check_llama_cpp()
        model_path = serving_gguf(student)
        if lora_path is None and adapter_path is not None:
            if specialist_artifact(adapter_path) != "adapter":
                raise ConfigError(
                    f"{adapter_path} holds a fully fine-tuned model, not an adapter: serve it with "
                    "--engine transformers"
                )
            lora_path = gguf_lora_for(adapter_path, model_path)
        self.budget = budget or PromptBudget()
        self.max_new_tokens = max_new_tokens
        self.top_k = top_k
        n_ctx = n_ctx or context_size(self.budget, max_new_tokens)
        threads = threads or os.cpu_count() or 1
        self._own = pool is None
        self.student = (
            LoadedStudent(model_path, n_ctx, threads)
            if pool is None
            else pool.student(model_path, n_ctx, threads)
        )
        self.llama_cpp = self.student.llama_cpp
        self.model_path = model_path
        self.weights = model_path.name  # recorded by `downsize eval`: the threshold holds for these weights
        self.lora_path = Path(lora_path) if lora_path is not None else None
        if self.lora_path is not None:
            self.student.load_adapter(self.lora_path)  # a bad file fails here, not on the first request
        entry = OFFLINE_STUDENTS.get(student)
        self.tokenizer = self.student.tokenizer(
            entry.chat_template if entry is not None and entry.chat_template else None
        )
        self.n_vocab = self.student.n_vocab
        self.token_texts = self.student.token_texts

    @property
    def llm(self) -> Any:
        """The llama_cpp.Llama this runtime evaluates on (shared with the pool's other specialists)."""
        return self.student.llm

    def close(self) -> None:
        """Free the student when this runtime loaded its own (a pool's students are freed by the pool)."""
        if self._own:
            self.student.close()

    def complete(
        self,
        prompts: list[str],
        grammars: list[Any],
        stop_below: float | None = None,
        sampling: Sampling | None = None,
    ) -> list[Completion]:
        """Greedy completion of each prompt (one after another) under its grammar: copy/feed/done.

        Same contract as `TransformersRuntime.complete`: unmasked log-probabilities, early stop below
        `stop_below`.
        """
        results: list[Completion] = []
        for prompt, grammar in zip(prompts, grammars, strict=True):
            with self.student.lock:  # the adapter stays on the shared context for the whole sequence
                results += constrained_greedy(
                    _LlamaScorer(self),
                    [prompt],
                    [grammar],
                    self.token_texts,
                    self.max_new_tokens,
                    top_k=self.top_k,
                    stop_below=stop_below,
                    sampling=sampling,
                )
        return results
