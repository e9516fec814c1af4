"""The tiny SE networks of the tests, built in code (random weights, CPU, milliseconds per forward); the module doc
of tests/conftest.py describes them. Kept apart from conftest.py so that loading conftest (the xdist controller does,
before any worker starts) imports neither torch nor timm."""

from __future__ import annotations

import copy

import torch
from timm.layers import SEModule
from torch import nn

from senet_viz.models.embedded.model import SEBasicBlock as LibrarySEBasicBlock

# ------------------------------------------------------------------------------------------- tiny SE-ResNet


class SEBasicBlock(LibrarySEBasicBlock):
    """The library's SE basic block (SE on the residual branch, before the addition: the paper's SE-ResNet
    module; :class:`senet_viz.models.embedded.model.SEBasicBlock`) with r = 4 and timm's default rounding of the SE
    bottleneck to a multiple of 8."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__(c_in, c_out, stride, reduction=4, rd_divisor=8)


class TinySEResNet(nn.Module):
    """64x64 input; stem (stride 4) then layer1..layer4 = paper stages 2..5 with DEPTHS blocks."""

    WIDTHS = (16, 32, 48, 64)
    DEPTHS = (1, 2, 2, 2)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        c_in = 16
        for i, (width, depth) in enumerate(zip(self.WIDTHS, self.DEPTHS, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(SEBasicBlock(c_in, width, 2 if (j == 0 and i > 0) else 1))
                c_in = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


TINY_SERESNET_NAMES = ["SE_2_1", "SE_3_1", "SE_3_2", "SE_4_1", "SE_4_2", "SE_5_1", "SE_5_2"]


def make_tiny_seresnet(seed: int = 0, cls: type[TinySEResNet] = TinySEResNet) -> TinySEResNet:
    """A ``cls`` (the tiny SE-ResNet or a subclass with other depths) with seeded weights, in eval mode."""
    torch.manual_seed(seed)
    model = cls()
    # Non-trivial batch-norm statistics so eval-mode outputs differ from the raw convolutions.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


# ------------------------------------------------------------------------------------- a user's own SE class


class ChannelGate(nn.Module):
    """A hand-written SE block (not a timm/torchvision class): pool -> FC -> ReLU -> FC -> sigmoid, rescale."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.squeeze = nn.Linear(channels, channels // reduction)
        self.relu = nn.ReLU()
        self.excite = nn.Linear(channels // reduction, channels)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        s = self.sigmoid(self.excite(self.relu(self.squeeze(self.pool(x).flatten(1)))))  # N x C
        return x * s.view(n, c, 1, 1)


class TinyCustomSENet(nn.Module):
    """32x32 input; three conv stages at strides 2, 4, 8, each followed by a ChannelGate."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.gate1 = ChannelGate(16)
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.gate2 = ChannelGate(32)
        self.conv3 = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
        self.gate3 = ChannelGate(32)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gate1(self.conv1(x))
        x = self.gate2(self.conv2(x))
        x = self.gate3(self.conv3(x))
        return self.head(x)


def make_tiny_custom(seed: int = 0) -> TinyCustomSENet:
    torch.manual_seed(seed)
    return TinyCustomSENet().eval()


# ------------------------------------------------------------------------------------ a decoy (spatial gate)


class SpatialGate(nn.Module):
    """Looks like SE by its layers (1x1 conv C -> C/r -> C and a sigmoid) but gates *positions*:
    the sigmoid sees the channel mean, N x 1 x H x W. Not a channel excitation, so not an SE block."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.fc2(self.relu(self.fc1(x)))
        return x * self.sigmoid(a.mean(dim=1, keepdim=True))  # N x 1 x H x W


class TinyDecoyNet(nn.Module):
    """32x32 input: conv (stride 2) -> real timm SE -> conv (stride 4) -> spatial decoy -> head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.se = SEModule(16, rd_ratio=1 / 4)
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.decoy = SpatialGate(32)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoy(self.conv2(self.se(self.conv1(x)))))


def make_tiny_decoy(seed: int = 0) -> TinyDecoyNet:
    torch.manual_seed(seed)
    return TinyDecoyNet().eval()


def clone_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()
