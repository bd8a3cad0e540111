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
# The Procfile says `python`: put the venv's first on PATH. honcho gives the worker PORT+100:
# the reports it sends would link to that port, where nothing listens, so TALLY_URL names the web's.
run: migrate
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" TALLY_URL="$${TALLY_URL:-http://localhost:$(PORT)}" \
		$(VENV)/bin/honcho start --port $(PORT) web worker clock

# The suite runs on the pip-installed PostgreSQL 18 (no JIT) and on the system's PostgreSQL
# package (Debian's: `apt-get install postgresql`, JIT on), the build most users run, each
# in three parts (the slow process-level and browser tests, the other tests that mostly wait,
# and the rest), all six at once, each with its own throwaway server: tests/suites.py says
# why and how. Without the package its parts are skipped with a line saying so; CI installs
# it (.ci/run) and sets REQUIRE_SYSTEM_POSTGRES=1, so there it cannot be skipped.
test: setup
	$(PY) -m tests.suites

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
