"""Encoders and the projection head of the reference SimCLR loop.

torchvision's ResNets are used when torchvision imports; otherwise (torchvision is optional and its
wheels are built against one exact torch, so it is often absent or broken next to a newer torch) a
compact ResNet of our own with the same layout is used. Both get the CIFAR stem (3x3 stride-1 conv,
no max-pool) for small images, as in SimCLR's CIFAR-10 experiments (docs/design.md §6).
"""

from __future__ import annotations

import torch
from torch import nn

BACKBONES = ("small-cnn", "resnet18", "resnet50")

#: inputs at most this many pixels wide get the CIFAR stem; larger ones the ImageNet stem (7x7
#: stride-2 conv + max-pool). 64 px is a convention (Tiny-ImageNet-sized inputs keep full
#: resolution), not a measured threshold.
CIFAR_STEM_MAX_SIZE = 64


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A four-layer CNN (~280k parameters, ~380k with its projection head) for small grayscale
    images such as sklearn's digits.

    Channels 32-64-128-192, strides 1-2-2-1, global average pooling: 192-d features at any input
    size. Strides 1-2-2-1 rather than 1-1-2-2 cost 0.20 s instead of 0.32 s of CPU time per
    training step (512 8x8 images, forward+backward, one thread; measured here, 2-core machine
    under load, issue #8).

    Args:
        in_channels: image channels (1 for digits).

    Shape:
        Input ``(N, C, H, W)``, output ``(N, 192)``.
    """

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        widths = (32, 64, 128, 192)
        strides = (1, 2, 2, 1)
        layers, cin = [], in_channels
        for w, s in zip(widths, strides):
            layers.append(_conv_bn_relu(cin, w, s))
            cin = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),  # stride on the 3x3 ("ResNet v1.5")
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """A ResNet trunk without the classifier: returns the pooled features.

    Args:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101).
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        in_channels: image channels.
        cifar_stem: 3x3 stride-1 conv and no max-pool (small images) instead of the 7x7 stride-2
            conv + 3x3 max-pool of ImageNet models.

    Shape:
        Input ``(N, C, H, W)``, output ``(N, 512)`` (basic) or ``(N, 2048)`` (bottleneck).
    """

    def __init__(
        self, block: str, layers: tuple[int, ...], in_channels: int = 3, cifar_stem: bool = True
    ) -> None:
        super().__init__()
        cls = {"basic": _BasicBlock, "bottleneck": _Bottleneck}[block]
        if cifar_stem:
            stem = [
                nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            ]
        else:
            stem = [
                nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            ]
        stages, cin = [], 64
        for i, n in enumerate(layers):
            width = 64 * 2**i
            for j in range(n):
                stages.append(cls(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * cls.expansion
        self.features = nn.Sequential(*stem, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _torchvision_resnet(name: str, in_channels: int, cifar_stem: bool) -> nn.Module | None:
    """torchvision's ResNet trunk with our stem rules, or ``None`` when torchvision does not import."""
    try:
        import torchvision
    except Exception:  # absent, or built against another torch (it then fails at import)
        return None
    net = getattr(torchvision.models, name)(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    out_dim = net.fc.in_features
    net.fc = nn.Identity()
    net.out_dim = out_dim
    return net


def build_backbone(
    name: str, in_channels: int, image_size: int, prefer_torchvision: bool = True
) -> nn.Module:
    """The encoder called ``name`` (one of :data:`BACKBONES`); it has an ``out_dim`` attribute.

    Raises:
        ValueError: unknown ``name``.
    """
    if name == "small-cnn":
        return SmallCNN(in_channels)
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    cifar_stem = image_size <= CIFAR_STEM_MAX_SIZE
    if prefer_torchvision:
        net = _torchvision_resnet(name, in_channels, cifar_stem)
        if net is not None:
            return net
    block, layers = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}[
        name
    ]
    return ResNet(block, layers, in_channels, cifar_stem)


class ProjectionHead(nn.Sequential):
    """SimCLR's projection head: Linear -> BN -> ReLU -> Linear (ResNet-18: 512 -> 512 -> 128).

    Shape:
        Input ``(N, in_dim)``, output ``(N, out_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 128) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class SimCLRModel(nn.Module):
    """Backbone + projection head. ``forward`` returns the projections the loss sees; evaluation
    uses :meth:`features`, the backbone output before the head (docs/design.md §6).

    Args:
        backbone: an encoder with an ``out_dim`` attribute (see :func:`build_backbone`).
        proj_dim: output size of the projection head.
    """

    def __init__(self, backbone: nn.Module, proj_dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.out_dim, backbone.out_dim, proj_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
