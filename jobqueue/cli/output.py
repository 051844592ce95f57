"""How ``jqctl`` shows what the server returned: a table for people, JSON or YAML for scripts.

JSON and YAML are the proto's own JSON mapping (``MessageToDict`` with the ``.proto``
field names), so a script reads the same field names as the gRPC contract. Two choices
make that mapping friendlier to scripts: fields at their default value are printed
(``exit_code: 0`` is an answer, not a missing key), and 64-bit counts are numbers rather
than strings.

Tables are for eyes only and may change between versions: aligned columns, states in
lower case, ages and durations in short human units (``3m12s``). Anything that is not
the result itself (progress, hints about the next page) goes to stderr, so stdout stays
pipeable in every format.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import yaml
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

FORMATS = ("table", "json", "yaml")

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))  # seconds per unit, largest first


def to_dict(message: Message) -> dict[str, Any]:
    """The proto JSON mapping of ``message``, with the ``.proto`` field names."""
    return MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def format_duration(seconds: float) -> str:
    """``3m12s``, ``2h5m``, ``4d3h``: the two largest units, like kubectl; ``250ms`` below 1 s."""
    if 0 < seconds < 1:
        return f"{round(seconds * 1000)}ms"
    remaining = int(seconds)
    parts: list[str] = []
    for unit, unit_s in _UNITS:
        amount, remaining = divmod(remaining, unit_s)
        if amount or parts:
            parts.append(f"{amount}{unit}")
    significant = [part for part in parts[:2] if not part.startswith("0")]
    return "".join(significant) or "0s"


def is_set(timestamp: timestamp_pb2.Timestamp) -> bool:
    return timestamp.seconds != 0 or timestamp.nanos != 0


def format_age(timestamp: timestamp_pb2.Timestamp, now: datetime.datetime) -> str:
    """How long ago ``timestamp`` was, or ``-`` when it is unset."""
    if not is_set(timestamp):
        return "-"
    elapsed = now - timestamp.ToDatetime(tzinfo=datetime.UTC)
    # Clocks differ between machines; a moment slightly in the future is "just now".
    return format_duration(max(0, int(elapsed.total_seconds())))


def format_time(timestamp: timestamp_pb2.Timestamp, now: datetime.datetime) -> str:
    """``2026-11-01T09:00:00Z (3m12s ago)``, or ``-`` when it is unset."""
    if not is_set(timestamp):
        return "-"
    moment = timestamp.ToDatetime(tzinfo=datetime.UTC).replace(microsecond=0)
    when = moment.isoformat().replace("+00:00", "Z")
    if moment > now:
        return f"{when} (in {format_duration((moment - now).total_seconds())})"
    return f"{when} ({format_age(timestamp, now)} ago)"


def format_span(duration: duration_pb2.Duration) -> str:
    """A protobuf duration in short human units; ``-`` when it is zero (unset)."""
    seconds = duration.ToTimedelta().total_seconds()
    return format_duration(seconds) if seconds > 0 else "-"


def enum_label(name: str, prefix: str) -> str:
    """``JOB_STATE_DEAD_LETTERED`` -> ``dead_lettered``."""
    return name.removeprefix(prefix).lower()


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns aligned on the widest cell, two spaces apart, no trailing blanks."""
    cells = [list(headers), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    lines = (
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    )
    return "\n".join(line.rstrip() for line in lines)


def details(pairs: Iterable[tuple[str, object]]) -> str:
    """``Field:  value`` lines, values aligned; multi-line values are indented under them."""
    rows = [(f"{field}:", str(value)) for field, value in pairs]
    width = max((len(field) for field, _ in rows), default=0)
    indent = "\n" + " " * (width + 2)
    lines = (f"{field.ljust(width)}  {value.replace(chr(10), indent)}" for field, value in rows)
    return "\n".join(line.rstrip() for line in lines)


@dataclass(frozen=True)
class Output:
    """Where and how one invocation prints: the chosen format, the streams and the clock."""

    format: str
    stdout: TextIO
    stderr: TextIO
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)

    def show(self, shown: Message | Sequence[Message], as_table: Callable[[], str]) -> None:
        """The result of a command: one message or a list, in the chosen format."""
        if self.format == "table":
            self._print(as_table())
            return
        data = to_dict(shown) if isinstance(shown, Message) else [to_dict(m) for m in shown]
        self._print(self._serialise(data))

    def show_update(self, message: Message, as_line: Callable[[], str]) -> None:
        """One item of a stream: a line, a one-line JSON object or a YAML document."""
        if self.format == "table":
            self._print(as_line())
        elif self.format == "json":
            self._print(json.dumps(to_dict(message), separators=(",", ":")))
        else:
            self._print(yaml.safe_dump(to_dict(message), explicit_start=True, sort_keys=False))
        self.stdout.flush()

    def note(self, line: str) -> None:
        """A line for the person at the terminal, never for a pipe: stderr."""
        print(line, file=self.stderr, flush=True)

    def _serialise(self, data: object) -> str:
        if self.format == "json":
            return json.dumps(data, indent=2)
        return yaml.safe_dump(data, sort_keys=False)

    def _print(self, text: str) -> None:
        print(text.rstrip("\n"), file=self.stdout)
