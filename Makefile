# The two README commands: `make demo` and `make test`. Both set up what is missing first.
# MODEL=/path/to/checkpoint runs the demo with that checkpoint instead of the shipped tabletop model.
# PYTEST_ARGS="-k referring" passes arguments to pytest.
# DEMO_ARGS="--seconds 120" passes options to scripts/demo.py (python scripts/demo.py --help lists them).
MODEL ?=
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup demo test bench clean setup-vllm test-vllm setup-compat test-compat

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/run_in_env.sh python scripts/demo.py $(if $(MODEL),--model "$(MODEL)") $(DEMO_ARGS)

test: setup
	@bash scripts/run_in_env.sh python -m pytest $(PYTEST_ARGS)

bench: setup
	@bash scripts/run_in_env.sh chatspot-bench --preset small
	@bash scripts/run_in_env.sh python scripts/bench_node.py

# vLLM (docs/vllm.md): its own venv, made only when asked (about 3 minutes and 3.5 GB the first time).
setup-vllm:
	@nice -n 19 bash scripts/setup_vllm.sh

# The tests against the real engine: one vLLM server for the session (start-up about 90 s on 2 cores).
test-vllm: setup setup-vllm
	@bash scripts/run_in_env.sh nice -n 19 python -m pytest test/vllm -m vllm -rs $(PYTEST_ARGS)

# The oldest supported transformers (requirements/runtime.txt): its own venv, .venv-compat (about a minute
# the first time), and the runtime, generation and parity tests run again under it, from the source tree.
COMPAT_TESTS = test/runtime/test_compat.py test/runtime/test_parity.py test/runtime/test_generation.py \
	test/runtime/test_static_decoder.py test/runtime/test_fidelity.py test/runtime/test_preprocessing.py \
	test/runtime/test_tensor_preprocessing.py
setup-compat:
	@nice -n 10 bash scripts/setup_compat.sh

test-compat: setup-compat
	@ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST PYTHONPATH="$(CURDIR)" .venv-compat/bin/python -m pytest \
		-p no:cacheprovider $(COMPAT_TESTS) $(PYTEST_ARGS)

clean:
	rm -rf build install log
