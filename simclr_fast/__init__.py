"""simclr_fast: fast, memory-light SimCLR.

The fused NT-Xent loss (:class:`NTXentLoss`, :func:`nt_xent`) never materializes the ``2B × 2B``
similarity matrix; it runs as Triton kernels on GPUs, a C++ kernel on CPUs and blocked PyTorch
anywhere else.
"""

from simclr_fast.backends import available_backends
from simclr_fast.cached import cached_backward
from simclr_fast.dcl import DCLLoss, DCLWLoss
from simclr_fast.functional import nt_xent
from simclr_fast.loss import NTXentLoss
from simclr_fast.memory_bank import memory_bank_loss
from simclr_fast.reference import nt_xent_reference
from simclr_fast.supcon import SupConLoss, supcon_loss

__version__ = "0.1.0"

__all__ = [
    "DCLLoss",
    "DCLWLoss",
    "NTXentLoss",
    "SupConLoss",
    "available_backends",
    "cached_backward",
    "memory_bank_loss",
    "nt_xent",
    "nt_xent_reference",
    "supcon_loss",
    "__version__",
]
