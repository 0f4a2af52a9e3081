# Two commands do all set-up on a fresh machine: `make demo` and `make test` (both create .venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup demo test test-all bench fashion-mnist chromium clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changed: a no-op in well under a second otherwise.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The demo's data: Debian's package when apt is usable; otherwise dogcat falls back to torchvision's
# download at run time, and says how to get the files when that fails too.
fashion-mnist:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
	  echo "apt-get could not install dataset-fashion-mnist; dogcat will try torchvision's download"; \
	else echo "apt-get not usable here; dogcat will try torchvision's download of Fashion-MNIST"; fi

# Headless Chromium for the report's browser test (tests/test_tracking.py); it skips, saying why, without it.
chromium:
	@if command -v chromium >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's chromium (the report's browser test)"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1)) || \
	  echo "apt-get could not install chromium; the report's browser test will be skipped"; \
	else echo "apt-get not usable here; the report's browser test will be skipped"; fi

demo: setup fashion-mnist
	$(BIN)/python -m dogcat.demo

test: setup chromium
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup fashion-mnist chromium
	$(BIN)/python -m pytest -q

bench: setup
	@ls bench/*.py >/dev/null 2>&1 || { echo "no benchmarks in bench/ yet"; exit 0; }; \
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
