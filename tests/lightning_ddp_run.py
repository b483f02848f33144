"""A tiny PyTorch Lightning run with simclr_fast's losses: ``python lightning_ddp_run.py DEVICES OUT``.

Used by tests/test_lightning_ddp.py. With ``DEVICES = 2`` Lightning's ``ddp`` strategy re-launches
this script as rank 1 (2 CPU processes, gloo); each rank trains on its contiguous half of every
global batch, and the losses use ``gather_distributed=True``. With ``DEVICES = 1`` the same steps
run in one process on the whole global batch. Rank 0 saves the final parameters and the memory
bank to ``OUT``.
"""

from __future__ import annotations

import sys

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from simclr_fast import DCLLoss, NTXentLoss

GLOBAL_BATCH, STEPS, D_IN, D_OUT = 8, 3, 6, 5


class Views(Dataset):
    """Step ``s`` of rank ``r`` (of ``w``) is rows ``r·B/w … (r+1)·B/w`` of global batch ``s``."""

    def __init__(self, rank: int, world: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(STEPS, GLOBAL_BATCH, 2, D_IN, generator=g)
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return STEPS

    def __getitem__(self, step: int) -> torch.Tensor:
        b = GLOBAL_BATCH // self.world
        return self.x[step, self.rank * b : (self.rank + 1) * b]


class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)  # the same parameters and memory bank on every rank
        self.net = nn.Sequential(nn.Linear(D_IN, 16), nn.Tanh(), nn.Linear(16, D_OUT))
        self.ntxent = NTXentLoss(0.5, gather_distributed=True)
        self.moco = NTXentLoss(0.2, memory_bank_size=(10, D_OUT), gather_distributed=True)
        self.dcl = DCLLoss(0.3, gather_distributed=True)

    def training_step(self, batch, _):
        views = batch[0]  # (b, 2, D_IN): the DataLoader's batch_size is 1 step
        z0, z1 = self.net(views[:, 0]), self.net(views[:, 1])
        return self.ntxent(z0, z1) + self.moco(z0, z1) + self.dcl(z0, z1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        rank, world = self.trainer.global_rank, self.trainer.world_size
        return DataLoader(Views(rank, world), batch_size=1, shuffle=False)


def main(devices: int, out: str) -> None:
    torch.set_num_threads(1)
    model = Module()
    initial = {k: v.clone() for k, v in model.net.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=1,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model)
    if trainer.global_rank == 0:
        torch.save(
            {
                "initial": initial,
                "params": model.net.state_dict(),
                "bank": model.moco.memory_bank_state_dict(),
                "world": trainer.world_size,
            },
            out,
        )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
