"""The wider ResNet family (ResNeXt, Wide, SE, ResNet-D): torchvision's and timm's layouts and outputs.

tests/fixtures/reference/<arch>.npz were written by scripts/make_reference_fixtures.py from the reference
code itself (torchvision for ResNeXt and Wide ResNet, timm for the SE and "d" models): their state-dict
keys and shapes, parameter count at 1000 classes, 4 real images and their logits once the weights were
filled by ``deterministic_state_dict``. Here our models are filled by the same rule and must agree.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from resnet_deploy.errors import CheckpointError, ConfigError
from resnet_deploy.models import ArchSpec, build_model, get_arch, list_archs, registry
from resnet_deploy.models.resnet import Bottleneck, ResNet
from resnet_deploy.models.squeeze_excite import make_divisible, se_channels
from resnet_deploy.pipeline.checkpoint import guess_layout, load_model, read_features
from resnet_deploy.pipeline.export import export_onnx
from resnet_deploy.pipeline.fold import fold_batchnorm, verify_fold

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"
OLD_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
             "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
# arch: (groups, width_per_group, se, stem, downsample, layers)
FAMILY = {
    "resnext50_32x4d": (32, 4, False, "default", "conv", (3, 4, 6, 3)),
    "resnext101_32x8d": (32, 8, False, "default", "conv", (3, 4, 23, 3)),
    "resnext101_64x4d": (64, 4, False, "default", "conv", (3, 4, 23, 3)),
    "wide_resnet50_2": (1, 128, False, "default", "conv", (3, 4, 6, 3)),
    "wide_resnet101_2": (1, 128, False, "default", "conv", (3, 4, 23, 3)),
    "seresnet50": (1, 64, True, "default", "conv", (3, 4, 6, 3)),
    "seresnext50_32x4d": (32, 4, True, "default", "conv", (3, 4, 6, 3)),
    "seresnext26d_32x4d": (32, 4, True, "deep", "avg", (2, 2, 2, 2)),
    "resnet50d": (1, 64, False, "deep", "avg", (3, 4, 6, 3)),
    "resnet26d": (1, 64, False, "deep", "avg", (2, 2, 2, 2)),
}
# More than a few seconds to save and reload on a 2-core machine: 70-130M parameters.
LARGE = {"resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"}
# Folding and exporting writes and checks a 100-500 MB ONNX file for 50+ layers (4-10 s each here). The two
# 26-layer "d" models run in the fast suite: together they take every new code path (deep stem, average-pooled
# shortcut, SE, grouped 3x3); the others run with `make test-slow`.
FAST_EXPORT = {"resnet26d", "seresnext26d_32x4d"}
# The reference rule for FP32 parity, as for ONNX export: within 1e-4 of the output scale, same top-1.
REL_TOL = 1e-4


def _slow_unless(fast, archs):
    return [a if a in fast else pytest.param(a, marks=pytest.mark.slow) for a in archs]


@pytest.fixture(scope="session")
def fixtures_script():
    """scripts/make_reference_fixtures.py, for its fill rule (it imports torchvision/timm only when run)."""
    spec = importlib.util.spec_from_file_location("make_reference_fixtures",
                                                  ROOT / "scripts" / "make_reference_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_reference_fixtures"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("make_reference_fixtures", None)


def reference(arch: str) -> dict:
    with np.load(FIXTURES / f"{arch}.npz", allow_pickle=False) as z:
        keys = json.loads(str(z["keys"]))
        return {
            "entries": [(k, tuple(shape), getattr(torch, dtype)) for k, shape, dtype in keys],
            "input": torch.from_numpy(z["input"].astype(np.float32)),
            "logits": torch.from_numpy(z["logits"]),
            "meta": json.loads(str(z["meta"])),
        }


def on_meta(arch: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build_model(arch, **kwargs)


def reference_weights(arch: str, fixtures_script) -> dict[str, torch.Tensor]:
    """The state dict the reference model held when it produced the fixture's logits."""
    return fixtures_script.deterministic_state_dict(reference(arch)["entries"])


