# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint typecheck unit system-deps venv bench clean image image-test-base lock base-digest

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## Debian packages the tests drive for real (docker-registry, nginx, skopeo, prometheus; podman,
## buildah, debootstrap for the image test).
system-deps:
	bash .ci/system-deps

## Starts the sandbox and the daemon against config/sandbox.yaml; see README.
demo: $(STAMP)
	$(PY) -m rotator.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check rotator tests bench
	$(VENV)/bin/ruff format --check rotator tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: system-deps check unit

bench: $(STAMP)
	$(PY) bench/fanout.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache

## The container image (deploy/Containerfile) with podman, and its SBOM in dist/. PYTHON_IMAGE=...
## builds on another base (e.g. the local test base: make image-test-base, then
## make image PYTHON_IMAGE=localhost/rotator-test-base:3.11-bookworm).
IMAGE        ?= localhost/rotator:$(VERSION)
PYTHON_IMAGE ?=
SBOM         ?= dist/rotator-$(VERSION).cdx.json
VERSION      := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REVISION     := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# chroot isolation and the host network: the build runs where nested containers are not allowed
# (CI, this project's machines); they are harmless elsewhere.
BUILD_FLAGS  ?= --isolation chroot --network host

image:
	podman build $(BUILD_FLAGS) --layers -f deploy/Containerfile -t $(IMAGE) \
	  $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) \
	  --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) .
	mkdir -p $(dir $(SBOM))
	ctr=$$(podman create $(IMAGE)) && podman cp $$ctr:/opt/rotator/sbom.cdx.json $(SBOM); \
	  rc=$$?; podman rm -f $$ctr >/dev/null; exit $$rc
	@echo "image $(IMAGE) (revision $(REVISION)); SBOM $(SBOM)"

## The Python base the image tests build on, bootstrapped once from Debian packages (root, debootstrap).
image-test-base:
	bash .ci/image-test-base

## Pins the image's dependencies with hashes (pip-tools, Python 3.11 like the image): runtime ones from
## pyproject.toml into deploy/requirements.lock, build tools into deploy/build-tools.lock. Pins that
## still fit are kept; make lock LOCK_FLAGS=--upgrade moves everything to the newest releases.
LOCK_FLAGS ?=
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --generate-hashes \
	--strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links $(LOCK_FLAGS)
lock: $(STAMP)
	$(PY) -m pip install -q 'pip-tools>=7.4'
	$(PIP_COMPILE) --output-file deploy/requirements.lock pyproject.toml
	$(PIP_COMPILE) --output-file deploy/build-tools.lock deploy/build-tools.in

## The current digest of the production base's tag (needs docker.io); paste it into deploy/Containerfile.
base-digest:
	skopeo inspect --raw docker://docker.io/library/python:3.11-slim-bookworm | sha256sum | sed 's/^/sha256:/; s/ .*//'
