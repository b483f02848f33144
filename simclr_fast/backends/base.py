"""The contract every fused backend implements: a shifted row log-sum-exp and its gradient.

A backend works on *normalized* embeddings ``z`` of shape ``(N, D)`` and the contiguous block of
owned rows ``k = row_start + i`` (``0 <= i < row_count``). In one process ``N = 2B`` and every row
is owned; under ``torch.distributed`` ``z`` is the gathered batch (``2B·W`` rows) and a rank owns its
own ``2B``. With ``s_kj = inv_tau · z_k · c_j`` (``c`` the columns, below):

``forward_lse`` returns, fp32 ``(row_count,)``::

    x_k = log Σ_{j ∈ C(k)} exp(s_kj − shift_k)

``backward_rows`` returns the owned rows of ``dz``, fp32 ``(row_count, D)``::

    dz_k = inv_tau · Σ_{j ∈ C(k)} (weight_k e^{s_kj − shift_k} + weight_j e^{s_kj − shift_j}) · c_j

which is ``Σ_q weight_q · ∂x_q/∂z_k`` over every row ``q`` of ``z`` (``x`` also depends on ``shift``:
``∂x_k/∂shift_k = −1``, which the autograd layer adds). The loss layer picks ``shift`` and the
per-row loss ``ℓ_k = f(x_k, …)``, and passes ``weight_k = (∂L/∂x_k) · e^{−x_k}``.

Columns ``C(k)``:

- ``keys is None`` (self-similarity, NT-Xent/DCL/SupCon): the rows of ``z`` except the diagonal
  ``j = k`` and, when ``exclude`` is given, ``j = exclude[i]`` (a global row index; ``−1`` for
  none). Exclusion is symmetric: if row ``k`` excludes ``j`` then row ``j`` excludes ``k`` (true of
  the positive pairs it is used for), so a pair is either a negative both ways or not at all.
  ``shift``, ``x`` and ``weight`` of ``backward_rows`` cover **all** ``N`` rows (other ranks' too).
- ``keys`` given, ``(K, D)`` (a memory bank): the columns are the ``K`` keys, nothing excluded, and
  only the owned rows are anchors: ``dz_k = inv_tau Σ_j weight_k e^{s_kj − shift_k} keys_j``. Keys
  get no gradient. ``shift``, ``x`` and ``weight`` cover the owned rows only.

Why a shift. Late in training the positive pair dominates each row, and ``lse_k − s_pos`` subtracts
two numbers of size ``~1/τ``: in fp32 a loss of 1e-6 keeps no correct digit. With ``shift_k`` the
positive logit and the positive column excluded, ``x_k`` *is* the small quantity ``log S_k``, and
NT-Xent's row loss is ``softplus(x_k)`` with nothing cancelling (docs/design.md §9). Backends must
not form ``log Σ e^{s_kj}`` and subtract ``shift_k`` in fp32: the fixed-shift fast path
(``c = |inv_tau|·max|z|² >= |s|``) combines ``log Σ e^{s − c} + (c − shift_k)`` in fp64, or sums
``e^{s − shift_k}`` directly.

``x`` (the forward's result) is passed to the backward so a backend may bound its entries: row
``k``'s own terms ``weight_k e^{s_kj − shift_k}`` add up to ``weight_k e^{x_k}`` (the Triton launcher
scales each row of its 16-bit ``G`` tile with it, so small entries survive fp16).

An empty ``C(k)`` (``N = 2``, one pair) gives ``x_k = −inf``; the loss layer then passes ``weight_k =
0``. Everything of size ``N²`` lives in tiles: a backend keeps ``O(N·D)`` memory. ``z`` and ``keys``
arrive contiguous, in :meth:`Backend.kernel_dtype` of the input dtype; ``shift``, ``x`` and
``weight`` are fp32 (fp64 on the ``torch`` backend for fp64 inputs), ``exclude`` int64; results
have ``shift``'s dtype.
"""

from __future__ import annotations

import torch


class Backend:
    """Base class: one fused implementation of the shifted row log-sum-exp (module docstring)."""

    #: name used by ``backend=...`` in the public API.
    name: str = ""

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        """Why this backend cannot run on ``device``/``dtype`` here, with the fix; ``None`` if it can."""
        raise NotImplementedError

    def kernel_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype ``z`` is handed to the kernels in, for inputs of ``dtype``."""
        return torch.float32

    def forward_lse(
        self,
        z: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
        shift: torch.Tensor,
        exclude: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x_k = log Σ_{j∈C(k)} e^{s_kj − shift_k}`` for the owned rows: ``(row_count,)``."""
        raise NotImplementedError

    def backward_rows(
        self,
        z: torch.Tensor,
        shift: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        row_start: int,
        row_count: int,
        inv_tau: float,
        exclude: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``Σ_q weight_q ∂x_q/∂z_k`` (shift held fixed) for the owned rows: ``(row_count, D)``."""
        raise NotImplementedError
