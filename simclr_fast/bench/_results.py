"""Result rows: the long-format CSV/JSON Lines files and the printed table.

Every measured number is one row (``metric``, ``value``, ``unit``, with ``median``-style spread
columns where it is a time), tagged with the run, the case and the machine, so results of many
runs, machines and benchmark suites append to the same files and load with one
``pandas.read_csv``. A case that did not produce numbers (out of memory, over the memory cap,
timed out, failed) is one row with ``metric = "status"`` and the reason in ``note``.

Other benchmark suites (``simclr-fast bench dist|augment``) append their rows with
:func:`append_rows`: any keys that are not :data:`COLUMNS` go into the ``extra`` column as JSON.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path

#: Columns of ``results.csv`` (and keys of every ``results.jsonl`` object), in order.
COLUMNS = (
    "timestamp",
    "run_id",
    "suite",
    "provider",
    "n",
    "d",
    "dtype",
    "status",
    "metric",
    "value",
    "unit",
    "q1",
    "q3",
    "min",
    "max",
    "samples",
    "note",
    "temperature",
    "seed",
    "threads",
    "device",
    "device_name",
    "cpu_model",
    "host_cpus",
    "torch",
    "triton",
    "cuda",
    "python",
    "git_commit",
    "command",
    "extra",
)

CSV_NAME = "results.csv"
JSONL_NAME = "results.jsonl"


def normalize_row(row: dict, defaults: dict | None = None) -> dict:
    """``row`` over ``defaults`` with exactly :data:`COLUMNS` as keys; unknown keys go to ``extra``."""
    merged = {**(defaults or {}), **row}
    extra = {k: v for k, v in merged.items() if k not in COLUMNS}
    out = {k: merged.get(k, "") for k in COLUMNS}
    if extra:
        prior = out["extra"]
        if isinstance(prior, str) and prior:
            extra = {**json.loads(prior), **extra}
        out["extra"] = json.dumps(extra, sort_keys=True, default=str)
    for k, v in out.items():
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            out[k] = ""
    return out


def append_rows(
    rows: Iterable[dict], out_dir: str | Path, defaults: dict | None = None
) -> tuple[Path, Path]:
    """Append ``rows`` to ``out_dir/results.csv`` and ``out_dir/results.jsonl``; return both paths.

    The CSV gets its header when it is created. A CSV written by an older version with other
    columns is left alone and the rows go to a new ``results-<n>.csv`` next to it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [normalize_row(r, defaults) for r in rows]
    csv_path = out / CSV_NAME
    i = 1
    while csv_path.exists():
        with csv_path.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header == list(COLUMNS):
            break
        csv_path = out / f"results-{i}.csv"
        i += 1
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    jsonl_path = out / JSONL_NAME
    with jsonl_path.open("a") as f:
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")
    return csv_path, jsonl_path


# ----------------------------------------------------------------------------------------- table


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def render_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """Plain fixed-width table; ``align`` has one ``l``/``r`` per column (default: first l, rest r).

    A row with a single cell after the key columns (status rows) spans the remaining width.
    """
    ncol = len(header)
    align = align or ("l" + "r" * (ncol - 1))
    widths = [len(h) for h in header]
    for r in rows:
        cells = r if len(r) == ncol else r[:-1]  # a status row's key cells count, its text spans
        for i, c in enumerate(cells):
            widths[i] = max(widths[i], len(str(c)))

    def line(cells: list[str]) -> str:
        parts = []
        for i, c in enumerate(cells):
            w = widths[i] if i < len(widths) else 0
            parts.append(str(c).ljust(w) if align[min(i, ncol - 1)] == "l" else str(c).rjust(w))
        return "  ".join(parts).rstrip()

    sep = "  ".join("-" * w for w in widths)
    out = [line(header), sep]
    for r in rows:
        if len(r) == ncol:
            out.append(line(r))
        else:  # key cells, then one free-text cell
            keys = len(r) - 1
            out.append(line(r[:keys]) + "  " + r[-1])
    return "\n".join(out)