def filled_model(arch: str, fixtures_script) -> nn.Module:
    """Our model (10 classes) holding the reference's weights; built on meta, so no time goes into init."""
    model = on_meta(arch, num_classes=10).to_empty(device="cpu")
    model.load_state_dict(reference_weights(arch, fixtures_script), strict=True)
    return model.eval()


def assert_logits_match(out: torch.Tensor, ref: torch.Tensor) -> None:
    scale = float(ref.abs().max())
    diff = float((out - ref).abs().max())
    assert diff <= REL_TOL * scale, f"max |diff| {diff:.3g} vs output scale {scale:.3g}"
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_every_family_member_has_a_fixture():
    assert sorted(p.stem for p in FIXTURES.glob("*.npz")) == sorted(FAMILY)


class TestRegistry:
    def test_new_names_follow_the_old_ones(self):
        assert list_archs()[: len(OLD_ARCHS)] == OLD_ARCHS
        assert sorted(list_archs()[len(OLD_ARCHS):]) == sorted(FAMILY)

    @pytest.mark.parametrize("arch", list(FAMILY))
    def test_spec_fields(self, arch):
        groups, width, se, stem, downsample, layers = FAMILY[arch]
        spec = get_arch(arch)
        assert (spec.groups, spec.width_per_group, spec.se, spec.stem, spec.downsample, spec.layers) == (
            groups, width, se, stem, downsample, layers)
        assert (spec.block, spec.family, spec.default_input_size) == ("bottleneck", "imagenet", 224)

    def test_old_specs_keep_their_defaults(self):
        assert (get_arch("resnet50").stem, get_arch("resnet50").downsample, get_arch("resnet50").groups) == (
            "default", "conv", 1)
        assert get_arch("resnet20").stem == "cifar" and get_arch("resnet18").width_per_group == 64
        assert ArchSpec("x", "basic", (1, 1, 1), "cifar", 32).stem == "cifar"  # positional form still works

    @pytest.mark.parametrize("kwargs, needle", [
        ({"block": "basic", "groups": 32}, "basic blocks"),
        ({"block": "basic", "se": True}, "basic blocks"),
        ({"stem": "tiered"}, "stem 'tiered'"),
        ({"downsample": "max"}, "downsample 'max'"),
        ({"family": "cifar", "stem": "deep"}, "does not fit family"),
        ({"groups": 0}, "positive"),
    ])
    def test_invalid_specs_are_refused(self, kwargs, needle):
        fields = {"name": "x", "block": "bottleneck", "layers": (1, 1, 1, 1), "family": "imagenet",
                  "default_input_size": 224, **kwargs}
        with pytest.raises(ConfigError, match=needle):
            ArchSpec(**fields)

    def test_archs_command_lists_the_new_names(self):
        from resnet_deploy.cli import main

        result = CliRunner().invoke(main, ["archs"])
        assert result.exit_code == 0, result.output
        lines = {line.split()[0]: line for line in result.output.splitlines()}
        for arch in FAMILY:  # each with the reference implementation's parameter count
            count = reference(arch)["meta"]["params_1000_classes"]
            assert f"{count / 1e6:.2f}M params (1000 classes)" in lines[arch]


