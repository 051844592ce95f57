"""The Python job handler that the worker of the chart's operator test registers."""

from __future__ import annotations


def send_email(to: str) -> str:
    """Stands in for the example queue's real work (it allows Python jobs only)."""
    return f"queued for {to}"
