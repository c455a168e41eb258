"""resnet_deploy.models: parameter counts, shapes, shortcuts and torchvision's key layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnet_deploy.errors import ConfigError
from resnet_deploy.models import build_model, get_arch, list_archs
from resnet_deploy.models.resnet import BasicBlock, Bottleneck, ZeroPadShortcut

pytestmark = pytest.mark.usefixtures("torch_one_thread")

EXPECTED_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                  "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                  "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
                  "seresnet50", "seresnext50_32x4d", "resnet26d", "resnet50d", "seresnext26d_32x4d"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(arch: str, **kwargs) -> nn.Module:
    """Shapes and names without allocating or initialising weights (resnet152 in milliseconds)."""
    with torch.device("meta"):
        return build_model(arch, **kwargs)


class TestRegistry:
    def test_lists_every_architecture(self):
        assert list_archs() == EXPECTED_ARCHS

    def test_lookup_is_case_insensitive(self):
        assert get_arch("ResNet20").name == "resnet20"

    def test_unknown_arch_lists_known_names(self):
        with pytest.raises(ConfigError) as err:
            build_model("resnet19")
        msg = str(err.value)
        assert "'resnet19'" in msg and "--arch" in msg
        assert all(name in msg for name in EXPECTED_ARCHS)

    @pytest.mark.parametrize("kwargs, flag", [
        ({"num_classes": 0}, "--num-classes"),
        ({"in_channels": 2}, "channels"),
        ({"shortcut": "C"}, "Shortcut"),
    ])
    def test_bad_options_raise_config_error(self, kwargs, flag):
        with pytest.raises(ConfigError, match=flag):
            build_model("resnet20", **kwargs)

    @pytest.mark.parametrize("arch", [a for a in EXPECTED_ARCHS if a[len("resnet"):].isdigit()])
    def test_depth_in_the_name_counts_weighted_layers(self, arch):
        # He et al. count convolutions on the main path plus the classifier; projections are extra.
        model = on_meta(arch)
        main_path = [n for n, m in model.named_modules()
                     if isinstance(m, (nn.Conv2d, nn.Linear)) and "downsample" not in n]
        assert len(main_path) == int(arch.removeprefix("resnet"))
        assert model.arch == arch


class TestParameterCounts:
    @pytest.mark.parametrize("arch, expected", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
    def test_imagenet_models_match_torchvision(self, arch, expected):
        assert n_params(on_meta(arch, num_classes=1000)) == expected

    # The paper's table 6 and akamaster/pytorch_resnet_cifar10: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M.
    @pytest.mark.parametrize("arch, paper, exact", [
        ("resnet20", 0.27e6, 269_722),
        ("resnet32", 0.46e6, 464_154),
        ("resnet44", 0.66e6, 658_586),
        ("resnet56", 0.85e6, 853_018),
        ("resnet110", 1.7e6, 1_727_962),
    ])
    def test_cifar_models_match_the_paper(self, arch, paper, exact):
        count = n_params(on_meta(arch, num_classes=10))
        assert count == exact
        assert count == pytest.approx(paper, rel=0.03)


class TestOutputShapes:
    # Each family and block type with 1 and 3 channels; class counts vary across the cases.
    @pytest.mark.parametrize("arch, size, in_channels, num_classes", [
        ("resnet18", 64, 3, 1000),
        ("resnet18", 64, 1, 10),
        ("resnet50", 64, 3, 2),
        ("resnet50", 32, 1, 1000),
        ("resnet20", 32, 3, 10),
        ("resnet20", 28, 1, 1),
        ("resnet32", 32, 1, 100),
        ("resnet32", 28, 3, 10),
    ])
    def test_logits_shape(self, arch, size, in_channels, num_classes):
        model = build_model(arch, num_classes=num_classes, in_channels=in_channels).eval()
        with torch.inference_mode():
            out = model(torch.randn(2, in_channels, size, size))
        assert out.shape == (2, num_classes)
        assert torch.isfinite(out).all()

    def test_non_square_input(self):
        model = build_model("resnet20", num_classes=7).eval()
        with torch.inference_mode():
            assert model(torch.randn(3, 3, 40, 24)).shape == (3, 7)

    def test_features_and_head_compose_forward(self):
        model = build_model("resnet20", num_classes=10).eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.inference_mode():
            feats = model.forward_features(x)
            assert feats.shape == (2, 64, 8, 8)
            torch.testing.assert_close(model.forward_head(feats), model(x))


class TestShortcuts:
    def test_cifar_default_is_option_a_without_parameters(self):
        model = build_model("resnet20", num_classes=10)
        assert model.shortcut == "A"
        assert not any("downsample" in k for k in model.state_dict())
        shortcuts = [m for m in model.modules() if isinstance(m, ZeroPadShortcut)]
        assert len(shortcuts) == 2  # the first block of stages 2 and 3
        assert all(not list(s.parameters()) and not list(s.buffers()) for s in shortcuts)

    def test_option_a_splits_zero_channels_like_akamaster(self):
        x = torch.randn(2, 16, 8, 8)
        out = ZeroPadShortcut(16, 32, 2)(x)
        # akamaster's LambdaLayer: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
        reference = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 32 // 4, 32 // 4), "constant", 0)
        torch.testing.assert_close(out, reference, rtol=0, atol=0)
        assert out.shape == (2, 32, 4, 4)
        assert (out[:, :8] == 0).all() and (out[:, 24:] == 0).all()
        torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])

    def test_option_a_uneven_padding_puts_the_extra_channel_last(self):
        out = ZeroPadShortcut(3, 6, 1)(torch.ones(1, 3, 2, 2))
        assert out[0, :, 0, 0].tolist() == [0, 1, 1, 1, 0, 0]

    def test_option_a_block_adds_the_padded_input(self):
        block = BasicBlock(16, 32, stride=2, shortcut="A").eval()
        x = torch.randn(1, 16, 8, 8)
        with torch.inference_mode():
            main = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
            expected = torch.relu(main + F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)))
            torch.testing.assert_close(block(x), expected)

    def test_option_b_is_a_projection_named_like_torchvision(self):
        model = build_model("resnet20", num_classes=10, shortcut="B")
        assert model.shortcut == "B"
        down = model.layer2[0].downsample
        assert isinstance(down, nn.Sequential) and len(down) == 2
        assert isinstance(down[0], nn.Conv2d) and down[0].kernel_size == (1, 1) and down[0].stride == (2, 2)
        assert down[0].bias is None
        assert isinstance(down[1], nn.BatchNorm2d)
        sd = model.state_dict()
        assert sd["layer2.0.downsample.0.weight"].shape == (32, 16, 1, 1)
        assert sd["layer3.0.downsample.1.running_var"].shape == (64,)
        assert model.layer1[0].downsample is None  # identity where the shape does not change
        assert n_params(model) > n_params(build_model("resnet20", num_classes=10))

    def test_imagenet_default_is_option_b(self):
        assert on_meta("resnet18").shortcut == "B"


def torchvision_keys(layers: list[int], bottleneck: bool) -> list[str]:
    """torchvision.models.resnet's state_dict keys, in order, written out from its naming scheme."""
    def bn(prefix: str) -> list[str]:
        return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]

    keys = ["conv1.weight", *bn("bn1")]
    in_planes = 64
    for stage, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        out_planes = planes * (4 if bottleneck else 1)
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            convs = 3 if bottleneck else 2
            for c in range(1, convs + 1):
                keys += [f"{p}.conv{c}.weight", *bn(f"{p}.bn{c}")]
            stride = 2 if stage > 1 and b == 0 else 1
            if b == 0 and (stride != 1 or in_planes != out_planes):
                keys += [f"{p}.downsample.0.weight", *bn(f"{p}.downsample.1")]
            in_planes = out_planes
    return [*keys, "fc.weight", "fc.bias"]


