# Build and score BSA-style benchmarks. `make setup`, then `make build-dataset`; `make test` for the tests.
SHELL := /bin/bash
PY ?= .venv/bin/python
BSA ?= .venv/bin/bsa
CONFIG ?= configs/default.yaml
SET ?=
SETS := $(foreach s,$(SET),--set $(s))
# the configured build dir, read once (`:=`: a recursive variable would start Python at every use)
BUILD ?= $(shell $(PY) -c "import sys; from pipeline.config import load_config as l; print(l(sys.argv[1], sys.argv[2:]).build_dir)" '$(CONFIG)' $(SET) 2>/dev/null || echo build)
BUILD := $(BUILD)
# stage files in the configured order, e.g. "00_ingest 01_clean 02_language ..."
ORDER := $(shell $(BSA) order --config $(CONFIG) $(SETS) 2>/dev/null || echo 00_ingest 01_clean 02_language 03_dedup 04_relevance 05_annotations 06_synthesis 07_difficulty)
LAST := $(lastword $(ORDER))
SOURCES := $(shell $(BSA) order --sources --config $(CONFIG) $(SETS) 2>/dev/null)
COMMON_DEPS := $(sort $(CONFIG) $(wildcard configs/*.yaml configs/taxonomy/*.yaml pipeline/*.py)) .venv/.setup-done

.PHONY: setup test build-dataset lm bench lint clean eval leaderboard spot-check release croissant

setup: .venv/.setup-done
.venv/.setup-done: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet torch==2.13.0
	.venv/bin/pip install --quiet -e '.[dev]'
	touch $@

test: .venv/.setup-done
	$(PY) -m pytest -q -ra tests

lint: .venv/.setup-done
	.venv/bin/ruff check pipeline stages croissant tests bench

# -- the build: one target a stage, chained by files, so a change reruns only what follows it ------------
stage_name = $(word 2,$(subst _, ,$(1)))
PREV := none $(ORDER)
define STAGE_RULE
$(BUILD)/$(1).parquet: $(if $(filter-out none,$(2)),$(BUILD)/$(2).parquet,$(SOURCES)) $(wildcard stages/$(call stage_name,$(1)).py) $(wildcard prompts/*/*) $(COMMON_DEPS) $(if $(filter language,$(call stage_name,$(1))),$(BUILD)/lm/.done)
	$(BSA) build --config $(CONFIG) $(SETS) --only $(call stage_name,$(1))
endef
$(foreach i,$(shell seq $(words $(ORDER))),$(eval $(call STAGE_RULE,$(word $(i),$(ORDER)),$(word $(i),$(PREV)))))

# KenLM models, trained from the reference corpora the config names
lm: $(BUILD)/lm/.done
$(BUILD)/lm/.done: $(wildcard data/lm/*) $(wildcard stages/language.py stages/kenlm_arpa.py) $(COMMON_DEPS)
	$(BSA) lm --config $(CONFIG) $(SETS)
	touch $@

release: $(BUILD)/release/benchmark.csv
$(BUILD)/release/benchmark.csv: $(BUILD)/$(LAST).parquet $(wildcard stages/release.py) $(COMMON_DEPS)
	$(BSA) release --config $(CONFIG) $(SETS)

croissant: $(BUILD)/release/croissant.json
$(BUILD)/release/croissant.json: $(BUILD)/release/benchmark.csv $(wildcard croissant/*.py)
	$(BSA) croissant --config $(CONFIG) $(SETS)

build-dataset: $(BUILD)/release/croissant.json
	@cat $(BUILD)/release/funnel.txt 2>/dev/null || true

spot-check: .venv/.setup-done
	$(BSA) spot-check --config $(CONFIG) $(SETS) --n $(or $(N),50)

# -- evaluation ---------------------------------------------------------------------------------------
MODEL ?= local
K ?= 5
eval: .venv/.setup-done
	$(BSA) eval --model $(MODEL) --k $(K) --config $(CONFIG) \
	  $(if $(BASE_URL),--base-url $(BASE_URL)) $(if $(API_KEY_ENV),--api-key-env $(API_KEY_ENV)) \
	  $(if $(DATASET),--dataset $(DATASET)) $(if $(LIMIT),--limit $(LIMIT)) \
	  $(if $(JUDGE_MODEL),--judge-model $(JUDGE_MODEL)) $(if $(JUDGE_BASE_URL),--judge-base-url $(JUDGE_BASE_URL)) \
	  $(if $(filter 1,$(RULES)),--rules)

leaderboard: .venv/.setup-done
	$(BSA) leaderboard --results results

bench: .venv/.setup-done
	$(PY) bench/run_all.py

clean:
	rm -rf $(BUILD) .pytest_cache
