# Two commands set everything up on a fresh Debian/Ubuntu machine:
#   make demo   - the seed 000 walkthrough against throwaway local servers
#   make test   - lint, type check and the whole test suite against real servers
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup postgres lint bench clean

$(VENV)/.installed: pyproject.toml scripts/bootstrap-venv.sh
	scripts/bootstrap-venv.sh $(VENV)
	touch $@

postgres:
	@scripts/ensure-postgres.sh

setup: $(VENV)/.installed postgres

demo: setup
	$(BIN)/pgcleave demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
