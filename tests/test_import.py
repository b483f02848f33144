"""``import simclr_fast`` stays light: it imports torch and its own modules, nothing heavy.

Heavy modules (Dynamo, Triton, Kornia, the compiled extension) load when first used. The wall time
is measured by benchmarks/bench_import.py, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from simclr_fast import backends

HEAVY = ("torch._dynamo", "torch._inductor", "triton", "kornia", "simclr_fast._C", "sklearn")


@pytest.mark.timeout(300)
def test_import_simclr_fast_loads_no_heavy_module():
    code = (
        "import json, sys; import simclr_fast; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'triton', 'kornia', 'simclr_fast', 'sklearn'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    assert "simclr_fast.loss" in loaded  # the check sees what was imported
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], f"import simclr_fast imported {heavy}"


def test_constant_result_marker_matches_dynamos():
    def ours():
        return 0

    def theirs():
        return 0

    backends._assume_constant_result(ours)
    torch._dynamo.assume_constant_result(theirs)
    assert vars(ours) == vars(theirs) != {}
    assert backends.resolve._dynamo_marked_constant is True
