"""A job's events as the timeline reads them: the question's audit trail in words.

Who claimed, released, took over, answered or escalated a question, until when, and from which
replica (``host:pid``); any other event is its data in one short line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["describe", "summary"]

SUMMARY_CHARS = 120


def summary(data: Any) -> str:
    """An event's data in one short line (its details are on the job)."""
    if not data:
        return ""
    text = json.dumps(data, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def _time(value: Any) -> str:
    """An ISO timestamp as ``HH:MM:SS`` (UTC), as the timeline shows times."""
    text = str(value or "")
    return text[11:19] if len(text) >= 19 and text[10] == "T" else text or "?"


def _for(assignee: Any) -> str:
    return str(assignee) if assignee else "anyone"


def _asked(d: Mapping[str, Any]) -> str:
    text = f"asked “{d.get('text') or d.get('key')}”"
    return f"{text} for {d['assignee']}" if d.get("assignee") else text


def _claimed(d: Mapping[str, Any]) -> str:
    verb = "renewed by" if d.get("renewed") else "claimed by"
    return f"{verb} {d.get('by')} until {_time(d.get('until'))}"


def _taken_over(d: Mapping[str, Any]) -> str:
    return f"taken over by {d.get('by')} from {d.get('from')} until {_time(d.get('until'))}"


def _answered(d: Mapping[str, Any]) -> str:
    if d.get("timed_out"):
        return "answered with its default at the deadline"
    return f"answered by {d.get('answered_by') or 'someone unnamed'}"


def _escalated(d: Mapping[str, Any]) -> str:
    return (
        f"escalated from {_for(d.get('from'))} to {_for(d.get('to'))},"
        f" new deadline {_time(d.get('deadline'))}"
    )


def _ended(verb: str) -> Callable[[Mapping[str, Any]], str | None]:
    def words(d: Mapping[str, Any]) -> str | None:
        if d.get("timed_out"):
            return f"{verb}: no answer before the deadline"
        if d.get("cancelled_by"):
            return f"{verb} by {d['cancelled_by']}"
        return None

    return words


_WORDS: dict[str, Callable[[Mapping[str, Any]], str | None]] = {
    "asked": _asked,
    "question_claimed": _claimed,
    "question_taken_over": _taken_over,
    "question_released": lambda d: f"released by {d.get('by')}",
    "answered": _answered,
    "escalated": _escalated,
    "failed": _ended("failed"),
    "cancelled": _ended("cancelled"),
    "cancel_requested": _ended("cancel requested"),
}


def describe(event_type: str, data: Any) -> str:
    """The event in words when it is one of the audit trail's (with ``from host:pid``), else
    its data in one short line."""
    words = _WORDS.get(event_type)
    sentence = words(data) if words is not None and isinstance(data, Mapping) else None
    if sentence is None:
        return summary(data)
    replica = data.get("replica")
    return f"{sentence} (from {replica})" if replica else sentence
