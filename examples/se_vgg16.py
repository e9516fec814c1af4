"""SE-VGG-16, written the way a user would: VGG-16 (with batch norm) and an SE block after every conv's ReLU.

Hu et al. (SENet, Sec. 6.5 / Table 7 of the journal version) add SE blocks to VGG-16 after the non-linearity that
follows each of its 13 convolutions; reduction ratio 16. Load it with random weights::

    senet-viz ... --model examples/se_vgg16.py:build --allow-code

``build(se=False)`` is the plain VGG-16-BN, for comparing parameter counts.
"""

from __future__ import annotations

from torch import nn

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class SELayer(nn.Module):
    """The classic hand-written SE layer: global average pool, FC C -> C/r, ReLU, FC -> C, sigmoid, rescale."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x):
        b, c = x.shape[:2]
        y = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * y


class VGG16(nn.Module):
    def __init__(self, num_classes: int = 1000, se: bool = True, reduction: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            if se:
                layers.append(SELayer(v, reduction))
            in_channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def build(se: bool = True, num_classes: int = 1000) -> VGG16:
    return VGG16(num_classes=num_classes, se=se)
