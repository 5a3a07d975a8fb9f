"""The method's per-view residual network (docs/method.md, "The published method").

41 convolutional layers in 12 residual blocks: one stem convolution, four stages of three
bottleneck blocks (three convolutions each, 36 in all), and one 1x1 projection on the
shortcut of each stage's first block (4). Batch normalisation after every convolution,
LeakyReLU activations, global average pooling, optional dropout and a linear head. The
network returns logits; :class:`WithSoftmax` adds the softmax for export, so the deployed
ONNX file outputs scores that sum to 1 like the method's last layer.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """Residual block: output = act(F(x) + shortcut(x)), F = 1x1 -> 3x3 -> 1x1 convs."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, *, stride: int = 1,
                 negative_slope: float = 0.01, norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, bias=False)
        self.bn1 = norm(mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, mid_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(mid_ch)
        self.conv3 = nn.Conv2d(mid_ch, out_ch, 1, bias=False)
        self.bn3 = norm(out_ch)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), norm(out_ch))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


class DensityResNet(nn.Module):
    """Per-view density classifier.

    Parameters
    ----------
    num_classes
        4 for BI-RADS (A-D), 2 for dense / non-dense.
    width
        Channels of the first stage's bottleneck; stages use width x (1, 2, 4, 8) and
        expand by 4 at each block's output.
    blocks_per_stage
        Blocks in each of the four stages; the method's (3, 3, 3, 3) gives 12 blocks and
        41 convolutional layers.
    in_chans
        1 for greyscale mammograms.
    dropout
        Dropout before the linear head (0 disables it).
    """

    def __init__(self, *, num_classes: int = 4, width: int = 16,
                 blocks_per_stage: tuple[int, ...] = (3, 3, 3, 3), in_chans: int = 1,
                 dropout: float = 0.0, negative_slope: float = 0.01,
                 stem_stride: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        stem_ch = width * 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_ch, 7, stride=stem_stride, padding=3, bias=False),
            nn.BatchNorm2d(stem_ch),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        in_ch = stem_ch
        for i, n_blocks in enumerate(blocks_per_stage):
            mid = width * (2 ** i)
            out = mid * 4
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(Bottleneck(in_ch, mid, out, stride=stride,
                                         negative_slope=negative_slope))
                in_ch = out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch
        self._init_weights(negative_slope)

    def _init_weights(self, negative_slope: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=negative_slope, mode="fan_out",
                                        nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each block: every block starts as the identity.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(torch.flatten(self.pool(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class WithSoftmax(nn.Module):
    """Wraps a classifier so that it outputs probabilities (used for ONNX export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def count_conv_layers(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))


def count_residual_blocks(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, Bottleneck))
