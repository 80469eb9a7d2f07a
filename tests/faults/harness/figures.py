"""The figures of a full fault run as the markdown table of docs/reliability.md:
``python -m tests.faults.harness.figures FOLDER`` (the folder ``make faults`` wrote)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROWS = (
    ("acknowledged jobs", "acknowledged"),
    ("acknowledgements (idempotent replays included)", "acknowledgements"),
    ("lost", "lost"),
    ("duplicate successes", "duplicate_successes"),
    (
        "lease writes checked / superseded accepted",
        ("lease_writes_checked", "superseded_writes_accepted"),
    ),
    ("claims / double claims", ("claims", "double_claims")),
    ("re-runs (why)", ("reruns", "reruns_by_reason")),
    ("jobs recovered from a killed or stopped worker", "recovered_jobs"),
    (
        "recovery seconds per killed or stopped worker, median / max",
        ("recovery_seconds_median", "recovery_seconds_max"),
    ),
    ("longest expired lease seen running (s)", "lease_overdue_seconds_max"),
    ("answers acknowledged / refused", ("answers_acknowledged", "answers_refused")),
    ("answer/cancel races (outcomes)", ("races", "race_outcomes")),
    ("replica reads (none went back)", "replica_reads"),
    (
        "HTTP requests / 503 / transport errors",
        ("http_requests", "http_503", "http_transport_errors"),
    ),
    ("faults injected", "faults"),
    ("longest Postgres restart (s)", "postgres_restart_seconds_max"),
    ("final status", "final_status"),
    ("seconds (fault phase / total)", ("fault_phase_seconds", "total_seconds")),
)


def _cell(figures: dict[str, Any], key: str | tuple[str, ...]) -> str:
    keys = (key,) if isinstance(key, str) else key
    return " / ".join(_text(figures.get(k)) for k in keys)


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "none"
    return "-" if value is None else str(value)


def _written(path: Path) -> float:
    return path.stat().st_mtime


def table(folder: Path) -> str:
    # in the order they ran
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"), key=_written)]
    if not runs:
        return f"no figures in {folder}"
    header = "| | " + " | ".join(r["scenario"] for r in runs) + " |"
    rule = "|---" * (len(runs) + 1) + "|"
    lines = [header, rule]
    lines.extend(
        f"| {label} | " + " | ".join(_cell(r, key) for r in runs) + " |" for label, key in ROWS
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
