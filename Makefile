# Developer shortcuts; each target calls a script that works on its own too.
SECONDS ?= 30

.PHONY: install check format test test-slow wheel fuzz bench bench-transport bench-engine lint clean

install:            ## system packages (if missing), .venv, editable cmlp
	scripts/setup_env.sh

check:              ## the gates: ruff, ruff format, mypy, cython-lint, shellcheck, fast tests
	scripts/check.sh

format:             ## apply import order + ruff format (the integrator's one-off pass)
	.venv/bin/ruff check --select I001 --fix .
	.venv/bin/ruff format .

test:               ## the test suite, fast tier then slow tier (the README's command, CI)
	scripts/test.sh

test-slow:          ## only the slow tier: wheel, sustained load, torch parity, fuzz runs
	scripts/test.sh -m slow

wheel:              ## manylinux wheel (libsodium and OpenBLAS bundled) + sdist into wheels/
	scripts/build_wheel.sh

fuzz:               ## every atheris harness for SECONDS seconds each
	scripts/fuzz.sh $(SECONDS)

bench:              ## pipeline table: 1/2/3 stages, direct and relayed
	scripts/bench.sh

bench-transport:
	.venv/bin/python bench/bench_transport.py

bench-engine:
	.venv/bin/python bench/bench_engine.py

lint:               ## the static gates only (no tests)
	scripts/check.sh --no-tests

clean:
	rm -rf build dist *.egg-info cmlp/*.so pyx/*.c pyx/*.html .pytest_cache
