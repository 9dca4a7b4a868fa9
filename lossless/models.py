"""Backbones and heads (paper sections 3.2-3.4, Figure 1, and the Experiments' VGG-16).

The paper's *custom ResNet-34*: a torchvision-style ResNet with BasicBlocks [3, 4, 6, 3] whose
first convolution is 3x3 with stride 1 (not 7x7 / 2) so that 96-px images keep their detail;
batch norm, ReLU and the 3x3 / 2 max-pool follow as usual, and the network ends at global
average pooling with 512 features (no ``fc``). The paper's text says a 6x6 map reaches the
pooling layer at 96 px, which is what stride 2 in layer4 gives; the authors' code used stride 1
there (12x12). ``layer4_stride`` selects either; the default follows the text.

``width`` scales every stage (64, 128, 256, 512 channels times ``width``) and ``in_channels``
takes grayscale, so the same family runs on 28-px Fashion-MNIST on a laptop CPU.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from .kernels import Conv2d

FEATURE_DIM = 512

@contextlib.contextmanager
def per_view_statistics(views: int, *modules: nn.Module) -> Iterator[None]:
    """Inside, every training-mode batch norm of this module's kind within ``modules``
    normalises each of ``views`` equal chunks of its batch with that chunk's own statistics (and
    updates its running averages once per chunk, in order), exactly as if each view went through
    the network alone. So the views of a self-supervised step can share one pass (batch-512
    convolutions instead of two batch-256 ones, faster on a CPU) without changing what the
    method computes. Each norm's ``views`` attribute says how many chunks it splits into."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, _PerViewNorm)]
    before = [m.views for m in norms]
    for m in norms:
        m.views = views
    try:
        yield
    finally:
        for m, v in zip(norms, before):
            m.views = v


class _PerViewNorm:
    views = 1  # how many views a batch holds, stacked along dim 0 (set by ``per_view_statistics``)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.views == 1 or not (self.training or self.running_mean is None):
            return super().forward(x)
        if x.shape[0] % self.views:
            raise ValueError(f"a batch of {x.shape[0]} does not split into {self.views} equal views")
        return torch.cat([super(_PerViewNorm, self).forward(c) for c in x.chunk(self.views)])


class BatchNorm2d(_PerViewNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters and state dict) that honours ``per_view_statistics``."""


class BatchNorm1d(_PerViewNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (same parameters and state dict) that honours ``per_view_statistics``."""


def per_view_ready(*modules: nn.Module) -> bool:
    """Whether every batch norm in ``modules`` splits its statistics by view (not, for example,
    after DDP has made them synchronised ones)."""
    norms = [m for mod in modules for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return all(isinstance(m, _PerViewNorm) for m in norms)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al., 2016)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), BatchNorm2d(cout)
        self.conv2, self.bn2 = conv3x3(cout, cout), BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # each residual branch starts as the identity
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """ResNet backbone with the paper's 3x3 stride-1 stem; ``forward`` returns (B, feature_dim)."""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), in_channels: int = 3, width: float = 1.0,
                 layer4_stride: int = 2, maxpool: bool = True):
        super().__init__()
        widths = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
        pool = nn.MaxPool2d(3, stride=2, padding=1) if maxpool else nn.Identity()
        self.stem = nn.Sequential(conv3x3(in_channels, widths[0]), BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True), pool)
        stages, cin = [], widths[0]
        for i, (n, cout) in enumerate(zip(layers, widths)):
            stride = (1, 2, 2, layer4_stride)[i]
            blocks = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.forward_maps(x)), 1)


VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")
# the other reading of "dropped the last CNN layer": VGG-16's thirteenth convolution dropped, its
# five pools kept (the paper resized its images to 84 x 84, which five pools leave at 2 x 2)
VGG16_5POOL_LAYERS = VGG16_LAYERS + (512, 512, "M")


