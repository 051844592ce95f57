"""Logging set-up shared by every jobqueue process.

Records are JSON lines when the output is not a terminal (a container, a file) and
readable lines when it is. Structured fields travel in ``extra=``; records about a job
carry ``job_id`` and ``queue``, built by ``job_fields`` so the keys are the same
everywhere.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


def job_fields(job_id: object, queue: str, **more: Any) -> dict[str, Any]:
    """The structured fields of a record about one job, for ``extra=``."""
    return {"job_id": str(job_id), "queue": queue, **more}


# What kopf puts on its records besides the message: its whole settings object (dropped,
# it would swamp every line) and a reference to the resource (kept, as "object").
_KOPF_ATTRIBUTES = frozenset({"settings", "k8s_skip", "k8s_ref"})


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {
        k: v
        for k, v in record.__dict__.items()
        if k not in _STANDARD_ATTRIBUTES and k not in _KOPF_ATTRIBUTES
    }
    reference = record.__dict__.get("k8s_ref")
    if isinstance(reference, dict) and reference.get("name"):
        where = f"{reference.get('namespace')}/" if reference.get("namespace") else ""
        fields["object"] = f"{reference.get('kind', '')} {where}{reference['name']}".strip()
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extra_fields(record),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class TerminalFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={v}" for k, v in _extra_fields(record).items())
        return f"{line} {fields}" if fields else line


# The values of the ``logging.format`` setting: "auto" is JSON unless writing to a terminal.
FORMATS: dict[str, bool | None] = {"auto": None, "json": True, "text": False}


def configure(
    level: str = "INFO",
    *,
    stream: TextIO | None = None,
    json_lines: bool | None = None,
    format: str | None = None,
) -> None:
    """Send the root logger to ``stream`` (stderr) as JSON or readable lines.

    ``format`` is the ``logging.format`` setting; ``json_lines`` says it directly. Either
    defaults to "not a terminal", which is what a container gives.
    """
    stream = stream or sys.stderr
    if format is not None:
        json_lines = FORMATS[format]
    if json_lines is None:
        json_lines = not stream.isatty()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else TerminalFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