class TestReferenceLayout:
    @pytest.mark.parametrize("arch", list(FAMILY))
    def test_state_dict_keys_shapes_and_order_equal_the_reference(self, arch):
        ours = [(k, tuple(v.shape), v.dtype) for k, v in on_meta(arch, num_classes=10).state_dict().items()]
        assert ours == reference(arch)["entries"]

    @pytest.mark.parametrize("arch", list(FAMILY))
    def test_parameter_count_at_1000_classes_equals_the_reference(self, arch):
        count = sum(p.numel() for p in on_meta(arch).parameters())
        assert count == reference(arch)["meta"]["params_1000_classes"]

    @pytest.mark.parametrize("arch, expected", [("resnext50_32x4d", 25_028_904), ("wide_resnet50_2", 68_883_240)])
    def test_published_parameter_counts(self, arch, expected):
        # torchvision's model cards: ResNeXt-50 32x4d 25,028,904; Wide ResNet-50-2 68,883,240.
        assert sum(p.numel() for p in on_meta(arch).parameters()) == expected

    def test_fixtures_came_from_the_named_reference(self):
        meta = reference("resnext50_32x4d")["meta"]
        assert meta["reference"].startswith("torchvision") and meta["num_classes"] == 10
        assert reference("seresnext26d_32x4d")["meta"]["reference"].startswith("timm")


class TestBlocks:
    def test_se_width_follows_timm(self):
        # 1/16 of the block's output, rounded to a multiple of 8 (timm's make_divisible, round_limit 0).
        assert [se_channels(c) for c in (256, 512, 1024, 2048)] == [16, 32, 64, 128]
        assert se_channels(200) == 16 and se_channels(40) == 8  # 12.5 -> 16; never below the divisor
        assert make_divisible(100, 8) == 104 and make_divisible(10, 8, round_limit=0.9) == 16

    def test_resnext_3x3_is_grouped_with_torchvisions_width(self):
        block = on_meta("resnext101_32x8d").layer3[0]
        width = int(256 * (8 / 64)) * 32  # torchvision: int(planes * base_width / 64) * groups
        assert block.conv2.groups == 32 and block.conv2.weight.shape == (width, width // 32, 3, 3)
        assert block.conv3.weight.shape == (1024, width, 1, 1)

    def test_deep_stem_and_average_pooled_shortcut(self):
        model = on_meta("resnet50d")
        convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
        assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [
            (3, 32, (2, 2)), (32, 32, (1, 1)), (32, 64, (1, 1))]
        pool, conv, bn = model.layer2[0].downsample
        assert isinstance(pool, nn.AvgPool2d) and pool.ceil_mode and not pool.count_include_pad
        assert conv.stride == (1, 1) and isinstance(bn, nn.BatchNorm2d)
        assert isinstance(model.layer1[0].downsample[0], nn.Identity)  # stride 1: nothing to pool

    def test_se_sits_after_bn3_before_the_residual_add(self):
        torch.manual_seed(0)
        block = Bottleneck(64, 16, se=True).eval()
        x = torch.randn(2, 64, 8, 8)
        with torch.inference_mode():
            out = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))))
            gate = torch.sigmoid(block.se.fc2(torch.relu(block.se.fc1(out.mean((2, 3), keepdim=True)))))
            torch.testing.assert_close(block(x), torch.relu(out * gate + x))


class TestReferenceParity:
    @pytest.mark.parametrize("arch", _slow_unless(set(FAMILY) - LARGE, FAMILY))
    def test_logits_equal_the_reference_on_real_images(self, arch, fixtures_script):
        ref = reference(arch)
        with torch.inference_mode():
            out = filled_model(arch, fixtures_script)(ref["input"])
        assert_logits_match(out, ref["logits"])


