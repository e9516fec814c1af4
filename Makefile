VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
# The address the server listens on: this machine only by default. `make run ADDRESS=0.0.0.0` serves every network
# interface (anyone who can reach the port can use the app: see the README's "Serving it to others").
ADDRESS ?= localhost
# Test workers (pytest-xdist): each module's tests stay together on one worker, the longest modules handed out first
# (tests/conftest.py); `make test WORKERS=0` runs everything in one process.
WORKERS ?= 2
PARALLEL := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadfile --no-loadscope-reorder)

.PHONY: run test test-fast lint venv clean

# The pinned requirements first, then the project itself, editable and without dependencies or build isolation
# (setuptools comes pinned in requirements-dev.txt), so the install needs nothing beyond the pinned list.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# `make run PORT=8502` serves on another port; .streamlit/config.toml holds the other server settings.
run: $(STAMP)
	$(PY) -m ui.serve --server.port $(PORT) --server.address $(ADDRESS)  # streamlit run app.py, imports preloaded

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Under CI=true the browser tests need Chromium: a failed install fails `make test` (the tests would fail anyway,
# see tests/conftest.py `require`); elsewhere it is a message and those tests are skipped.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; \
	} || { \
	  case "$$CI" in ""|0|false|no) echo "chromium could not be installed; browser tests will be skipped";; \
	    *) echo "chromium could not be installed, and CI (CI=$$CI) needs it for the browser tests" >&2; exit 1;; \
	  esac; \
	}
	$(PY) -m pytest -q -p no:cacheprovider $(PARALLEL)

# The inner loop: lint and every test but the real-browser, torchrun and slow ones (slow: a test that takes seconds:
# a whole app session, a subprocess, a Chromium export, a model round trip or a real network over many images).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider $(PARALLEL) -m "not browser and not slow and not torchrun"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
