# Two entry points a fresh Debian 12 machine needs: `make serve` and `make test`.
# Everything else here is what those two call.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# libopenjp2-7: glymur's reduced-resolution JPEG 2000 decode (docs/decoding.md).
# postgresql: the registry tests start a throw-away cluster (tests/services.py).
APT_PACKAGES := redis-server orthanc orthanc-python dcmtk dicom3tools libopenjp2-7 postgresql
# Debian package -> a file it installs, to tell whether it is there.
APT_PROBES := /usr/bin/redis-server /usr/sbin/Orthanc /usr/share/orthanc/plugins/libOrthancPython.so /usr/bin/storescu /usr/bin/dciodvfy /usr/lib/postgresql/15/bin/initdb

# The OHIF check (tests/viewer/ohif_check.sh): a web viewer and a browser, not part of
# `make test`.
VIEWER_APT_PACKAGES := orthanc-dicomweb chromium npm
VIEWER_APT_PROBES := /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/bin/chromium /usr/bin/npm

.PHONY: setup setup-dev system-deps viewer-deps viewer-check serve test test-unit lint clean

# Two venv stamps, one per extra set: `make serve` needs only the runtime (no torch,
# TensorBoard, pytest or ruff); `make test` adds the `train` and `dev` extras on top, so
# `make serve` then `make test` upgrades the same venv in place.
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

setup: $(RUNTIME_STAMP)
setup-dev: $(DEV_STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# torch is pinned first so the `train` extra's range resolves to the CPU wheel on disk
# here instead of downloading CUDA builds; on a GPU machine, install your CUDA torch first.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q 'torch>=2.3'
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@ $(RUNTIME_STAMP)

system-deps:
	@missing=0; for f in $(APT_PROBES); do [ -e $$f ] || missing=1; done; \
	ldconfig -p | grep -q libopenjp2 || missing=1; \
	if [ $$missing = 1 ]; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi

viewer-deps: setup-dev system-deps
	@missing=0; for f in $(VIEWER_APT_PROBES); do [ -e $$f ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing Debian packages: $(VIEWER_APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(VIEWER_APT_PACKAGES); \
	fi

viewer-check: viewer-deps
	$(BIN)/python -m tests.viewer.ohif_check

# The main job on its embedded default: DICOM listener + in-process pipeline, no Redis,
# no Orthanc. Data under ~/.local/share/mammo-density unless MAMMO_DENSITY_DATA_DIR says.
serve: setup
	$(BIN)/mammo-density serve

lint: setup-dev
	$(BIN)/ruff check .

# pytest-xdist: three workers, each taking whole test files (a file's tests run in order
# in one worker, with its module fixtures; every worker starts its own Orthanc, Redis and
# serve processes, on ports of its own: tests/services.py). Three on the 2-core machines:
# most service tests wait on a subprocess, and the third worker fills that wait.
# `make test PYTEST_XDIST=` runs serially.
PYTEST_XDIST ?= -n 3 --dist loadfile

# pytest's exit code 5 (no tests collected) counts as a failure.
test: setup-dev system-deps lint
	@$(BIN)/python -m pytest -q $(PYTEST_XDIST); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The fast unit run: no Redis, Orthanc, dcmtk or dciodvfy needed (tests marked
# `services` are left out; tests/services.py fails an unmarked test that starts one).
test-unit: setup-dev lint
	$(BIN)/python -m pytest -q $(PYTEST_XDIST) -m "not services"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
