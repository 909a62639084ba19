"""A benchmark's output: its tables (printed with rich, written as Markdown) and its JSON record."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table as RichTable

from cfpo.cli.report import markdown_table


@dataclass
class Table:
    title: str
    columns: list[str]
    caption: str = ""
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([c if isinstance(c, str) else fmt(c) for c in cells])

    def rich(self) -> RichTable:
        table = RichTable(title=self.title, caption=self.caption, caption_justify="left")
        for i, column in enumerate(self.columns):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", *markdown_table(self.columns, self.rows, numbers=True)]
        return "\n".join(lines + ([f"\n{self.caption}"] if self.caption else []))


def fmt(value: object) -> str:
    """Numbers with three significant digits (enough for timings that vary by a few per cent run to run)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def publish(
    console: Console, out: Path, stem: str, name: str, result: BaseModel, tables: list[Table], context: dict
) -> Path:
    """Print benchmark ``name``'s tables, write ``<out>/<stem>.json`` (context + result) and ``<out>/<stem>.md``;
    returns the JSON's path."""
    for table in tables:
        console.print(table.rich())
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        **context,
        "result": result.model_dump(mode="json"),
    }
    path = out / f"{stem}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{stem}.md").write_text("\n\n".join(t.markdown() for t in tables) + "\n")
    return path
