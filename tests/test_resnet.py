"""Our ResNets against torchvision's: same parameters, same keys and shapes, same outputs."""

import pytest
import torch
import torchvision.models as tvm

from retinopathy.models.resnet import BasicBlock, Bottleneck, resnet18, resnet50

PAIRS = [(resnet18, tvm.resnet18), (resnet50, tvm.resnet50)]


@pytest.mark.parametrize(("build", "count"), [(resnet18, 11_689_512), (resnet50, 25_557_032)])
def test_parameter_count_for_1000_classes(build, count):
    assert sum(p.numel() for p in build().parameters()) == count


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_state_dict_keys_and_shapes_match_torchvision(ours, theirs):
    mine = {k: tuple(v.shape) for k, v in ours().state_dict().items()}
    ref = {k: tuple(v.shape) for k, v in theirs().state_dict().items()}
    assert list(mine) == list(ref)
    assert mine == ref


@pytest.mark.slow
@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_same_weights_give_same_logits_both_ways(ours, theirs):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 96)
    ref = theirs().eval()
    mine = ours().eval()
    mine.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(mine(x), ref(x), atol=1e-5, rtol=1e-5)

    # And the reverse: our (freshly initialised) weights drive torchvision's model.
    mine2 = ours().eval()
    ref2 = theirs().eval()
    ref2.load_state_dict(mine2.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ref2(x), mine2(x), atol=1e-5, rtol=1e-5)


def test_output_shape_for_five_grades():
    model = resnet18(num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 3, 64, 64)).shape == (3, 5)


def test_initialisation_like_torchvision():
    model = resnet50()
    bn = model.layer1[0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * k * k)).
    conv = model.layer3[0].conv2
    expected = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)


def test_projection_shortcut_only_where_shape_changes():
    r18, r50 = resnet18(), resnet50()
    assert r18.layer1[0].downsample is None  # 64 -> 64, stride 1: identity
    assert all(r18.__getattr__(f"layer{i}")[0].downsample is not None for i in (2, 3, 4))
    assert all(block.downsample is None for block in r18.layer2[1:])
    assert r50.layer1[0].downsample is not None  # 64 -> 256 widens
    assert isinstance(r18.layer1[0], BasicBlock) and isinstance(r50.layer1[0], Bottleneck)
    # v1.5: the stride sits in the bottleneck's 3x3 convolution.
    assert r50.layer2[0].conv2.stride == (2, 2) and r50.layer2[0].conv1.stride == (1, 1)


@pytest.mark.parametrize(("name", "last_bn"), [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_starts_every_block_as_the_identity(name: str, last_bn: str) -> None:
    from retinopathy.models.build import build_model

    torch.manual_seed(0)
    plain = build_model(name, weights=None)
    torch.manual_seed(0)
    zeroed = build_model(name, weights=None, zero_init_residual=True)
    blocks = [m for m in zeroed.modules() if hasattr(m, last_bn) and hasattr(m, "conv1")]
    assert blocks and all(getattr(b, last_bn).weight.detach().abs().sum().item() == 0 for b in blocks)
    assert all(
        getattr(b, last_bn).weight.detach().abs().sum().item() > 0
        for b in plain.modules()
        if hasattr(b, last_bn) and hasattr(b, "conv1")
    )
    # Every block is the identity plus its shortcut: the residual branch adds nothing at the start.
    zeroed.eval()
    block = zeroed.layer1[1]
    x = torch.rand(1, block.conv1.in_channels, 8, 8)
    assert torch.equal(block(x), torch.relu(x))