class TestTorchvisionLayout:
    def test_resnet18_keys_equal_torchvision(self):
        expected = torchvision_keys([2, 2, 2, 2], bottleneck=False)
        assert len(expected) == 122
        assert expected[:8] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                                "bn1.num_batches_tracked", "layer1.0.conv1.weight", "layer1.0.bn1.weight"]
        assert "layer2.0.downsample.0.weight" in expected and "layer1.0.downsample.0.weight" not in expected
        assert list(on_meta("resnet18").state_dict()) == expected

    def test_resnet50_keys_equal_torchvision(self):
        expected = torchvision_keys([3, 4, 6, 3], bottleneck=True)
        assert "layer1.0.downsample.0.weight" in expected  # 64 -> 256 channels needs a projection
        assert list(on_meta("resnet50").state_dict()) == expected

    @pytest.mark.parametrize("key, shape", [
        ("conv1.weight", (64, 3, 7, 7)),
        ("layer1.0.conv1.weight", (64, 64, 3, 3)),
        ("layer2.0.conv1.weight", (128, 64, 3, 3)),
        ("layer2.0.downsample.0.weight", (128, 64, 1, 1)),
        ("layer4.1.bn2.running_var", (512,)),
        ("fc.weight", (1000, 512)),
        ("fc.bias", (1000,)),
    ])
    def test_resnet18_shapes(self, key, shape):
        assert on_meta("resnet18").state_dict()[key].shape == shape

    def test_bottleneck_carries_the_stride_in_the_3x3_like_torchvision_v1_5(self):
        block = on_meta("resnet50").layer2[0]
        assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


class TestZeroInitResidual:
    """``ResNet.zero_init_residual`` (training's default): every block starts as its shortcut."""

    @pytest.mark.parametrize("arch", ["resnet20", "resnet26d", "seresnext26d_32x4d"])
    def test_each_block_starts_as_its_shortcut(self, arch) -> None:
        torch.manual_seed(0)
        model = build_model(arch, num_classes=10).eval()
        model.zero_init_residual()
        blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
        assert len(blocks) >= 4
        with torch.no_grad():
            for block in blocks:  # identity, projection, zero-pad and average-pool shortcuts, SE or not
                x = torch.randn(2, block.conv1.in_channels, 8, 8)
                identity = x if block.downsample is None else block.downsample(x)
                assert torch.allclose(block(x), torch.relu(identity), atol=1e-6)
        before = build_model(arch, num_classes=10).eval()  # without the call: the paper's init, branches live
        block = next(m for m in before.modules() if isinstance(m, (BasicBlock, Bottleneck)))
        x = torch.randn(2, block.conv1.in_channels, 8, 8)
        identity = x if block.downsample is None else block.downsample(x)
        with torch.no_grad():
            assert not torch.allclose(block(x), torch.relu(identity), atol=1e-3)

    def test_training_uses_it_unless_told_not_to(self) -> None:
        from click.testing import CliRunner

        from resnet_deploy.cli import main
        from resnet_deploy.pipeline.train import TrainSettings

        assert TrainSettings().zero_init_residual is True
        text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
        assert "--zero-init-residual / --no-zero-init-residual" in text
