"""Benchmarks of simclr_fast, behind ``simclr-fast bench loss|dist|augment|step`` (``loss`` the default).

- :mod:`simclr_fast.bench.loss`: the fused NT-Xent against the naive loss (time, memory, scaling).
- :mod:`simclr_fast.bench.dist`: the distributed loss (torch.distributed).
- :mod:`simclr_fast.bench.augment`: device-side augmentation throughput.
- :mod:`simclr_fast.bench.step`: one training step's peak memory and time against the batch (plain
  step with the naive or the fused loss, and the cached-gradient step).

Every mode is a module with ``add_arguments(parser)`` and ``run(args) -> int``, imported only when
its mode runs. A mode may also share the result files of the loss benchmark: either call
``simclr_fast.bench._results.append_rows(rows, args.out)`` itself, or expose
``bench_rows(args) -> list[dict]`` (printing its own output) and let the dispatcher append the rows
(tagged with the mode as ``suite``, the machine and the git commit) to ``<out>/results.csv`` and
``<out>/results.jsonl``. Row keys that are not result columns are kept in the ``extra`` column.
"""
