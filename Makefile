# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
APT    := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)

.PHONY: demo test lint typecheck bench system-deps postgres bubblewrap clean contracts

# mermaid-parser-py ships Mermaid's own parser as one bundle that plain Node runs (the report tests check
# the Mermaid request map with it); --no-deps: its Python bridge (pythonmonkey) is not used.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,examples]'
	$(PY) -m pip install -q --no-deps mermaid-parser-py==0.0.4
	touch $(STAMP)

# The example shop's services run a plain `python` found on PATH, as a team's would: the venv's, here.
ACTIVATED := PATH="$(abspath $(VENV))/bin:$$PATH"

demo: $(STAMP) postgres bubblewrap
	$(ACTIVATED) $(VENV)/bin/loopgate demo

# The example shop keeps payments in PostgreSQL; tests use the real server too.
postgres:
	@scripts/ensure-postgres

# Builds, forks and suites run confined by bubblewrap (docs/security.md); install it where it is missing.
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || { \
	  echo "installing bubblewrap (Debian package) to confine agent code"; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq bubblewrap >/dev/null; }

# Headless Chromium renders the HTML evidence page in tests; install it where it is missing.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package) for the HTML report tests"; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq chromium >/dev/null; }

# The GitHub fake validates against GitHub's and Octokit's published contracts: npm packages pinned by
# version in tests/contracts/package.json and by sha512 in its package-lock.json, which `npm ci` checks.
CONTRACTS := tests/contracts
CONTRACTS_STAMP := $(CONTRACTS)/node_modules/.installed

contracts: $(CONTRACTS_STAMP)

$(CONTRACTS_STAMP): $(CONTRACTS)/package.json $(CONTRACTS)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing nodejs and npm (Debian packages) for the GitHub contract files"; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq nodejs npm >/dev/null; }
	cd $(CONTRACTS) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# Two workers, a test file each at a time (module fixtures stay whole): most of a test's time is spent
# waiting on the processes it starts, so two files overlap on two cores (15.5 min → 10.5 min measured);
# three overloaded a 2-core machine into timeouts.
TEST_WORKERS ?= 2

test: $(STAMP) system-deps postgres bubblewrap contracts
	$(VENV)/bin/ruff check bot action tests bench examples
	$(VENV)/bin/mypy
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check bot action tests bench examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(ACTIVATED) $(PY) -m bench.sandbox_vs_copy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(CONTRACTS)/node_modules
