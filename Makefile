# `make run` and `make test` set themselves up: a .venv, the pinned packages, the project
# importable from the venv (so `procrastinate --app=jobs.app ...` works as typed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
READY := $(VENV)/.tally-ready
PORT ?= 5000

.PHONY: setup run test test-quick lint format migrate stop psql bench clean

setup: $(READY)

$(READY): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "tally-project.pth").write_text("$(CURDIR)\n")'
	touch $(READY)

migrate: setup
	$(PY) -m migrations

# The release step runs before, never under honcho: honcho stops everything when one exits.
# The Procfile says `python`: put the venv's first on PATH.
run: migrate
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/honcho start --port $(PORT) web worker clock

test: setup
	$(PY) -m pytest

test-quick: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks are not tests: they print figures beside baselines and write docs/BENCHMARKS.md.
bench: setup
	$(PY) -m bench

stop: setup
	$(PY) -m tally.localdb stop

psql: setup
	$(PY) -m tally.localdb psql

clean: stop
	rm -rf .tally