class VGG16(nn.Module):
    """The Experiments section's VGG-16 variant: 3x3 conv + BN + ReLU stacks, max-pools, and a
    single linear layer on the final map giving ``feature_dim`` features. ``layers``:
    :data:`VGG16_LAYERS` (the fifth block dropped: ten convolutions, four pools, 512 x 6 x 6 at
    96 px) or :data:`VGG16_5POOL_LAYERS` (the last convolution dropped: twelve, five pools)."""

    def __init__(self, in_channels: int = 3, image_size: int = 96, width: float = 1.0,
                 feature_dim: int = FEATURE_DIM, layers: tuple = VGG16_LAYERS):
        super().__init__()
        stack, cin = [], in_channels
        for v in layers:
            if v == "M":
                stack.append(nn.MaxPool2d(2))
            else:
                cout = max(8, int(round(v * width)))
                stack += [conv3x3(cin, cout), BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*stack)
        pools = layers.count("M")
        side = image_size // 2 ** pools
        if side < 1:
            raise ValueError(f"this VGG-16 has {pools} pools and needs images of at least {2 ** pools} px, "
                             f"got {image_size} (set image_size)")
        self.fc = nn.Linear(cin * side * side, feature_dim)
        self.feature_dim = feature_dim
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def build_backbone(name: str, in_channels: int = 3, width: float = 1.0, layer4_stride: int = 2,
                   image_size: int = 96, maxpool: bool = True) -> nn.Module:
    """``resnet34`` (the paper's), ``resnet18`` (the SSL baselines'), ``resnet10`` (one block a
    stage: the shallower network of section 4's architecture experiment), ``vgg16`` (its fifth
    block dropped) or ``vgg16-5pool`` (its last convolution dropped; 32 px or more).

    ``maxpool=False`` drops the stem's max-pool (the paper keeps it); on 28-px images it keeps
    a 4x larger map through the network."""
    if name == "resnet34":
        return ResNet((3, 4, 6, 3), in_channels, width, layer4_stride, maxpool)
    if name == "resnet18":
        return ResNet((2, 2, 2, 2), in_channels, width, layer4_stride, maxpool)
    if name == "resnet10":  # a shallower network of the same family: one block per stage
        return ResNet((1, 1, 1, 1), in_channels, width, layer4_stride, maxpool)
    if name == "vgg16":
        return VGG16(in_channels, image_size, width)
    if name == "vgg16-5pool":
        return VGG16(in_channels, image_size, width, layers=VGG16_5POOL_LAYERS)
    raise ValueError(f"unknown backbone {name!r}; choose resnet34, resnet18, resnet10, vgg16 or vgg16-5pool")


class BarlowTwinsProjector(nn.Sequential):
    """Section 3.3: "three linear layers each with 1024 output units"; Linear (no bias) + BN + ReLU
    between them, the last Linear plain. With ``bias=True`` it is the two-layer projection head of
    SimCLR, BYOL and SwAV (and BYOL's predictor): the same shape, biased linear layers."""

    def __init__(self, in_dim: int, sizes: Sequence[int] = (1024, 1024, 1024), bias: bool = False):
        dims = [in_dim, *sizes]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-2], dims[1:-1]):
            layers += [nn.Linear(a, b, bias=bias), BatchNorm1d(b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-2], dims[-1], bias=bias))
        super().__init__(*layers)
        self.out_dim = dims[-1]


def projection_head(in_dim: int, sizes: Sequence[int]) -> BarlowTwinsProjector:
    """Linear + BN + ReLU for each hidden size, then a linear output (biases on)."""
    return BarlowTwinsProjector(in_dim, sizes, bias=True)


class ClassifierHead(nn.Sequential):
    """Section 3.4: two fully connected layers with ReLU between them, projecting the embedding
    to a higher dimension before classifying (Linear 512->1024, ReLU, Dropout 0.3, Linear)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 1024, dropout: float = 0.3):
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))
        for m in self:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)


def describe(backbone: nn.Module, input_shape: Sequence[int]) -> list[dict]:
    """Output shape, parameters and forward GFLOPs of each stage for one image of ``input_shape``
    (C, H, W): the table behind Figure 1."""
    from torch.utils.flop_counter import FlopCounterMode
    stages = [(n, m) for n, m in backbone.named_children() if n not in ("pool",)]
    x = torch.zeros(1, *input_shape)
    rows = []
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        for name, module in stages:
            if name == "fc":
                x = torch.flatten(x, 1)
            with FlopCounterMode(display=False) as counter:
                x = module(x)
            rows.append({"stage": name, "output": list(x.shape[1:]),
                         "params": sum(p.numel() for p in module.parameters()),
                         "gflops": counter.get_total_flops() / 1e9})
    backbone.train(was_training)
    return rows


def forward_flops(module: nn.Module, input_shape: Sequence[int]) -> float:
    """Forward FLOPs for one input of ``input_shape`` (C, H, W), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = module.training
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(2, *input_shape))
    module.train(was_training)
    return counter.get_total_flops() / 2


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["ResNet", "VGG16", "BasicBlock", "build_backbone", "BarlowTwinsProjector",
           "ClassifierHead", "describe", "forward_flops", "count_params"]
