# The two set-up commands of the README. Each makes its own virtual environment (.venv) and installs into it.
# CI pins the CPU build of torch; the library itself only asks for a range.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test check gpu-check install clean

# Silent unless something fails (@: make does not echo the commands). setuptools announces, as a warning, that the
# editable install uses a path finder (configs/ is mapped to gradexp.configs): information only, so it is filtered
# out of the quiet install. The extras install with torch pinned, so that none of them swaps it (lightning adds ~3 s
# and no torch).
$(BIN)/gradexp: pyproject.toml
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q "$(TORCH_PIN)"
	@echo "$(TORCH_PIN)" > $(VENV)/constraints.txt
	@PYTHONWARNINGS=ignore::UserWarning $(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[dev,optuna,lightning]"
	@touch $(BIN)/gradexp

install: $(BIN)/gradexp

demo: install
	$(BIN)/gradexp run

# every tier CI runs: the fast tier on every core (pytest-xdist, as `check`), then the slow and gpu tiers (subprocesses,
# sweeps, wheel, SLURM), also one worker per core; gpu tests skip without CUDA. Each slow test's processes keep to one
# torch thread (OMP_NUM_THREADS=1; a test that divides threads sets its own): two workers' runs at torch's default
# of one thread per core would oversubscribe the cores, and every slow test takes its time from the longest few, so
# worksteal. On 2 cores the slow tier took 553 s this way, 1,195 s in one process.
# Between them every test runs once; the first failing tier stops make (exit 2)
test: install
	$(BIN)/python -m pytest -q -rs -n auto -m "not slow and not gpu"
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -rs -n auto --dist worksteal -m "slow or gpu"

# the fast tier to run constantly: oracles, registries, in-process runs; one worker process per core (pytest-xdist):
# 63-165 s on 2 cores (75-85 s on the first machine, 125-165 s on the slower one of later sessions)
check: install
	$(BIN)/python -m pytest -q -rs -n auto -m "not slow and not gpu"

# on a machine with an NVIDIA GPU: the CUDA tests (no host sync on ordinary steps, ...) and the CUDA benchmark
gpu-check: install
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA device here')"
	$(BIN)/python -m pytest -q -rs -m gpu
	$(BIN)/python scripts/bench_overhead.py --override device=cuda --repeats 3 --out bench_overhead_cuda.json

clean:
	rm -rf $(VENV) build dist *.egg-info outputs multirun
