import pytest
import torch

from lossless.models import (BarlowTwinsProjector, ClassifierHead, build_backbone, count_params, describe)


@pytest.mark.parametrize("stride,side", [(2, 6), (1, 12)])
def test_custom_resnet34_map_at_the_pool(stride, side):
    """Paper 3.2: a 6x6 map reaches the average pool at 96 px (stride 2); the authors' code: 12x12."""
    net = build_backbone("resnet34", layer4_stride=stride)
    rows = describe(net, (3, 96, 96))
    assert rows[0]["output"] == [64, 48, 48]      # 3x3 stride-1 conv, then the 3x3/2 max-pool
    assert rows[-1]["output"] == [512, side, side]
    assert net(torch.zeros(2, 3, 96, 96)).shape == (2, 512)
    assert net.stem[0].kernel_size == (3, 3) and net.stem[0].stride == (1, 1)


def test_resnet_variants_and_width():
    r18 = build_backbone("resnet18")
    assert [len(getattr(r18, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    r34 = build_backbone("resnet34")
    assert [len(getattr(r34, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert 21.2e6 < count_params(r34) < 21.4e6           # torchvision's resnet34 minus fc, 3x3 stem
    small = build_backbone("resnet18", in_channels=1, width=0.25, maxpool=False)
    assert small.feature_dim == 128
    assert describe(small, (1, 28, 28))[0]["output"] == [16, 28, 28]


def test_last_bn_of_each_residual_branch_starts_at_zero():
    net = build_backbone("resnet18")
    for block in net.layer1:
        assert torch.all(block.bn2.weight == 0) and torch.all(block.bn1.weight == 1)
    net.eval()
    x = torch.randn(1, 64, 8, 8).relu()
    assert torch.allclose(net.layer1[0](x), x)           # each block starts as the identity


def test_vgg16_single_linear_on_the_final_map():
    net = build_backbone("vgg16", image_size=96)
    assert describe(net, (3, 96, 96))[0]["output"] == [512, 6, 6]
    assert net.fc.in_features == 512 * 36 and net(torch.zeros(2, 3, 96, 96)).shape == (2, 512)


def test_projector_and_classifier_head():
    proj = BarlowTwinsProjector(512)
    kinds = [type(m).__name__ for m in proj]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert all(m.bias is None for m in proj if isinstance(m, torch.nn.Linear))
    head = ClassifierHead(512, 800)
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert head[2].p == 0.3 and head[0].out_features == 1024
    assert abs(head[0].weight.std().item() - 0.01) < 0.001 and torch.all(head[0].bias == 0)


def _conv(cin, cout, k):
    return cin * cout * k * k  # no biases: every convolution is followed by batch norm


def _bn(c):
    return 2 * c


def _block(cin, cout, stride):
    n = _conv(cin, cout, 3) + _conv(cout, cout, 3) + 2 * _bn(cout)
    return n + (_conv(cin, cout, 1) + _bn(cout) if stride != 1 or cin != cout else 0)


@pytest.mark.parametrize("name,blocks,params", [("resnet18", 2, 699_888), ("resnet10", 1, 307_248)])
def test_resnet_parameters_and_output_against_a_hand_count(name, blocks, params):
    """Grayscale, width 1/4: stages of 16, 32, 64, 128 channels, strides 1, 2, 2, 2."""
    widths = (16, 32, 64, 128)
    count = _conv(1, 16, 3) + _bn(16)
    cin = 16
    for cout, stride in zip(widths, (1, 2, 2, 2)):
        count += _block(cin, cout, stride) + (blocks - 1) * _block(cout, cout, 1)
        cin = cout
    assert count == params                                        # the formula and the arithmetic agree
    net = build_backbone(name, in_channels=1, width=0.25, image_size=28)
    assert sum(p.numel() for p in net.parameters()) == params
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 128)


def test_vgg16_parameters_and_output_against_a_hand_count():
    """Grayscale, width 1/4 at 28 px: the ten convolutions with batch norm, four max-pools leave a
    1 x 1 map, and one linear layer to 512 features."""
    widths = (16, 16, 32, 32, 64, 64, 64, 128, 128, 128)
    convs = [(1, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (64, 64), (64, 128), (128, 128),
             (128, 128)]
    count = sum(_conv(a, b, 3) for a, b in convs) + sum(_bn(c) for c in widths) + 128 * 512 + 512
    assert count == 544_464
    net = build_backbone("vgg16", in_channels=1, width=0.25, image_size=28)
    assert sum(p.numel() for p in net.parameters()) == count
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 512)


def test_vgg16_five_pools_the_other_reading_against_a_hand_count():
    """The other reading of "dropped the last CNN layer": twelve convolutions (the thirteenth
    dropped), five pools; grayscale, width 1/4 at 84 px leaves a 2 x 2 map of 128 channels."""
    widths = (16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128)
    cins = (1,) + widths[:-1]
    count = sum(_conv(a, b, 3) for a, b in zip(cins, widths)) + sum(_bn(c) for c in widths)
    count += 128 * 2 * 2 * 512 + 512
    net = build_backbone("vgg16-5pool", in_channels=1, width=0.25, image_size=84)
    assert sum(p.numel() for p in net.parameters()) == count
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.modules()) == 5
    assert describe(net, (1, 84, 84))[0]["output"] == [128, 2, 2]
    assert net(torch.zeros(2, 1, 84, 84)).shape == (2, 512)
    with pytest.raises(ValueError, match="32 px.*got 28.*image_size"):
        build_backbone("vgg16-5pool", in_channels=1, width=0.25, image_size=28)
