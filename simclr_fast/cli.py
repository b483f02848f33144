"""The ``simclr-fast`` command line (also ``python -m simclr_fast``).

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their sub-command runs, so ``simclr-fast --help`` stays fast.
``args.explicit_options`` is the set of destinations the command line gave explicitly (the others
hold their defaults): ``train --resume`` tells a repeated flag from a default with it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: sub-command -> (module, one-line help)
COMMANDS = {
    "bench": (
        "simclr_fast.bench.cli",
        "benchmark the fused loss against the naive loss (loss|dist|augment)",
    ),
    "check-kernels": (
        "simclr_fast.check_kernels",
        "compile the launched Triton kernel variants for sm_80/sm_90 and report resources",
    ),
    "gpu-check": (
        "simclr_fast.gpu_check",
        "first run on a GPU box: correctness vs fp64, repeatability, timings (--dry-run: CPU)",
    ),
    "train": ("simclr_fast.train.cli", "train SimCLR with the reference loop (digits by default)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simclr-fast", description="Fast, memory-light SimCLR.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def explicit_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the options ``argv`` gives explicitly, even at their default value."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        given = parser.parse_args(argv)  # already parsed once: no new errors here
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(given)) - set(parser._defaults)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``simclr-fast``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # prints help / usage errors for unknown commands
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"simclr-fast {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    args.explicit_options = explicit_options(sub, rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
