"""SE-ShuffleNet (v1, 1x, g = 3), written the way a user would, with the SE computed *inline* in each unit's
``forward`` (no SE module): discovery finds the gates in a traced graph (``torch.fx`` / ``torch.export``).

ShuffleNet units as in Zhang et al. 2018: 1x1 group conv -> channel shuffle -> 3x3 depthwise (stride 2 in a
stage's first unit) -> 1x1 group conv; stride-2 units concatenate a 3x3 average-pooled shortcut. Stages 2..4 have
240, 480, 960 output channels and 4, 8, 4 units. The SE (reduction 16) rescales each unit's residual branch before
the addition / concatenation, as in SE-ResNet. ``build(se=False)`` is the plain ShuffleNet.

    senet-viz ... --model examples/se_shufflenet.py:build --allow-code
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, groups: int, first_group: bool, se: bool,
                 reduction: int = 16) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        branch_out = c_out - c_in if stride == 2 else c_out
        mid = c_out // 4
        g1 = groups if first_group else 1
        self.conv1 = nn.Conv2d(c_in, mid, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)
        self.se = se
        if se:
            self.se_reduce = nn.Conv2d(branch_out, branch_out // reduction, 1)
            self.se_expand = nn.Conv2d(branch_out // reduction, branch_out, 1)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.groups)
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        if self.se:
            s = F.adaptive_avg_pool2d(out, 1)
            s = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(s))))
            out = out * s
        if self.stride == 2:
            return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), out], 1))
        return F.relu(x + out)


class ShuffleNet(nn.Module):
    def __init__(self, num_classes: int = 1000, groups: int = 3, se: bool = True) -> None:
        super().__init__()
        channels = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088),
                    8: (384, 768, 1536)}[groups]
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        units: list[nn.Module] = []
        c_in = 24
        for stage, (c_out, repeats) in enumerate(zip(channels, (4, 8, 4), strict=True)):
            for i in range(repeats):
                units.append(ShuffleUnit(c_in, c_out, 2 if i == 0 else 1, groups,
                                         first_group=not (stage == 0 and i == 0), se=se))
                c_in = c_out
        self.units = nn.Sequential(*units)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.units(self.stem(x)).mean((2, 3)))


def build(se: bool = True, num_classes: int = 1000) -> ShuffleNet:
    return ShuffleNet(num_classes=num_classes, se=se)
