# Two commands: `make demo` (set up + run the demo) and `make test` (set up + run the tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench-ctr bench-topk bench-beyond-log recbole clean

setup: $(VENV)/.installed

# torch is installed on its own line first: the exact pin takes the CPU wheel and never a multi-GB CUDA build.
# llama-cpp-python compiles llama.cpp (about 7 minutes on 2 cores, once: pip caches the wheel); the multimodal
# library is not needed and is skipped.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/reaseq demo

test: setup
	$(BIN)/python -m pytest

recbole:
	bash benchmarks/peers/setup_recbole.sh

bench-ctr: setup recbole
	$(BIN)/python benchmarks/ctr_baselines.py

bench-topk: setup recbole
	$(BIN)/python benchmarks/topk_baselines.py

bench-beyond-log: setup
	$(BIN)/python benchmarks/beyond_log.py

clean:
	rm -rf $(VENV) .venv-recbole runs .cache
