# The two set-up commands of the README. Each makes its own virtual environment (.venv) and installs into it.
# CI pins the CPU build of torch; the library itself only asks for a range.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test install clean

$(BIN)/gradexp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	# setuptools announces, as a warning, that the editable install uses a path finder (configs/ is mapped to
	# gradexp.configs): information only, so it is filtered out of the quiet install
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/gradexp

install: $(BIN)/gradexp

demo: install
	$(BIN)/gradexp run

test: install
	$(BIN)/python -m pytest -q -rs

clean:
	rm -rf $(VENV) build dist *.egg-info outputs multirun
