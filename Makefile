# wsm: the two commands of the quick start are `make run` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := var/.installed

.PHONY: run test install lint typecheck docs bench bench-gateway bench-worker bench-agent bench-e2e mutate-lua clean

# Install the package (editable) and what the tests need, once per change of pyproject.toml.
$(STAMP): pyproject.toml
	@mkdir -p var
	$(PIP) install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PYTHON) -m wsm dev

# Two phases: the tests that may run side by side, in two processes (each test file whole in one
# process, so a file's fixtures are set up once), then the `serial` ones alone (README's default
# ports). `python3 -m pytest` alone still runs everything in one process.
test: $(STAMP)
	$(PYTHON) -m pytest -n 2 --dist loadfile -m "not serial"
	$(PYTHON) -m pytest -m serial

lint: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

typecheck: $(STAMP)
	$(PYTHON) -m mypy

# README's configuration table and .env.example are generated from shared/settings.py.
docs: $(STAMP)
	$(PYTHON) -m wsm config --update-docs

bench: bench-gateway bench-worker bench-agent bench-e2e

bench-gateway: $(STAMP)
	$(PYTHON) bench/gateway_bench.py

bench-worker: $(STAMP)
	$(PYTHON) bench/worker_bench.py

bench-agent: $(STAMP)
	$(PYTHON) bench/agent_bench.py

bench-e2e: $(STAMP)
	$(PYTHON) bench/e2e_bench.py

# Mutate the Lua scripts' guards (fence, state, head) one at a time, in a copy of the tree, and
# run each script's tests against each mutant (docs/testing.md).
mutate-lua: $(STAMP)
	$(PYTHON) tests/mutation/lua_guards.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
