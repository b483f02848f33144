"""SimCLR on scikit-learn's digits in one short script: the loop of ``simclr-fast train``, bare.

    python examples/train_simclr.py    # 100 epochs: ~95 s of CPU time on one core of a 2-core box

Raw uint8 batches go to the device, :class:`simclr_fast.augment.SimCLRAugment` makes the two views
there, the encoder + projection head embed them and the fused :class:`simclr_fast.NTXentLoss`
scores them. At the end a logistic regression on the frozen encoder features (before the head)
is fitted with 1 and 10 labels per class. Swap in ``CIFAR10Dataset``, ``build_backbone("resnet18",
3, 32)``, ``SimCLRAugment("simclr-cifar")`` and ``LARS`` for CIFAR-10 on a GPU (see the README);
``simclr-fast train`` adds checkpoints, resume, DDP, the kNN monitor, plots and summary.json.
"""

import math

import torch

from simclr_fast import NTXentLoss
from simclr_fast.augment import SimCLRAugment
from simclr_fast.data import DigitsDataset
from simclr_fast.train.evaluate import linear_probe
from simclr_fast.train.models import SimCLRModel, build_backbone

EPOCHS, BATCH, LR, TEMPERATURE, SIZE = 100, 256, 1e-3, 1.0, 8
device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)

train, test = (
    DigitsDataset("train"),
    DigitsDataset("test"),
)  # fixed 1197 / 600 split, uint8 (N, 1, 8, 8)
augment = SimCLRAugment(
    "digits", size=SIZE, seed=0
)  # crop, small rotation/shear, intensity, noise, erasing
model = SimCLRModel(build_backbone("small-cnn", in_channels=1, image_size=SIZE)).to(device)
loss_fn = NTXentLoss(temperature=TEMPERATURE)  # fused NT-Xent: no 2B x 2B matrix kept for backward
optimizer = torch.optim.Adam(model.parameters(), lr=LR)
steps = EPOCHS * (len(train) // BATCH)
schedule = torch.optim.lr_scheduler.LambdaLR(
    optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
)

for epoch in range(EPOCHS):
    total = 0.0
    for batch, _ in train.batches(BATCH, shuffle=True, drop_last=True, device=device):
        view0, view1 = augment(batch)
        z0, z1 = model(torch.cat([view0, view1])).chunk(2)
        loss = loss_fn(z0, z1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.item()
    if (epoch + 1) % 25 == 0:
        print(f"epoch {epoch + 1}: loss {total / (len(train) // BATCH):.4f}")


@torch.no_grad()
def features(ds):
    model.eval()
    return model.features(ds.images.to(device).float() / 255).cpu().numpy()  # SIZE = 8: native size


acc = linear_probe(
    features(train), train.labels.numpy(), features(test), test.labels.numpy(), budgets=("1", "10")
)
print(
    f"linear probe on frozen features: 1 label/class {acc['1']:.3f}, 10 labels/class {acc['10']:.3f}"
)
