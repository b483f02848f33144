#!/usr/bin/env bash
# The wheel works elsewhere: build a platform wheel with the compiled extension, install it into a
# fresh virtual environment that has only torch (plus the wheel's declared dependencies), and run
# the "cpu" loss backend and the augmentation kernel from outside the source tree.
#
#   bash tests/wheel_check.sh [WHEEL]     # WHEEL: an already built .whl to check (else built here)
#
# Environment: PYTHON (default .venv/bin/python, must have torch, setuptools, ninja) builds the
# wheel and creates the venv; KEEP=1 keeps the scratch directory. Takes ~2 min on the 2-core box:
# most of it is building the extension and installing torch into the new venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/simclr-fast-wheel.XXXXXX")"
if [[ "${KEEP:-0}" != "1" ]]; then trap 'rm -rf "$WORK"' EXIT; fi

if [[ $# -ge 1 ]]; then
  WHEEL="$1"
else
  echo "== building the wheel (pip wheel --no-build-isolation --no-deps)"
  "$PYTHON" -m pip wheel --no-build-isolation --no-deps "$ROOT" -w "$WORK/dist" -q
  WHEEL="$(ls "$WORK"/dist/simclr_fast-*.whl)"
fi
echo "== wheel: $(basename "$WHEEL")"
case "$(basename "$WHEEL")" in
  *-none-any.whl) echo "FAIL: a pure-Python wheel (the extension was not built)"; exit 1 ;;
esac
"$PYTHON" - "$WHEEL" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
so = [n for n in names if n.startswith("simclr_fast/_C") and n.endswith(".so")]
assert so, f"no simclr_fast/_C*.so in the wheel: {names}"
print("   contains", so[0])
PY

# The torch the wheel was built against, by its public version (2.13.0 for 2.13.0+cpu: a local
# label names a build, not a release any index is sure to have); the CPU build when the builder's
# torch is one (tools/install_torch.py: pip's configured sources, else the PyTorch CPU index).
TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
TORCH_PUBLIC="${TORCH_VERSION%%+*}"
PREFER_CPU=""
if [[ "$TORCH_VERSION" == *+cpu ]]; then PREFER_CPU="--prefer-cpu"; fi
echo "== fresh venv with only torch==$TORCH_PUBLIC (built against $TORCH_VERSION)"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
# shellcheck disable=SC2086  # PREFER_CPU is one flag or nothing
"$VPY" "$ROOT/tools/install_torch.py" $PREFER_CPU "torch==$TORCH_PUBLIC"
echo "== installing the wheel with its declared dependencies"
"$VPY" -m pip install -q "$WHEEL"

echo "== running the cpu backend from $WORK"
cd "$WORK"
"$VPY" - <<'PY'
import sys
import torch
import simclr_fast
from simclr_fast import _extension

assert simclr_fast.__file__.startswith(sys.prefix), f"imported {simclr_fast.__file__}, not the installed wheel"
assert _extension.AVAILABLE, _extension.REASON
assert "cpu" in simclr_fast.available_backends("cpu")
out0 = torch.randn(4, 8, requires_grad=True)
out1 = torch.randn(4, 8, requires_grad=True)
loss = simclr_fast.nt_xent(out0, out1, backend="cpu")
loss.backward()
ref = simclr_fast.nt_xent_reference(out0.double(), out1.double())
assert abs(loss.item() - ref.item()) < 1e-5, (loss.item(), ref.item())
print(f"   torch {torch.__version__}, kernels: {_extension.cpu_isa()}, loss {loss.item():.6f} (reference {ref.item():.6f})")

from simclr_fast.augment import SimCLRAugment

images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
fused = SimCLRAugment("simclr-imagenet", size=32, seed=0, backend="cpu")(images)
plain = SimCLRAugment("simclr-imagenet", size=32, seed=0, backend="torch")(images)
for a, b in zip(fused, plain):
    assert a.shape == (4, 3, 32, 32) and (a - b).abs().max().item() < 2e-5
print("   augmentation kernel: views equal the tensor-op path")
PY
echo "wheel check: 1 passed, 0 failed"
