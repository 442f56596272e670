# Two commands set everything up on a fresh machine (see README.md):
#   make demo   synthetic cohort -> every stage (ray_jobs/configs/demo.yaml) -> report.html + summary
#   make test   the test suite (what CI runs)
# Both build .venv first when it is missing or requirements.lock changed;
# `make setup` builds it alone and is a fast no-op when nothing changed.
# requirements.lock pins every package (with hashes) of the tested set: the
# top-level requirements*.txt are its input; `make lock` re-resolves it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
LOCK := requirements.lock
LOCK_INPUTS := requirements.txt requirements-dev.txt requirements-setup.txt
STAMP := $(VENV)/.mmray-installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=
LOCK_ARGS ?=

# One of pip's settings on this machine (empty where pip has none). uv reads no
# pip.conf, so the extra indexes (local copies of PyPI's files: same hashes)
# and version caps that pip obeys here are handed to it explicitly.
pip_setting = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^global\.$(1)='\(.*\)'$$/\1/p")
# where uv takes files from when installing: pip's extra indexes here first
# (the hashes make the source irrelevant), then PyPI
UV_SOURCES = $(foreach u,$(call pip_setting,extra-index-url),--extra-index-url $(u)) --index-strategy unsafe-first-match
# the lines of one package in the lock: its pin and its hashes
lock_entry = awk '/^[^ \#]/ {p = ($$1 ~ /^$(1)==/)} p' $(LOCK)

.PHONY: setup lock demo test test-e2e test-fast test-drills clean-demo

setup: $(STAMP)

# pip installs uv (pinned and hash-checked from the lock); uv installs the lock
# exactly (`pip sync` removes what it does not list) and compiles its bytecode
# (imports of torch, ray and mlflow are seconds faster with it). setuptools,
# wheel, numpy and versioneer go first: the lock's three sdists (pyradiomics,
# docopt, autograd-gamma) are built against them, without build isolation.
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(call lock_entry,uv) > $(VENV)/uv-lock.txt
	$(PY) -m pip install -q --no-deps --require-hashes -r $(VENV)/uv-lock.txt
	@{ $(foreach p,setuptools wheel numpy versioneer,$(call lock_entry,$(p));) } > $(VENV)/build-lock.txt
	$(UV) pip install -q --python $(PY) $(UV_SOURCES) --require-hashes --no-deps -r $(VENV)/build-lock.txt
	$(UV) pip sync -q --python $(PY) $(UV_SOURCES) --require-hashes --no-build-isolation --compile-bytecode $(LOCK)
	$(UV) pip install -q --python $(PY) --no-deps --no-build-isolation -e .
	@touch $@
	@echo "environment ready: $(VENV)"

# Re-resolve the lock from $(LOCK_INPUTS) on PyPI (every file's hash), keeping
# the locked versions that still fit; `make lock LOCK_ARGS=--upgrade` takes the
# newest that fit (then run `make test` before committing the new lock).
lock: $(STAMP)
	UV_CUSTOM_COMPILE_COMMAND="make lock" $(UV) pip compile -q --python $(PY) --generate-hashes \
		--no-build-isolation-package pyradiomics \
		$(foreach c,$(call pip_setting,constraint),-c $(c)) \
		$(LOCK_INPUTS) -o $(LOCK) $(LOCK_ARGS)

demo: $(STAMP)
	$(VENV)/bin/mmray demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q -m "not drill and not e2e" $(PYTEST_ARGS)

# Slow end-to-end checks (whole pipelines, demo-size quality, pretraining runs); CI runs them once after `make test`.
test-e2e: $(STAMP)
	$(PY) -m pytest -q -m "e2e and not drill" $(PYTEST_ARGS)

# Fault drills: SIGKILL of Ray workers, the S3 server, Serve replicas and the pipeline (CI runs them too).
test-drills: $(STAMP)
	$(PY) -m pytest -q -m drill $(PYTEST_ARGS)

# Unit tests only: no Ray, services or clusters (those carry the `integration`
# marker, enforced by tests/integration_guard.py); a few minutes on 2 cores.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not slow" $(PYTEST_ARGS)

clean-demo:
	rm -rf $(DEMO_OUT)
