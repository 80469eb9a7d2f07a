"""The throughput benchmark's harness, the same for every system: ``scenarios`` (enqueue, drain,
submit + work, jobkeeper's latencies), ``processes`` (worker processes and their CPU time),
``profile`` (a profiled worker's stats) and ``report`` (method, tables, verdict). The systems are
adapters in ``systems/``; ``bench_throughput.py`` runs the scenarios in order."""
