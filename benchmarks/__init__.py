"""AnomalyScout benchmark harness: one command per track, results in ``benchmarks/results/*.json``.

Run ``python -m benchmarks.run --track phantom|real|segfail|speed|all`` from the repository root; the
summary with plots is ``docs/benchmarks.md``. Nothing here is a test with thresholds: numbers are
reported as measured.
"""
