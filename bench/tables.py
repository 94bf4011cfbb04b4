"""The one way the benchmarks print their results: a rich table from column specs and rows of cells, so
that every script's table looks alike and none carries its own copy of the table code.

A row is a sequence of cells (strings), or `SECTION` for a rule between groups of rows. Latency rows
(`latency_row`) format a `bench.common.summarise` result the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

SECTION = None
"""A row that is a section break (`Table.add_section`)."""

Row = Sequence[str] | None


@dataclass(frozen=True)
class Column:
    """One column: its header, which side its cells align to, and whether they may wrap."""

    header: str
    justify: Literal["left", "right"] = "right"
    no_wrap: bool = False


def left(header: str, no_wrap: bool = False) -> Column:
    """A column of words (names, notes): aligned left."""
    return Column(header, "left", no_wrap)


def right(header: str) -> Column:
    """A column of figures: aligned right, so that the digits line up."""
    return Column(header, "right")


def print_table(title: str | None, columns: Sequence[Column], rows: Iterable[Row], width: int) -> Console:
    """Print `rows` under `columns` on a console `width` characters wide; returns that console, for the
    lines a script prints after its table."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column.header, justify=column.justify, no_wrap=column.no_wrap)
    for row in rows:
        if row is SECTION:
            table.add_section()
        else:
            table.add_row(*row)
    console = Console(width=width)
    console.print(table)
    return console


LATENCY_COLUMNS = (
    left("measurement"),
    right("n"),
    right("p50 ms"),
    right("p99 ms"),
    right("mean ms"),
    right("max ms"),
    left("notes"),
)
"""The columns of `latency_row`: a name, a latency summary, and a note."""


def latency_row(name: str, summary: dict[str, Any], notes: str = "") -> list[str]:
    """A row under `LATENCY_COLUMNS`; a figure the summary lacks (an empty one has only `n`) stays blank."""
    figures = [f"{summary[key]:.3f}" if key in summary else "" for key in ("p50_ms", "p99_ms", "mean_ms", "max_ms")]
    return [name, str(summary.get("n", "")), *figures, notes]


def note_row(name: str, n: str, notes: str, p50: str = "") -> list[str]:
    """A row under `LATENCY_COLUMNS` that is not a latency summary: a count, maybe one figure, a note."""
    return [name, n, p50, "", "", "", notes]


def machine_title(what: str, report: dict[str, Any]) -> str:
    """The title "ray-agent-runtime <what> (N CPUs, Python x, Ray y[, quick])": where and how a run was made."""
    m = report["machine"]
    quick = ", quick" if report["config"]["quick"] else ""
    return f"ray-agent-runtime {what} ({m['cpu_count']} CPUs, Python {m['python']}, Ray {m['ray_version']}{quick})"


def print_flagged_logs(console: Console, logs: dict[str, Any], samples: int) -> None:
    """The Ray log lines `bench.common.scan_logs` flagged, counted, and the first `samples` of them."""
    if not logs.get("scanned"):
        return
    console.print(f"flagged log lines: {logs['counts'] or 'none'} (benign, not shown: {logs['benign_counts']})")
    for sample in logs["samples"][:samples]:
        console.print(f"  {sample['count']:>4} x {sample['line']}", markup=False, highlight=False)
