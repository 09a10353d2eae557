# Two commands set everything up on a fresh Debian/Ubuntu machine:
#   make demo   - the seed 000 walkthrough against throwaway local servers
#   make test   - lint, type check, the whole test suite on PostgreSQL $(PG_FULL) and, beside it,
#                 the version-sensitive tests on $(PG_NEW) (18 comes with `pgcleave[server]`)
VENV := .venv
BIN := $(VENV)/bin
# -n 2: two workers, each with its own throwaway servers (the tests wait on servers more than
# they compute: 14 min become 7 on the 2-core CI machine)
PYTEST := $(BIN)/pytest -q -p no:cacheprovider -n 2 --durations=15
PG_FULL ?= 15
PG_NEW ?= 18
# Run again on $(PG_NEW): the operations whose SQL or catalog reading depends on the version
# (partition in place and by copy, carve, maintain/retention/archive, keys, move, alter, the
# catalog). Tests that start no server (marker nodb) run once, in the $(PG_FULL) run; the golden
# SQL tier is recorded on 15 and skips itself elsewhere.
PG_NEW_TESTS := tests/test_partition.py tests/test_copy.py tests/test_carve.py \
	tests/test_maintain.py tests/test_retention.py tests/test_keys.py tests/test_move.py \
	tests/test_alter.py tests/test_catalog.py tests/test_identity.py tests/test_fail_safe.py \
	tests/test_least_privilege.py tests/test_copy_names.py tests/test_windows.py \
	tests/test_hash_list.py tests/test_advise.py tests/test_inbound_fks.py \
	tests/test_reslice.py tests/test_reslice_default.py tests/test_reslice_branch.py \
	tests/test_carve_jobs.py tests/test_move_jobs.py tests/test_span_checks.py

.PHONY: demo test setup postgres lint bench clean

$(VENV)/.installed: pyproject.toml scripts/bootstrap-venv.sh
	scripts/bootstrap-venv.sh $(VENV)
	touch $@

postgres: $(VENV)/.installed
	@scripts/ensure-postgres.sh $(VENV)

setup: $(VENV)/.installed postgres

demo: setup
	$(BIN)/pgcleave demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: lint
	@scripts/ensure-postgres.sh $(VENV) $(PG_FULL) $(PG_NEW)
	@scripts/ensure-chromium.sh
	@scripts/run-tests.sh "$(PYTEST)" $(PG_FULL) $(PG_NEW) $(PG_NEW_TESTS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
