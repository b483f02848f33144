"""``simclr-fast bench [loss|dist|augment|step] ...``: routes to the benchmark modes (``loss`` by default).

``simclr-fast bench --sizes 1024 4096`` is ``simclr-fast bench loss --sizes 1024 4096``. The loss
flags are registered on the top parser too, so they work without the mode word. The ``dist`` and
``augment`` modes are owned by their own modules and imported only when asked for; a mode whose
module is missing says so and exits with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import sys

#: mode -> (module, one-line help)
MODES = {
    "loss": ("simclr_fast.bench.loss", "fused vs naive NT-Xent: time, memory, scaling (default)"),
    "dist": ("simclr_fast.bench.dist", "the distributed loss across processes (torch.distributed)"),
    "augment": ("simclr_fast.bench.augment", "augmentation throughput"),
    "step": (
        "simclr_fast.bench.step",
        "one training step's peak memory and time vs batch: plain, fused, fused + cached",
    ),
}


def _add_out(parser: argparse.ArgumentParser) -> None:
    """``--out`` / ``--no-save`` for a mode that did not define them (the shared result files)."""
    for flags, kwargs in (
        (
            ("--out",),
            {
                "default": "bench-results",
                "help": "directory of results.csv/results.jsonl (default bench-results)",
            },
        ),
        (
            ("--no-save",),
            {"action": "store_true", "help": "do not append rows to the result files"},
        ),
    ):
        with contextlib.suppress(argparse.ArgumentError):  # the mode defines it itself
            parser.add_argument(*flags, **kwargs)


class _LazyModeParser(argparse.ArgumentParser):
    """A mode's parser that imports the mode's module (and its flags) only when it is used."""

    def __init__(self, *args, mode_module: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._mode_module = mode_module
        self._loaded = mode_module is None
        self.missing: str | None = None

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            module = importlib.import_module(self._mode_module)
        except ImportError as exc:
            self.missing = f"{self._mode_module} cannot be imported ({exc})"
            self.description = f"{self.description or ''} [not available here: {self.missing}]"
            return
        module.add_arguments(self)
        _add_out(self)

    def parse_known_args(self, args=None, namespace=None):
        self._load()
        if self.missing:  # accept anything: run() reports the missing module
            namespace = namespace if namespace is not None else argparse.Namespace()
            namespace._missing = self.missing
            return namespace, []
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._load()
        return super().format_help()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the modes, and the loss flags on ``parser`` itself (``loss`` is the default mode)."""
    from simclr_fast.bench import loss

    parser.description = (
        "Benchmark simclr_fast. Modes: "
        + "; ".join(f"{name}: {help_text}" for name, (_, help_text) in MODES.items())
        + ". Without a mode the loss benchmark runs with the flags below."
    )
    sub = parser.add_subparsers(
        dest="mode", metavar="{" + ",".join(MODES) + "}", parser_class=_LazyModeParser
    )
    for name, (module, help_text) in MODES.items():
        sub.add_parser(name, help=help_text, description=help_text, mode_module=module)
    loss.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run the chosen mode; returns its exit code."""
    mode = args.mode or "loss"
    missing = getattr(args, "_missing", None)
    if missing:
        print(
            f"simclr-fast bench {mode}: this benchmark is not available in this installation: {missing}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(MODES[mode][0])
    bench_rows = getattr(module, "bench_rows", None)
    if mode == "loss" or bench_rows is None:
        return int(module.run(args) or 0)
    rows = list(bench_rows(args) or [])
    if rows and not getattr(args, "no_save", False):
        import torch

        from simclr_fast.bench._measure import machine_info
        from simclr_fast.bench._results import append_rows
        from simclr_fast.bench.loss import command_line

        name = str(getattr(args, "device", None) or "cpu")
        if name == "auto":  # the loss flags' default, also on the top parser
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        now = _dt.datetime.now(_dt.timezone.utc)
        defaults = {
            "timestamp": now.isoformat(timespec="seconds"),
            "run_id": now.strftime("%Y%m%dT%H%M%SZ"),
            "suite": mode,
            "command": command_line(),
            **machine_info(device, torch.get_num_threads()),
        }
        csv_path, jsonl_path = append_rows(rows, args.out, defaults)
        print(f"rows appended to {csv_path} and {jsonl_path}")
    return 0 if rows else 1
