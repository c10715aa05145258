"""A ResNet with a small-image stem, saved and loaded with ``huggingface_hub``'s ``PyTorchModelHubMixin``.

This file depends only on torch and huggingface_hub, so an export loads back without
mmssl's training code::

    from domains.image.resnet import SmallResNet
    model = SmallResNet.from_pretrained("runs/simclr/export")   # or a Hub repo id
    features = model(images).mean((2, 3))                     # [B, D]

The architecture is He et al. (2016)'s ResNet-18/34 (basic blocks, stages of width
``w, 2w, 4w, 8w``) with the stem SimCLR used for CIFAR: one 3x3 stride-1 convolution and no
max-pool, so 28x28 or 32x32 inputs are not downsampled by 4 before the first stage.
"""

from __future__ import annotations

from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
            if stride != 1 or in_ch != out_ch
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module, PyTorchModelHubMixin, library_name="mmssl", tags=["image-feature-extraction", "resnet"]):
    """ResNet-18/34 trunk for small images; ``forward`` returns the last feature map ``[B, 8w, H/8, W/8]``.

    Args:
        in_channels: 1 (grayscale) or 3 (RGB).
        depth: 18 or 34.
        width: channels of the first stage (64 in the original ResNet).
    """

    def __init__(self, in_channels: int = 3, depth: int = 18, width: int = 64) -> None:
        super().__init__()
        if depth not in STAGES:
            raise ValueError(f"resnet depth must be one of {sorted(STAGES)}, got {depth}")
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        blocks: list[nn.Module] = []
        in_ch = width
        for stage, count in enumerate(STAGES[depth]):
            out_ch = width * 2**stage
            for i in range(count):
                blocks.append(BasicBlock(in_ch, out_ch, stride=2 if stage > 0 and i == 0 else 1))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.downsamplings = len(STAGES[depth]) - 1  # stride-2 stages: the feature map is the input / 2**this
        self.out_dim = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in blocks:  # zero-init the last BN of each residual branch (Goyal et al. 2017)
            nn.init.zeros_(block.bn2.weight)

    def forward(self, images: Tensor) -> Tensor:
        return self.blocks(self.stem(images))