class TestArchitectureInference:
    @pytest.mark.parametrize("arch", list(FAMILY))
    def test_reference_keys_name_the_arch(self, arch):
        with torch.device("meta"):
            sd = {k: torch.empty(shape, dtype=dtype) for k, shape, dtype in reference(arch)["entries"]}
        assert guess_layout(sd) == {"arch": arch, "num_classes": 10, "in_channels": 3, "shortcut": "B"}

    # Every arch is inferred from its keys above (shapes only); loading a real one end to end (about a second each
    # at ResNet-50 size) runs for the two 26-layer models in the fast suite, which take every code path.
    @pytest.mark.parametrize("arch", _slow_unless(FAST_EXPORT, FAMILY))
    def test_reference_checkpoint_with_module_prefix_loads_and_reproduces_the_logits(
        self, tmp_path, arch, fixtures_script
    ):
        ref = reference(arch)
        path = tmp_path / "weights.pth"
        torch.save({"module." + k: v for k, v in reference_weights(arch, fixtures_script).items()}, path)
        loaded = load_model(path)
        assert (loaded.arch, loaded.num_classes, loaded.in_channels) == (arch, 10, 3)
        with torch.inference_mode():
            assert_logits_match(loaded.model(ref["input"]), ref["logits"])

    def test_an_unknown_combination_names_the_nearest_candidates(self, tmp_path):
        # A ResNeXt-26 with the "d" tweaks but no SE: one feature away from seresnext26d_32x4d.
        with torch.device("meta"):
            model = ResNet(Bottleneck, [2, 2, 2, 2], stem="deep", avg_down=True, groups=32, width_per_group=4)
        sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
        assert "arch" not in guess_layout(sd)
        torch.save(sd, tmp_path / "w.pth")
        with pytest.raises(CheckpointError) as err:
            load_model(tmp_path / "w.pth")
        msg = str(err.value)
        assert msg.startswith("--checkpoint:") and "no known architecture" in msg and "--arch" in msg
        assert "seresnext26d_32x4d (differs in se)" in msg
        assert "groups 32 x width 4" in msg and "stem deep" in msg and "downsample avg" in msg

    def test_an_ambiguous_checkpoint_names_every_candidate(self, tmp_path, monkeypatch):
        twin = dataclasses.replace(get_arch("resnet26d"), name="resnet26d_twin")
        monkeypatch.setitem(registry._ARCHS, twin.name, twin)
        sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in on_meta("resnet26d").state_dict().items()}
        assert "arch" not in guess_layout(sd)
        torch.save(sd, tmp_path / "w.pth")
        with pytest.raises(CheckpointError, match=r"more than one architecture.*resnet26d, resnet26d_twin.*--arch"):
            load_model(tmp_path / "w.pth")

    @pytest.mark.parametrize("arch, feature", [
        ("resnext50_32x4d", "groups"), ("wide_resnet50_2", "width_per_group"), ("seresnet50", "se"),
        ("resnet50d", "stem"),
    ])
    def test_each_feature_is_read_from_the_weights(self, arch, feature):
        # resnet50 differs from each of these in exactly one feature (plus downsample for resnet50d).
        features = read_features(on_meta(arch).state_dict())
        assert feature in features.differences(get_arch("resnet50"))
        assert features.differences(get_arch(arch)) == []


class TestFoldAndExport:
    @pytest.mark.parametrize("arch", _slow_unless(FAST_EXPORT, FAMILY))
    def test_fold_and_onnx_export_keep_the_reference_logits(self, tmp_path, arch, fixtures_script):
        ref = reference(arch)
        model = filled_model(arch, fixtures_script)
        folded, count = fold_batchnorm(model)
        assert count == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        check = verify_fold(model, folded, ref["input"], count)
        assert check.passed
        with torch.inference_mode():
            assert_logits_match(folded(ref["input"]), ref["logits"])
        export = export_onnx(folded, tmp_path / "model.onnx", sample=ref["input"].numpy(), metadata={"arch": arch})
        assert export.top1_equal and export.samples == 4

    def test_avg_pool_shortcut_exports_at_an_odd_feature_size(self, tmp_path, fixtures_script):
        # 56 px: layer3's input is 7x7, so the shortcut's 2x2 ceil-mode pool has a partial window.
        model = filled_model("resnet26d", fixtures_script)
        folded, count = fold_batchnorm(model)
        sample = torch.nn.functional.interpolate(reference("resnet26d")["input"], size=56, mode="bilinear")
        verify_fold(model, folded, sample, count)
        export_onnx(folded, tmp_path / "model.onnx", sample=sample.numpy(), metadata={})
