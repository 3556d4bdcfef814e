# The two commands a newcomer needs; each one sets itself up first (idempotent, CPU torch pinned).
.PHONY: setup demo test lint

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/anomalyscout demo

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check AnomalyScoutLib AnomalyScout Testing benchmarks
