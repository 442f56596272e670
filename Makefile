# Two commands set everything up on a fresh machine (see README.md):
#   make demo   synthetic cohort -> every stage (ray_jobs/configs/demo.yaml) -> report.html + summary
#   make test   the test suite (what CI runs)
# Both build .venv first when it is missing or the requirements changed;
# `make setup` builds it alone and is a fast no-op when nothing changed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mmray-installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-drills clean-demo

setup: $(STAMP)

# torch comes from the package registry (plain `torch`), never the local
# CPU-only wheel; pyradiomics needs numpy + versioneer installed first and
# --no-build-isolation; pyarrow<26 because of mlflow (in requirements.txt).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip wheel setuptools
	$(PIP) install -q numpy versioneer
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	$(PIP) install -q --no-build-isolation pyradiomics
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@touch $@
	@echo "environment ready: $(VENV)"

demo: $(STAMP)
	$(VENV)/bin/mmray demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q -m "not drill" $(PYTEST_ARGS)

# Fault drills: SIGKILL of Ray workers, the S3 server, Serve replicas and the pipeline (CI runs them too).
test-drills: $(STAMP)
	$(PY) -m pytest -q -m drill $(PYTEST_ARGS)

# Unit tests only (no services, no clusters).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not slow" $(PYTEST_ARGS)

clean-demo:
	rm -rf $(DEMO_OUT)
