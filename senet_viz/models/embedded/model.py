"""The embedded network: a paper-style SE-ResNet for 1 x 28 x 28 Fashion-MNIST images.

A 3x3 stem at full 28 x 28 resolution, then four residual stages (paper stages 2..5 at 28, 14, 7 and 4 pixels)
of basic blocks; in each block the SE module (timm ``SEModule``, r = 16) recalibrates the residual branch
*before* the addition with the shortcut, as in the SENet paper's SE-ResNet module. ``se_stage_offset = 2`` makes
:func:`senet_viz.gates.blocks.find_se_blocks` name the blocks ``SE_2_1 .. SE_5_2``. ``se_stages`` leaves SE out of
chosen stages (the paper's "retrained without" model).

:class:`SEBasicBlock` is also the block of the tests' tiny SE-ResNet (``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from senet_viz.models.embedded.data import CLASS_NAMES, IMAGE_SIZE, MEAN, STD

MODEL_NAME = "se_resnet_fmnist"
NOSE5_NAME = "se_resnet_fmnist_nose5"
WIDTHS = (16, 32, 64, 128)
DEPTHS = (1, 1, 1, 2)
ALL_SE_STAGES = (2, 3, 4, 5)


class SEBasicBlock(nn.Module):
    """ResNet basic block; SE (timm ``SEModule``, r = ``reduction``) on the residual branch before the addition.

    ``rd_divisor`` rounds the SE bottleneck width as timm does (1: exactly ``c_out / reduction``; timm's default
    8 rounds up to a multiple of 8). ``se=False`` builds the plain block.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, se: bool = True, reduction: int = 16,
                 rd_divisor: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if se:
            from timm.layers import SEModule

            self.se: nn.Module | None = SEModule(c_out, rd_ratio=1.0 / reduction, rd_divisor=rd_divisor)
        else:
            self.se = None
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.act2(out + shortcut)


class SEResNetFMNIST(nn.Module):
    """SE-ResNet for 1 x 28 x 28 inputs: stem, ``layer1..layer4`` = paper stages 2..5 (28, 14, 7, 4 px), pool, fc.

    ``se_stages`` lists the paper stages whose blocks carry SE (default all four). A 3-channel input (e.g. a
    generic RGB probe) is averaged to one grey channel; the zoo transform already gives one channel.
    """

    se_stage_offset = 2  # stage 2 runs at full resolution: blocks read SE_2_x .. SE_5_x as in the paper

    def __init__(self, num_classes: int = len(CLASS_NAMES), widths: Sequence[int] = WIDTHS,
                 depths: Sequence[int] = DEPTHS, se_stages: Sequence[int] = ALL_SE_STAGES, reduction: int = 16,
                 in_chans: int = 1) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError("widths and depths need one entry per stage (4 stages)")
        if not set(se_stages) <= set(ALL_SE_STAGES):
            raise ValueError(f"se_stages must be among {ALL_SE_STAGES}, got {tuple(se_stages)}")
        self.in_chans = in_chans
        self.config = {"widths": list(widths), "depths": list(depths), "se_stages": sorted(se_stages),
                       "reduction": reduction, "num_classes": num_classes, "in_chans": in_chans}
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU()
        c_in = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            stage = i + 2
            blocks = []
            for j in range(depth):
                blocks.append(SEBasicBlock(c_in, width, 2 if (i > 0 and j == 0) else 1, stage in se_stages,
                                           reduction))
                c_in = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is None:  # the main path's convs (SE's 1x1 convs have biases)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3 and self.in_chans == 1:
            x = x.mean(dim=1, keepdim=True)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.global_pool(x), 1))


def build_model(se_stages: Sequence[int] = ALL_SE_STAGES, reduction: int = 16, widths: Sequence[int] = WIDTHS,
                depths: Sequence[int] = DEPTHS) -> SEResNetFMNIST:
    return SEResNetFMNIST(widths=widths, depths=depths, se_stages=se_stages, reduction=reduction)


def transform() -> Callable:
    """RGB (or any) PIL image -> normalised 1 x 28 x 28 tensor: grey, short side 28, centre crop 28."""
    from torchvision import transforms as T

    return T.Compose([T.Grayscale(1), T.Resize(IMAGE_SIZE), T.CenterCrop(IMAGE_SIZE), T.ToTensor(),
                      T.Normalize((MEAN,), (STD,))])


def model_name_for(se_stages: Sequence[int]) -> str:
    missing = [s for s in ALL_SE_STAGES if s not in set(se_stages)]
    return MODEL_NAME if not missing else f"{MODEL_NAME}_nose{''.join(map(str, missing))}"
