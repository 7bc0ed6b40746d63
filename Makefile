# Switchboard — every target sets up what it needs; set-up is pinned and idempotent.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml requirements.lock clients/python/pyproject.toml bench/tokenbench/pyproject.toml | sha256sum | cut -c1-12)
NPM_STAMP := runtimes/node_modules/.stamp-$(shell cat runtimes/package.json runtimes/package-lock.json | sha256sum | cut -c1-12)
MCP_TOOLS := tools/mcp-conformance
MCP_STAMP := $(MCP_TOOLS)/node_modules/.stamp-$(shell cat $(MCP_TOOLS)/package.json $(MCP_TOOLS)/package-lock.json | sha256sum | cut -c1-12)
PYTEST_ARGS ?=
STRESS_BURNERS ?= 2

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-12s %s\n", $$1, $$2}'

setup: $(STAMP) $(NPM_STAMP) $(MCP_STAMP) ## Create .venv, install pinned Python deps, Deno (PyPI), Pyodide and the MCP test clients (npm)

$(STAMP): pyproject.toml requirements.lock clients/python/pyproject.toml bench/tokenbench/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade 'pip>=24'
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e . -e clients/python -e bench/tokenbench
	chmod +x $$($(BIN)/python -c 'import deno; print(deno.find_deno_bin())')
	rm -f $(VENV)/.stamp-* && touch $@

$(NPM_STAMP): runtimes/package.json runtimes/package-lock.json
	cd runtimes && npm ci --no-audit --no-fund --loglevel=error
	rm -f runtimes/node_modules/.stamp-* && touch $@

$(MCP_STAMP): $(MCP_TOOLS)/package.json $(MCP_TOOLS)/package-lock.json
	cd $(MCP_TOOLS) && npm ci --no-audit --no-fund --loglevel=error
	rm -f $(MCP_TOOLS)/node_modules/.stamp-* && touch $@

proto: $(STAMP) ## Regenerate the gRPC stubs from proto/ (into gateway/_proto and clients/python/switchboard_client/_proto)
	$(BIN)/python tools/gen_proto.py

test: setup ## Run lint, type checks, policy tests and the test suite
	$(BIN)/ruff check gateway tests bench examples tools clients
	$(BIN)/mypy
	$(BIN)/switchboard policy check
	$(BIN)/switchboard policy test
	helm/sync-policies.sh --check
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

# Contention: the suite while STRESS_BURNERS busy loops compete for the CPUs (as on a shared,
# loaded machine). The burners are this recipe's children and are killed on every exit path:
# pass, failure, Ctrl-C (the INT trap) or TERM.
test-stress: setup ## The test suite under CPU contention: STRESS_BURNERS (2) `yes` burners, always killed after
	@pids=(); \
	cleanup() { [ $${#pids[@]} -eq 0 ] || { kill $${pids[@]} 2>/dev/null; wait $${pids[@]} 2>/dev/null; }; pids=(); }; \
	trap cleanup EXIT; trap 'exit 130' INT; trap 'exit 143' TERM HUP; \
	for _ in $$(seq $(STRESS_BURNERS)); do yes > /dev/null & pids+=($$!); done; \
	echo "test-stress: $(STRESS_BURNERS) CPU burners (pids $${pids[*]}); load average $$(cut -d' ' -f1-3 /proc/loadavg)"; \
	rc=0; $(BIN)/pytest -n 2 $(PYTEST_ARGS) || rc=$$?; \
	echo "test-stress: load average $$(cut -d' ' -f1-3 /proc/loadavg) at the end; pytest exit $$rc"; \
	exit $$rc

demo: setup ## Start the demo backends and the gateway, run the example agent, stop everything
	$(BIN)/switchboard demo

serve: setup ## Run the gateway on the embedded defaults (127.0.0.1:50051)
	$(BIN)/switchboard serve

lint: setup ## ruff + mypy --strict
	$(BIN)/ruff check gateway tests bench examples tools clients
	$(BIN)/mypy

bench: setup ## Run the benchmarks and print their tables (see docs/benchmarks.md)
	$(BIN)/switchboard bench

soak: setup ## Several minutes of mixed load; fails on errors, RSS growth or leaked Deno processes
	$(BIN)/python bench/soak.py

lock: ## Re-resolve the Python dependency pins into requirements.lock
	rm -rf /tmp/sb-lock && $(PY) -m venv /tmp/sb-lock && /tmp/sb-lock/bin/pip install -q -e '.[dev]'
	( echo '# Pinned dependency set for the venv (make setup). Regenerate with: make lock'; /tmp/sb-lock/bin/pip freeze --exclude-editable | grep -v '^-e' ) > requirements.lock

# Peers for bench/peers.py, pinned, each in a directory of its own (never needed by setup/test/CI).
# ContextForge 1.1.0 needs Python >= 3.12: PEERS_PY312 (default: a working python3.12 on PATH, else pyenv's).
PEERS := .cache/peers
CONTEXTFORGE_PIN := mcp-contextforge-gateway==1.1.0
SMOLAGENTS_PIN := smolagents==1.26.0
PEERS_PY312 ?= $(shell for p in $$(command -v python3.12) $$(ls -d $$HOME/.pyenv/versions/3.12*/bin/python 2>/dev/null); do $$p -c '' 2>/dev/null && { echo $$p; break; }; done)
CF_STAMP := $(PEERS)/contextforge-venv/.stamp-$(shell echo '$(CONTEXTFORGE_PIN)' | sha256sum | cut -c1-12)
SMOL_STAMP := $(PEERS)/smolagents-venv/.stamp-$(shell echo '$(SMOLAGENTS_PIN)' | sha256sum | cut -c1-12)
PEERS_NPM_STAMP := bench/peers/node_modules/.stamp-$(shell cat bench/peers/package.json bench/peers/package-lock.json | sha256sum | cut -c1-12)

bench-peers: setup $(CF_STAMP) $(SMOL_STAMP) $(PEERS_NPM_STAMP) ## Install the peers bench/peers.py compares (ContextForge, smolagents, workerd + codemode), pinned
	@echo "peers installed; run: $(BIN)/python bench/peers.py --quick"

$(CF_STAMP):
	@test -n "$(PEERS_PY312)" || { echo "bench-peers: ContextForge needs Python >= 3.12; set PEERS_PY312=/path/to/python3.12"; exit 1; }
	rm -rf $(PEERS)/contextforge-venv && $(PEERS_PY312) -m venv $(PEERS)/contextforge-venv
	$(PEERS)/contextforge-venv/bin/python -m pip install -q '$(CONTEXTFORGE_PIN)'
	touch $@

$(SMOL_STAMP):
	rm -rf $(PEERS)/smolagents-venv && $(PY) -m venv $(PEERS)/smolagents-venv
	$(PEERS)/smolagents-venv/bin/python -m pip install -q '$(SMOLAGENTS_PIN)'
	touch $@

$(PEERS_NPM_STAMP): bench/peers/package.json bench/peers/package-lock.json
	cd bench/peers && npm ci --no-audit --no-fund --loglevel=error
	rm -f bench/peers/node_modules/.stamp-* && touch $@

clean: ## Remove the venv, node_modules and caches
	rm -rf $(VENV) runtimes/node_modules $(MCP_TOOLS)/node_modules $(PEERS) bench/peers/node_modules .pytest_cache .mypy_cache .ruff_cache

.PHONY: help setup proto test test-stress demo serve lint bench bench-peers soak lock clean
