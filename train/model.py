"""The method's per-view residual network (docs/method.md, "The published method").

41 convolutional layers in 12 residual blocks: one stem convolution, four stages of three
bottleneck blocks (three convolutions each, 36 in all), and one 1x1 projection on the
shortcut of each stage's first block (4). Batch normalisation after every convolution,
LeakyReLU activations, global average pooling, optional dropout and a linear head. The
network returns logits; :class:`WithSoftmax` adds the softmax for export, so the deployed
ONNX file outputs scores that sum to 1 like the method's last layer.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


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
                 stem_stride: int = 2, head: str = "pool") -> None:
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
        if head == "pool":
            self.head: nn.Module = nn.Linear(in_ch, num_classes)
        elif head == "density-map":
            self.head = DensityMapHead(in_ch, num_classes)
        else:
            raise ValueError(f"unknown head {head!r}")
        self.num_features = in_ch
        self._init_weights(negative_slope)
        if isinstance(self.head, DensityMapHead):
            self.head.reset_parameters()  # its own initialisation, not the He init above

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
        if isinstance(self.head, DensityMapHead):
            return self.head(self.dropout(x))
        return self.head(self.dropout(torch.flatten(self.pool(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class DensityMapHead(nn.Module):
    """Percent density as the network's bottleneck (``--head density-map``).

    Two 1x1 convolutions with a sigmoid map the last feature map to a dense-tissue map and
    a breast map; their ratio ``s = sum(dense * breast) / sum(breast)`` is a share of dense
    tissue in (0, 1). Ordered thresholds ``t_1 < ... < t_{K-1}`` on ``s`` give the classes
    (cumulative logistic: ``P(class >= k) = sigmoid(a (s - t_k))``). Returns
    log-probabilities, so a softmax of the output gives the class probabilities back and
    every loss, calibration and export step treats it like logits.
    """

    def __init__(self, in_ch: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError("a density map needs at least two classes")
        self.maps = nn.Conv2d(in_ch, 2, 1)
        steps = num_classes - 1
        # thresholds start evenly spread over (0, 1); the gaps stay positive (softplus)
        gap = 1.0 / (steps + 1)
        self.first = nn.Parameter(torch.tensor(gap))
        self.gaps = nn.Parameter(torch.full((steps - 1,), math.log(math.expm1(gap))))
        self.log_slope = nn.Parameter(torch.tensor(math.log(4.0 / gap)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small map weights: both maps start near 0.5 everywhere, so every image's share
        starts in the middle of the thresholds (with the network's He initialisation the
        maps spread over 0.1-0.95 at random, a share unrelated to the image)."""
        nn.init.normal_(self.maps.weight, std=0.01)
        nn.init.zeros_(self.maps.bias)

    def thresholds(self) -> torch.Tensor:
        return torch.cat([self.first.view(1),
                          self.first + torch.cumsum(F.softplus(self.gaps), 0)])

    def share(self, x: torch.Tensor) -> torch.Tensor:
        """The dense share ``s`` of each image, shape (N,)."""
        maps = torch.sigmoid(self.maps(x))
        dense, breast = maps[:, 0], maps[:, 1]
        return (dense * breast).sum((1, 2)) / (breast.sum((1, 2)) + 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.share(x)
        above = torch.sigmoid(torch.exp(self.log_slope) *
                              (s[:, None] - self.thresholds()[None, :]))  # P(class >= k)
        ones = torch.ones_like(above[:, :1])
        cumulative = torch.cat([ones, above, torch.zeros_like(ones)], 1)
        probs = (cumulative[:, :-1] - cumulative[:, 1:]).clamp_min(1e-6)
        return torch.log(probs)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block (two 3x3 convolutions), same parameter names."""

    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride,
                                                      bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 with torchvision's module names (``conv1``, ``layer1``..``layer4``, ``fc``).

    A torchvision / timm ``resnet18`` state dict loads into it by key
    (:func:`load_init_weights`; the RGB stem is summed to one grey channel).
    """

    def __init__(self, *, num_classes: int = 4, in_chans: int = 1, dropout: float = 0.0,
                 base: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = base
        for i in range(4):
            out_ch = base * 2 ** i
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(in_ch, out_ch, stride),
                                                         BasicBlock(out_ch, out_ch)))
            in_ch = out_ch
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1) -> nn.Sequential:
    """Conv -> BN -> ReLU6, numbered 0 / 1 / 2 as torchvision numbers them."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2,
                                   groups=groups, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion (absent when ``expand`` is 1), 3x3 depthwise,
    1x1 linear projection; the input is added back when the shape allows."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = [_conv_bn_act(in_ch, hidden, 1)] if expand != 1 else []
        layers += [_conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion, output channels, blocks, first block's stride) of MobileNetV2's stages
_MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with torchvision's parameter names (``features.N``,
    ``classifier.1``), so a torchvision ``mobilenet_v2`` state dict loads by key
    (:func:`load_init_weights`; the RGB stem is summed to one grey channel).

    About 0.3 GFLOP an image at 224 px against 1.8 for :class:`ResNet18`: the light
    pretrained backbone for fine-tuning on a CPU.
    """

    def __init__(self, *, num_classes: int = 4, in_chans: int = 1, dropout: float = 0.2
                 ) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = [_conv_bn_act(in_chans, 32, 3, 2)]
        ch = 32
        for expand, out_ch, blocks, stride in _MOBILENET_V2_STAGES:
            for i in range(blocks):
                layers.append(InvertedResidual(ch, out_ch, stride if i == 0 else 1, expand))
                ch = out_ch
        layers.append(_conv_bn_act(ch, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.num_features = 1280
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.classifier(x)


def build_network(arch: str = "density-resnet", *, num_classes: int = 4, width: int = 16,
                  dropout: float = 0.0, head: str = "pool") -> nn.Module:
    """The network named ``arch`` (``density-resnet``: the method's; ``resnet18``;
    ``mobilenet_v2``); ``head``: ``pool`` (global average pool + linear) or
    ``density-map`` (:class:`DensityMapHead`, density-resnet only)."""
    if arch == "density-resnet":
        return DensityResNet(num_classes=num_classes, width=width, dropout=dropout, head=head)
    if head != "pool":
        raise ValueError(f"--head {head} is built for density-resnet only, not {arch}")
    if arch == "resnet18":
        return ResNet18(num_classes=num_classes, dropout=dropout)
    if arch == "mobilenet_v2":
        return MobileNetV2(num_classes=num_classes, dropout=dropout)
    raise ValueError(f"unknown architecture {arch!r}")


_PREFIXES = ("module.", "model.", "backbone.", "encoder.")


def load_init_weights(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Load weights a site brings into ``model`` by key and shape; returns the counts.

    ``path`` holds a state dict, or a checkpoint with one under ``model`` / ``state_dict``
    (an earlier run of this project, a torchvision or timm ResNet). Wrapper prefixes
    (``module.``, ``model.``, ...) are stripped; a 3-channel (RGB) first convolution is
    summed to the model's one grey channel; tensors whose shape differs (e.g. a classifier
    head with another number of classes) are skipped and stay freshly initialised. Raises
    ``ValueError`` when no tensor matches (the wrong architecture).
    """
    obj = torch.load(Path(path), map_location="cpu", weights_only=False)
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: no state dict inside")
    own = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    skipped = 0
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = key
        for prefix in _PREFIXES:
            if name.startswith(prefix) and name[len(prefix):] in own:
                name = name[len(prefix):]
        target = own.get(name)
        if target is None:
            skipped += 1
            continue
        if (value.ndim == 4 and target.ndim == 4 and value.shape[1] == 3
                and target.shape[1] == 1 and value.shape[0] == target.shape[0]):
            value = value.sum(1, keepdim=True)  # RGB stem -> grey
        if value.shape != target.shape:
            skipped += 1
            continue
        loaded[name] = value.to(target.dtype)
    if not loaded:
        raise ValueError(f"{path}: none of its {len(obj)} tensors match the model's keys and "
                         "shapes (another architecture? see --arch)")
    own.update(loaded)
    model.load_state_dict(own)
    return {"loaded": len(loaded), "skipped": skipped, "model_tensors": len(own)}


class WithSoftmax(nn.Module):
    """Wraps a classifier so that it outputs probabilities (used for ONNX export).

    ``temperature`` (from calibration) divides the logits before the softmax.
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return torch.softmax(logits, dim=1)


class Ensemble(nn.Module):
    """Mean of several networks' probabilities (the K fold models of a cross-validation).

    Each member keeps its own input normalisation and temperature: the input is the
    preprocessed image in [0, 1] mapped by ``(x - mean) / std`` of the registry manifest;
    each member undoes that and applies its own training normalisation.
    """

    def __init__(self, members: list[nn.Module], normalisations: list[tuple[float, float]],
                 temperatures: list[float], *, input_mean: float = 0.0,
                 input_std: float = 1.0) -> None:
        super().__init__()
        if not members or not len(members) == len(normalisations) == len(temperatures):
            raise ValueError("an ensemble needs members with one normalisation and one "
                             "temperature each")
        self.members = nn.ModuleList(members)
        self.norms = [(float(m), float(s)) for m, s in normalisations]
        self.temperatures = [float(t) for t in temperatures]
        self.input_mean, self.input_std = float(input_mean), float(input_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = x * self.input_std + self.input_mean
        total = None
        for model, (mean, std), t in zip(self.members, self.norms, self.temperatures,
                                         strict=True):
            p = torch.softmax(model((raw - mean) / std) / t, dim=1)
            total = p if total is None else total + p
        assert total is not None
        return total / len(self.members)


def count_conv_layers(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))


def count_residual_blocks(model: nn.Module) -> int:
    """Blocks whose input is added back to their output."""
    return sum(1 for m in model.modules()
               if isinstance(m, Bottleneck | BasicBlock)
               or (isinstance(m, InvertedResidual) and m.use_residual))


def activation_name(model: nn.Module) -> str:
    """The network's activation as the model card names it."""
    for kind, name in ((nn.LeakyReLU, "LeakyReLU"), (nn.ReLU6, "ReLU6"), (nn.ReLU, "ReLU")):
        if any(isinstance(m, kind) for m in model.modules()):
            return name
    return "?"
