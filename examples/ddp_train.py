"""Train a small SimCLR encoder with DistributedDataParallel and negatives gathered from every rank.

Run with torchrun; each process takes one shard of scikit-learn's digits (8×8 images, shipped with
the wheel, nothing downloaded) and computes ``NTXentLoss(gather_distributed=True)``, so every rank
sees the embeddings of all ranks as negatives and DDP's gradient average equals the single-process
gradient of the global batch::

    torchrun --nproc_per_node=2 examples/ddp_train.py               # CPU: gloo
    torchrun --nproc_per_node=8 examples/ddp_train.py --steps 200   # GPU box: NCCL, one GPU per rank

The process-group backend follows the hardware: NCCL with one CUDA device per local rank when CUDA
is available, gloo on CPUs otherwise (``--dist-backend`` overrides). Rank 0 prints the loss
averaged over ranks at every step.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from simclr_fast import NTXentLoss


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40, help="optimizer steps (default 40)")
    p.add_argument(
        "--batch-size", type=int, default=64, help="images per rank per step (default 64)"
    )
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--backend", default="auto", help="loss backend: auto, torch, cpu, triton, reference"
    )
    p.add_argument(
        "--dist-backend",
        default=None,
        help="process-group backend (default: nccl on CUDA, else gloo)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def augment(x: torch.Tensor) -> torch.Tensor:
    """One random view of a batch of ``(N, 1, 8, 8)`` digits: shift ±1 px, contrast, noise, erasing."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2,)).tolist()  # one shift per batch keeps it a single slice
    x = padded[:, :, dy : dy + 8, dx : dx + 8]
    x = x * torch.empty(n, 1, 1, 1, device=x.device).uniform_(0.6, 1.4)
    x = x + 0.1 * torch.randn_like(x)
    # Erase one random 3×3 patch per image.
    top = torch.randint(0, 6, (n, 1, 1, 1), device=x.device)
    left = torch.randint(0, 6, (n, 1, 1, 1), device=x.device)
    rows = torch.arange(8, device=x.device).view(1, 1, 8, 1)
    cols = torch.arange(8, device=x.device).view(1, 1, 1, 8)
    patch = (rows >= top) & (rows < top + 3) & (cols >= left) & (cols < left + 3)
    return x.masked_fill(patch, 0.0)


def make_model() -> nn.Module:
    """A small CNN encoder with SimCLR's projection head (Linear, BatchNorm, ReLU, Linear), ≈ 160k parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Linear(128, 64),
    )


def main() -> int:
    args = parse_args()
    use_cuda = torch.cuda.is_available() and args.dist_backend in (None, "nccl")
    dist.init_process_group(args.dist_backend or ("nccl" if use_cuda else "gloo"))
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(
            max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
        )
    torch.manual_seed(args.seed + rank)  # different augmentations on every rank

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    dataset = TensorDataset(images)
    # drop_last keeps B equal on every rank, which gather_distributed requires.
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed
    )
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)

    torch.manual_seed(args.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = DistributedDataParallel(
        make_model().to(device), device_ids=[device.index] if use_cuda else None
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    criterion = NTXentLoss(
        temperature=args.temperature, gather_distributed=True, backend=args.backend
    )
    if rank == 0:
        print(
            f"world {world} ({dist.get_backend()}, {device.type}), {args.batch_size} images per rank, "
            f"{args.batch_size * world} per step, {2 * args.batch_size * world - 2} negatives per row"
        )

    step, epoch, start = 0, 0, time.perf_counter()
    while step < args.steps:
        sampler.set_epoch(epoch)
        for (x,) in loader:
            x = x.to(device, non_blocking=True)
            loss = criterion(model(augment(x)), model(augment(x)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)  # for printing only: the mean of the ranks' losses
            step += 1
            if rank == 0:
                print(
                    f"step {step:3d}  loss {mean_loss.item() / world:.4f}  "
                    f"({time.perf_counter() - start:.1f} s)",
                    flush=True,
                )
            if step == args.steps:
                break
        epoch += 1
    # Free DDP (and the loss graph) while the process group still exists: destroying the group
    # first left one rank hanging at exit now and then (gloo, torch 2.13, this machine).
    del model, optimizer, loss
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
