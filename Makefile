# `make run` and `make test` set themselves up: a .venv, the pinned packages, the project
# importable from the venv (so `procrastinate --app=jobs.app ...` works as typed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
READY := $(VENV)/.tally-ready
PORT ?= 5000

.PHONY: setup run test test-system-postgres test-quick lint format migrate stop psql bench clean

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

# The suite runs twice: on the pip-installed PostgreSQL 18 (no JIT) and on the system's
# PostgreSQL package (Debian's: `apt-get install postgresql`, JIT on), the build most
# users run. Without the package the second run is skipped with a line saying so;
# CI installs it (.ci/run) and sets REQUIRE_SYSTEM_POSTGRES=1, so there it cannot be skipped.
SYSTEM_POSTGRES_BIN ?= $(lastword $(wildcard /usr/lib/postgresql/*/bin))

# Both runs at once (each has its own server, ports and namespaces; the second keeps no
# pytest cache): most of the suite waits on processes, and one after the other took 16
# minutes in CI. The system build's report follows the pip one's. The system run always
# starts its own server of that build: with TEST_DATABASE_URL it would run on that database
# too, at the same time as the other run, each emptying the tables under the other's tests.
SYSTEM_LOG := .venv/test-system-postgres.log

# Not $(MAKE) in the recipe: make runs such a line even under `make -n`, which then ran the suite.
SUBMAKE = $(MAKE)

test: setup
	@$(SUBMAKE) --no-print-directory test-system-postgres PYTEST_ARGS="-p no:cacheprovider" \
		> $(SYSTEM_LOG) 2>&1 & system=$$!; \
	$(PY) -m pytest; pip=$$?; \
	wait $$system; system=$$?; \
	cat $(SYSTEM_LOG); \
	[ $$pip -eq 0 ] && [ $$system -eq 0 ]

test-system-postgres: setup
	@if [ -x "$(SYSTEM_POSTGRES_BIN)/postgres" ]; then \
		echo "== the suite again, on $(SYSTEM_POSTGRES_BIN)"; \
		TEST_DATABASE_URL= TEST_POSTGRES_BIN="$(SYSTEM_POSTGRES_BIN)" $(PY) -m pytest $(PYTEST_ARGS); \
	elif [ -n "$$REQUIRE_SYSTEM_POSTGRES" ]; then \
		echo "no system PostgreSQL in /usr/lib/postgresql (apt-get install postgresql)"; exit 1; \
	else \
		echo "== skipped: the suite on the system PostgreSQL (apt-get install postgresql to run it)"; \
	fi

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
