"""SE-BN-Inception, written the way a user would: BN-Inception (Ioffe & Szegedy 2015, Inception-v2 with batch
norm) with an SE block on the output of each of its ten Inception modules (Hu et al., SENet, Fig. 2).

Inception modules 3a .. 5b as in the BN-Inception paper's Table 1: a 1x1 branch, a 1x1 -> 3x3 branch, a
1x1 -> 3x3 -> 3x3 branch and a pooling branch (average or max, with a 1x1 projection); 3c and 4e reduce the
resolution (stride 2, no 1x1 branch, max pooling passed through). SE reduction ratio 16. ``build(se=False)`` is
the plain BN-Inception. Load it with random weights::

    senet-viz ... --model examples/se_bn_inception.py:build --allow-code
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class SEModule(nn.Module):
    """SE with 1x1 convolutions (as in the authors' Caffe models): pool, conv C -> C/r, ReLU, conv, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.pool(x)))))


class Inception(nn.Module):
    """One BN-Inception module. ``c1 == 0``: no 1x1 branch; ``stride == 2``: max pooling passed through."""

    def __init__(self, c_in: int, c1: int, c3r: int, c3: int, cd3r: int, cd3: int, pool: str, proj: int,
                 stride: int = 1) -> None:
        super().__init__()
        self.branch1 = conv_bn(c_in, c1, 1) if c1 else None
        self.branch3 = nn.Sequential(conv_bn(c_in, c3r, 1), conv_bn(c3r, c3, 3, stride))
        self.branch_d3 = nn.Sequential(conv_bn(c_in, cd3r, 1), conv_bn(cd3r, cd3, 3), conv_bn(cd3, cd3, 3, stride))
        pooling = nn.MaxPool2d(3, stride, 1) if pool == "max" else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        self.branch_pool = nn.Sequential(pooling, conv_bn(c_in, proj, 1)) if proj else pooling
        self.out_channels = c1 + c3 + cd3 + (proj or c_in)

    def forward(self, x):
        outs = [self.branch3(x), self.branch_d3(x), self.branch_pool(x)]
        if self.branch1 is not None:
            outs.insert(0, self.branch1(x))
        return torch.cat(outs, 1)


# name: (c1, c3 reduce, c3, double c3 reduce, double c3, pool, pool projection, stride)
MODULES = {
    "3a": (64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": (64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": (192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (160, 128, 160, 128, 160, "avg", 128, 1),
    "4d": (96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": (0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": (352, 192, 320, 192, 224, "max", 128, 1),
}


class BNInception(nn.Module):
    def __init__(self, num_classes: int = 1000, se: bool = True, reduction: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1), conv_bn(64, 64, 1),
                                  conv_bn(64, 192, 3), nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        c = 192
        for cfg in MODULES.values():
            module = Inception(c, *cfg)
            c = module.out_channels
            blocks.append(nn.Sequential(module, SEModule(c, reduction)) if se else module)
        self.inception = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.inception(self.stem(x))).flatten(1))


def build(se: bool = True, num_classes: int = 1000) -> BNInception:
    return BNInception(num_classes=num_classes, se=se)
