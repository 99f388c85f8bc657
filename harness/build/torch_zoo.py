"""The torch model zoo of the build: the nn.Module architectures behind ``model.arch`` (cnn-small, resnet18,
vgg16-bn, mobilenetv2), each mapping float32 NCHW ``[N, C, H, W]`` to logits ``[N, n_classes]``, and the layers
compression works on (:func:`prunable_layers`)."""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import HarnessError


class CnnSmall(nn.Module):
    """Conv(32)-ReLU-MaxPool -> Conv(64)-ReLU-MaxPool -> Flatten -> Linear(128)-ReLU -> Linear(C) logits."""

    def __init__(self, in_ch: int, n_classes: int, hw: tuple[int, int]) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        flat = 64 * (hw[0] // 4) * (hw[1] // 4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, plus (projected) shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem: 3x3 conv stride 1, no max-pool; stages 64-128-256-512 of 2 BasicBlocks."""

    def __init__(self, in_ch: int, n_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers: list[nn.Module] = []
        cin = 64
        for i, cout in enumerate((64, 128, 256, 512)):
            for j in range(2):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class VGG16BN(nn.Module):
    """VGG-16 with batch norm (CIFAR form): 13 conv3x3-BN-ReLU in 5 stages, each followed by a 2x2 max-pool with
    ceil mode (= Keras ``padding="same"``: 28 -> 14 -> 7 -> 4 -> 2 -> 1), Flatten, Linear(C)."""

    _CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, in_ch: int, n_classes: int, hw: tuple[int, int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, h, w = in_ch, hw[0], hw[1]
        for v in self._CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                h, w = -(-h // 2), -(-w // 2)
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(512 * h * w, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1 project-BN (+ residual)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]  # fmt: skip
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) for small images: the stem conv has stride 1; otherwise the standard settings."""

    _SETTINGS = (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
    )

    def __init__(self, in_ch: int, n_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        cin = 32
        for t, c, n, s in self._SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build_model(arch: str, input_shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    """A fresh, randomly initialised model. ``input_shape`` is (C, H, W); the model maps float32 NCHW
    ``[N, C, H, W]`` to logits ``[N, n_classes]``."""
    c, h, w = input_shape
    if arch == "cnn-small":
        if h < 4 or w < 4:
            raise HarnessError(
                f"model.arch cnn-small needs inputs of at least 4x4 pixels, got {h}x{w}; resize in data.preprocess"
            )
        return CnnSmall(c, n_classes, (h, w))
    if arch == "resnet18":
        return ResNet18(c, n_classes)
    if arch == "vgg16-bn":
        return VGG16BN(c, n_classes, (h, w))
    if arch == "mobilenetv2":
        return MobileNetV2(c, n_classes)
    raise HarnessError(f"model.arch '{arch}' has no torch model; allowed: cnn-small, resnet18, vgg16-bn, mobilenetv2")


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear: the layers whose ``weight`` is pruned or clustered."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
