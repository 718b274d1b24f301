# Developer shortcuts; each target calls a script that works on its own too.
SECONDS ?= 30

.PHONY: install test wheel fuzz bench bench-transport bench-engine lint clean

install:            ## system packages (if missing), .venv, editable cmlp
	scripts/setup_env.sh

test:               ## the test suite (the README's command)
	scripts/test.sh

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

lint:
	shellcheck -x scripts/*.sh

clean:
	rm -rf build dist *.egg-info cmlp/*.so pyx/*.c pyx/*.html .pytest_cache
