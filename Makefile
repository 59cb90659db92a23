# The README's two commands: `make demo` and `make test`. Each sets up .venv on a fresh machine first.
# What they install is pinned: constraints/dev.txt (a `pip freeze` of the environment the suite passed in), so a
# release on the registry cannot turn `make test` red. `make test-compat` runs the same suite under the other
# stacks users have (constraints/gpu-machine.txt, constraints/newest.txt), each in its own .venv-<stack>;
# `make check-latest` resolves today's newest releases, unpinned, and names what moved.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
LOCK := constraints/dev.txt
COMPAT_STACKS ?= gpu-machine newest
COMPAT_FLAGS ?=
# pytest-xdist: one worker per core (at most 8), as tests/stacks.py runs each stack (PYTEST_WORKERS there). On the
# 2-core machines CI runs on this halves the suite's time: most of it is single-threaded (Inductor's compiles,
# Triton's interpreter, fresh processes).
TEST_WORKERS := -n auto --maxprocesses=8

.PHONY: setup demo test test-compat check-latest lock lint clean

setup: $(VENV)/.installed

# The lock pins torch==2.13.0+cpu, the CPU build that lies on these machines' disk (pip finds it through the
# machine's find-links; a bare `torch` would pull a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $@

demo: setup
	$(PY) examples/minilm_demo.py

test: setup
	$(PY) -m pytest -q $(TEST_WORKERS)

test-compat:
	$(PYTHON) -m tests.stacks $(COMPAT_FLAGS) $(COMPAT_STACKS)

check-latest:
	$(PYTHON) -m tests.stacks --latest

# Rewrite the dev lock from the current .venv (after changing what it installs on purpose), header kept.
lock: setup
	{ sed -n '/^#/p' $(LOCK); $(PY) -m pip freeze --exclude-editable | grep -v '^#'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(VENV)-* build *.egg-info
