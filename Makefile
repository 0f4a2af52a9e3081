# Two commands do all set-up on a fresh machine: `make demo` and `make test` (both create .venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup demo test test-all bench dist docs docs-serve fashion-mnist test-tools clean

setup: $(STAMP)

# Re-installs only when pyproject.toml or constraints.txt changed: a no-op in well under a second otherwise.
# constraints.txt pins the exact versions (pyproject.toml declares ranges), so demo and tests are reproducible.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
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

# Programs some tests drive for real: headless Chromium (the report's browser test, tests/test_tracking.py) and
# zsh (the completion script, tests/test_cli.py). Each test skips, saying why, when its program is missing.
TEST_TOOLS := chromium zsh
test-tools:
	@missing=""; for t in $(TEST_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's$$missing (for tests that drive them)"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null 2>&1)) || \
	  echo "apt-get could not install$$missing; the tests that need them will be skipped"; \
	else echo "apt-get not usable here; tests that need$$missing will be skipped"; fi

demo: setup fashion-mnist
	$(BIN)/python -m dogcat demo

# two workers (pytest-xdist), one torch thread each (tests/conftest.py): 1.5-2x faster on two cores than one
# process whose torch threads wait on each other; `make test-all` runs everything in one process
test: setup test-tools
	$(BIN)/python -m pytest -q -m "not slow" -n 2

test-all: setup fashion-mnist test-tools
	$(BIN)/python -m pytest -q

bench: setup
	@ls bench/*.py >/dev/null 2>&1 || { echo "no benchmarks in bench/ yet"; exit 0; }; \
	for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The sdist and wheel PyPI gets (.github/workflows/release.yml does the same on a v* tag), checked by twine.
dist: setup
	rm -rf dist
	$(BIN)/python -m build
	$(BIN)/python -m twine check --strict dist/*

# The documentation site (mkdocs.yml, docs/*.md) into site/, strictly: a broken link or a page missing from the
# nav fails the build, as in tests/test_docs.py (which `make test` runs). docs-serve: the same, live, on :8000.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs serve --strict

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache
