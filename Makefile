# The two README commands: `make demo` and `make test`. Both set up what is missing first.
# MODEL=/path/to/checkpoint runs the demo with a real checkpoint instead of the tiny one.
# PYTEST_ARGS="-k referring" passes arguments to pytest.
MODEL ?=
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/run_in_env.sh python scripts/demo.py $(if $(MODEL),--model "$(MODEL)")

test: setup
	@bash scripts/run_in_env.sh python -m pytest $(PYTEST_ARGS)

bench: setup
	@bash scripts/run_in_env.sh chatspot-bench --preset small
	@bash scripts/run_in_env.sh python scripts/bench_node.py

clean:
	rm -rf build install log
