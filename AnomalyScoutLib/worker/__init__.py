"""The scoring worker: ``python -m AnomalyScoutLib.worker CT --out DIR [options of anomalyscout score]``.

It runs in a process of its own, started by a GUI, and speaks the JSON-lines protocol of
:mod:`AnomalyScoutLib.worker.protocol` (``docs/worker-protocol.md``).
"""
