# prospect: every target sets itself up from a machine with only Python 3.11+ and make.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard protos/prospect/v1/*.proto)
STAMP_INSTALL := $(VENV)/.stamp-install
STAMP_PROTO := prospect/v1/.stamp-proto

.PHONY: setup run up test bench proto lint lock k8s-validate image clean

setup: $(STAMP_INSTALL) $(STAMP_PROTO)

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "prospect needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Every package exactly as locked, hashes checked (requirements/dev.lock; `make lock`
# writes it from pyproject.toml), then the project itself. compat mode puts the project
# root on sys.path, so the generated `prospect` package (made after install, by `make
# proto`) is importable without reinstalling.
$(STAMP_INSTALL): pyproject.toml requirements/dev.lock | $(PY)
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(PY) -m pip install --quiet --no-deps -e . --config-settings editable_mode=compat
	@touch $@

# Write the lock files again from pyproject.toml (versions kept where they still fit;
# `make lock UPGRADE=1` takes the newest): the services' (runtime.lock, the image) and
# everything the development set-up installs (dev.lock).
LOCK := $(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --no-header $(if $(UPGRADE),--upgrade)
lock: setup
	$(LOCK) -o requirements/runtime.lock
	$(LOCK) --extra dev -o requirements/dev.lock

# Where googleapis-common-protos keeps google/api/*.proto (the http annotations).
export GOOGLEAPIS_PROTOS := import google.api.annotations_pb2 as m, pathlib; print(pathlib.Path(m.__file__).parents[2])
$(STAMP_PROTO): $(PROTOS) $(STAMP_INSTALL)
	@rm -rf prospect && mkdir -p prospect/v1
	$(PY) -m grpc_tools.protoc -I protos -I "$$($(PY) -c "$$GOOGLEAPIS_PROTOS")" \
		--python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	@touch prospect/__init__.py prospect/v1/__init__.py prospect/py.typed
	@touch $@

proto:
	@rm -f $(STAMP_PROTO)
	@$(MAKE) --no-print-directory $(STAMP_PROTO)

run: setup
	$(PY) -m services.cli.demo

up: setup
	$(PY) -m services.cli.up

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench

lint: setup
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/ruff format --check services tests bench
	$(VENV)/bin/mypy

# Render every overlay with kubectl kustomize, validate every object (kubernetes-validate
# --strict, CRDs against tests/k8s/schemas), check the policies, and run the dev overlay's
# containers as local processes through one campaign. Needs kubectl on PATH.
k8s-validate: setup
	$(PY) -m pytest -q tests/k8s $(PYTEST_ARGS)

# The one image of every service, tagged with the project version (what deploy/k8s pins).
IMAGE ?= prospect
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	@command -v docker >/dev/null 2>&1 || { echo "make image: docker is not installed on this machine; nothing was built" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make image: no Docker engine answers here (docker info failed); nothing was built" >&2; exit 1; }
	docker build -t $(IMAGE):$(IMAGE_TAG) .

clean:
	rm -rf $(VENV) prospect data .mypy_cache .ruff_cache .pytest_cache
