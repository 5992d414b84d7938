# maskx developer commands. `make test` and `make demo` work on a fresh machine that has
# nothing but Python 3.11+ (and, for the system tools the tests drive, Debian's apt).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR := artifacts/demo
DEMO_MODEL := $(DEMO_DIR)/model.onnx
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup system-deps docker-engine locks test test-docker test-all mutation lint format demo demo-model bench clean

## setup: create .venv/ with the train, serve and dev extras (editable install)
setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,serve,dev]'
	touch $(STAMP)

## system-deps: Debian tools the tests drive (Prometheus, promtool, Docker, docker-compose, debootstrap,
## shellcheck, chromium, wrk) and the WordNet 3.0 database the class-table test reads (wordnet-base)
system-deps:
	@missing=""; \
	for t in prometheus:prometheus promtool:prometheus docker-compose:docker-compose \
	         dockerd:docker.io debootstrap:debootstrap \
	         shellcheck:shellcheck chromium:chromium wrk:wrk; do \
	  cmd=$${t%%:*}; pkg=$${t##*:}; command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	[ -f /usr/share/wordnet/index.noun ] || missing="$$missing wordnet-base"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## docker-engine: start a Docker engine if none answers and make the local Debian base image if
## missing (root only; where neither can be done, the image tests skip and say why)
docker-engine:
	@if reason=$$(bash deploy/docker-engine.sh); then \
	  if [ "$$(id -u)" = 0 ] && command -v debootstrap >/dev/null 2>&1; then \
	    nice -n 15 bash deploy/local-base.sh; \
	  fi; \
	else echo "no Docker engine: $$reason (the image tests will skip)"; fi

## test: set up, then lint and run the default test suite (not the `slow` tests; the serve-cpu
## container test included)
test: setup system-deps lint docker-engine
	$(BIN)/pytest

## test-docker: the tests that build and run images and the compose stack on a real engine
test-docker: setup system-deps docker-engine
	$(BIN)/pytest -m docker

## test-all: every test, the slow ones included
test-all: setup system-deps docker-engine
	$(BIN)/pytest -m ""

## mutation: mutation testing (mutmut) of the modules where a silent error costs users most, each
## with its own tests (docs/testing.md); not part of `make test`. MODULE=service/postprocess.py runs
## one module; SAMPLE=N runs N mutants per module spread evenly (the same N picks the same ones;
## default: each module's own count, under an hour in all), SAMPLE=all every mutant (hours).
## Results: artifacts/mutation/<module>/score.json
MODULE ?=
SAMPLE ?=
MUTMUT_VERSION := 3.8.1
mutation: setup
	$(BIN)/python -m pip install --quiet mutmut==$(MUTMUT_VERSION)
	nice -n 10 $(BIN)/python -m tests.mutation $(if $(MODULE),--module $(MODULE)) $(if $(SAMPLE),--sample $(SAMPLE))

## locks: regenerate deploy/requirements/*.txt from pyproject.toml's extras (needs PyPI)
locks: setup
	$(BIN)/python -m pip install --quiet uv==0.13.9
	$(BIN)/python deploy/locks.py compile

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## demo-model: synthetic data → tiny training → ONNX export, at artifacts/demo/model.onnx
demo-model: $(DEMO_MODEL)

$(DEMO_MODEL): | $(STAMP)
	$(BIN)/maskx synth --out $(DEMO_DIR)/synth --classes 100 --images 1200 --val-images 200 --seed 0 --overwrite
	$(BIN)/maskx train --config configs/tiny_synth.yaml --out $(DEMO_DIR)/run --set data.root=$(DEMO_DIR)/synth
	$(BIN)/maskx export --checkpoint $(DEMO_DIR)/run/checkpoints/model_final.pt --output $(DEMO_MODEL) --name maskx-demo

## demo: build the demo model if needed, then serve it at http://$(HOST):$(PORT)
demo: $(DEMO_MODEL)
	$(BIN)/maskx serve --model $(DEMO_MODEL) --host $(HOST) --port $(PORT)

clean:
	rm -rf $(VENV) artifacts runs .pytest_cache .ruff_cache
