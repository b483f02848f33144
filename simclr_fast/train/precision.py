"""``--precision bf16`` on CPUs: whether the CPU computes bf16 natively, and a warning when not.

On x86 CPUs without AVX512-BF16 or AMX (AVX2-only machines, most AMD Zen 1-3 and Intel before
Cooper Lake), oneDNN and ATen run bf16 convolutions and matmuls on emulated paths. Measured on the
2-core dev machine, 2026-12-02, the default digits run (3 epochs, median epoch), with oneDNN and
ATen held to AVX2 to stand in for such a CPU::

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 simclr-fast train --epochs 3 --knn-every 0 \\
        --no-probe --no-progress --loss-backend torch --precision {fp32,bf16}

fp32 7.9 s per epoch, bf16 109 s: 14x slower. The same machine with its AMX-BF16 units: fp32
1.3 s, bf16 1.9 s (the model is too small for bf16 to pay off).
"""

from __future__ import annotations

import functools
import os
import platform
import warnings

import torch

#: bf16 epoch time over fp32 epoch time on a CPU without bf16 units (measured, see above).
MEASURED_SLOWDOWN = 14

#: /proc/cpuinfo flags of CPUs that compute bf16 natively (x86: AVX512-BF16, AMX; Arm: BF16).
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}

#: ISA caps that hide those units from oneDNN / ATen (values at or below AVX2).
_CAPPED = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "DEFAULT"}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (and torch may use it); ``None`` if unknown."""
    for var in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        if os.environ.get(var, "").upper() in _CAPPED:
            return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return bool(_BF16_FLAGS & set(value.split()))
    except OSError:
        pass
    return None


_warned = False


def warn_if_slow_bf16(precision: str, device: torch.device) -> bool:
    """Warn, once per process, when bf16 would run emulated on this CPU; returns whether this
    call warned."""
    global _warned
    if precision != "bf16" or device.type != "cpu" or cpu_has_native_bf16() is not False:
        return False
    if _warned:
        return False
    _warned = True
    cpu = platform.processor() or platform.machine()
    warnings.warn(
        f"--precision bf16 on a CPU without native bf16 units ({cpu}: no AVX512-BF16, AMX or "
        f"Arm BF16): bf16 runs on emulated kernels, about {MEASURED_SLOWDOWN}x slower than "
        "fp32 (measured on the digits default, 2026-12-02). Use --precision fp32 here.",
        UserWarning,
        stacklevel=2,
    )
    return True
