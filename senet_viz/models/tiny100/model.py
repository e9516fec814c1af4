"""``se_resnet50_tiny100``: the SE-ResNet-50 layout, narrowed, for 3 x 64 x 64 Tiny ImageNet photos.

Bottleneck blocks 3-4-6-3 (expansion 4) as in ResNet-50; in each block the SE module (timm ``SEModule``, r = 16,
sigmoid gate) recalibrates the residual branch *before* the addition with the shortcut, as in the SENet paper's
SE-ResNet module. The stem is one 3x3 convolution (stride ``stem_stride``, no max-pool) so that the four stages run
at 32, 16, 8 and 4 px for a 64 px input (stride 2), i.e. at output strides 2..16 instead of ResNet-50's 4..32;
``se_stage_offset`` keeps the names ``SE_2_1 .. SE_5_3`` of the paper. ``base_width`` is the first stage's
bottleneck width (ResNet-50: 64; here narrower, as the CPU budget allows). ``se_stages`` leaves SE out of chosen
stages (the paper's Table 13 variants).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from senet_viz.models.tiny100.data import IMAGE_SIZE, MEAN, STD

MODEL_NAME = "se_resnet50_tiny100"
DEPTHS = (3, 4, 6, 3)
EXPANSION = 4
BASE_WIDTH = 16
STEM_STRIDE = 4
ALL_SE_STAGES = (2, 3, 4, 5)


class SEBottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 with the stride, 1x1 to ``width * 4``); SE on the residual branch before the
    addition; ``se=False`` builds the plain block."""

    def __init__(self, c_in: int, width: int, stride: int = 1, se: bool = True, reduction: int = 16) -> None:
        super().__init__()
        c_out = width * EXPANSION
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        if se:
            from timm.layers import SEModule

            self.se: nn.Module | None = SEModule(c_out, rd_ratio=1.0 / reduction, rd_divisor=1)
        else:
            self.se = None
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.act3(out + shortcut)


class SEResNet50Tiny(nn.Module):
    """SE-ResNet-50 layout for 3 x 64 x 64 inputs: 3x3 stem, ``layer1..layer4`` = paper stages 2..5, pool, fc."""

    def __init__(self, num_classes: int = 100, base_width: int = BASE_WIDTH, depths: Sequence[int] = DEPTHS,
                 se_stages: Sequence[int] = ALL_SE_STAGES, reduction: int = 16, stem_stride: int = STEM_STRIDE,
                 zero_init_last: bool = False) -> None:
        super().__init__()
        if len(depths) != 4:
            raise ValueError("depths needs one entry per stage (4 stages)")
        if not set(se_stages) <= set(ALL_SE_STAGES):
            raise ValueError(f"se_stages must be among {ALL_SE_STAGES}, got {tuple(se_stages)}")
        if stem_stride not in (1, 2, 4):
            raise ValueError("stem_stride must be 1, 2 or 4")
        # names follow the output-stride level (senet_viz.gates.kinds): stage 2 is the first stage, whatever the stem
        self.se_stage_offset = 2 - int(math.log2(stem_stride))
        self.config = {"base_width": base_width, "depths": list(depths), "se_stages": sorted(se_stages),
                       "reduction": reduction, "num_classes": num_classes, "stem_stride": stem_stride,
                       "expansion": EXPANSION}
        stem = base_width
        self.conv1 = nn.Conv2d(3, stem, 3, min(stem_stride, 2), 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.act1 = nn.ReLU()
        # stride 4: ResNet's own stem order (conv stride 2, then a 3x3 max-pool stride 2), so no pixel is skipped
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem_stride == 4 else nn.Identity()
        c_in = stem
        for i, depth in enumerate(depths):
            stage, width = i + 2, base_width * 2 ** i
            blocks = []
            for j in range(depth):
                blocks.append(SEBottleneck(c_in, width, 2 if (i > 0 and j == 0) else 1, stage in se_stages,
                                           reduction))
                c_in = width * EXPANSION
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is None:  # the main path's convs (SE's 1x1 convs have biases)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # zero_init_last (off by default): every residual branch starts at zero, which also starts every SE block
        # with a zero input (its pooled BN output), so its gates stay near a constant sigmoid(bias) for a long time
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, SEBottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.global_pool(x), 1))


def build_model(se_stages: Sequence[int] = ALL_SE_STAGES, reduction: int = 16, base_width: int = BASE_WIDTH,
                stem_stride: int = STEM_STRIDE, num_classes: int = 100, zero_init_last: bool = False) -> SEResNet50Tiny:
    return SEResNet50Tiny(num_classes=num_classes, base_width=base_width, se_stages=se_stages, reduction=reduction,
                          stem_stride=stem_stride, zero_init_last=zero_init_last)


def transform() -> Callable:
    """RGB PIL image -> normalised 3 x 64 x 64 tensor: short side 64 (bilinear), centre crop 64."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(IMAGE_SIZE), T.CenterCrop(IMAGE_SIZE), T.ToTensor(), T.Normalize(MEAN, STD)])


def model_name_for(se_stages: Sequence[int]) -> str:
    """``se_resnet50_tiny100`` with all SE; ``..._nose5`` without stage 5; ``..._se3`` with SE only in stage 3."""
    kept = sorted(set(se_stages))
    missing = [s for s in ALL_SE_STAGES if s not in kept]
    if not missing:
        return MODEL_NAME
    if len(kept) == 1:
        return f"{MODEL_NAME}_se{kept[0]}"
    return f"{MODEL_NAME}_nose{''.join(map(str, missing))}"
