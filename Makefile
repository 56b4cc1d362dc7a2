# Two commands do all set-up on a fresh machine with Python 3.11:
#   make run   - create .venv, install pinned dependencies, run the main job
#   make test  - the same install, then the whole test suite
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast lint format clean bench bench-scale

install: $(STAMP)

# torch first and pinned: a CPU wheel; an unpinned request would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found (fedrec needs Python 3.11; set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

# The main job: a federated DP simulation on the built-in synthetic data; prints a result table.
run: install
	$(PY) -m simulations.run

test: install lint
	$(PY) -m pytest -q

# Lint and format check (ruff, configured in pyproject.toml); `make format` rewrites in place.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Benchmarks (BENCHMARKS.md): the quick set, a few minutes on 2 cores, synthetic data.
bench: install
	$(PY) benchmarks/dp_overhead.py --models projection --repeats 3
	$(PY) benchmarks/dp_overhead.py --models lora --users 32 --repeats 2
	$(PY) benchmarks/federation_overhead.py --clients 10 --rounds 5
	$(PY) benchmarks/secagg_overhead.py --clients 10 --rounds 3
	$(PY) benchmarks/bytes_per_round.py --models projection lora --overrides privacy=none model.num_negatives=16
	$(PY) benchmarks/quality_cost.py --run 'privacy=none strategy.num_rounds=5 train.epochs=5'

# The scale run: 6,040 one-user clients at ML-1M statistics, 10 % per round (~12 min and
# ~2.4 GiB on 2 cores); SCALE_ARGS='--dataset-overrides dataset=movielens_1m dataset.path=DIR' for ML-1M.
bench-scale: install
	$(PY) benchmarks/scale.py --rounds 3 $(SCALE_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
