"""pipeline.checkpoint: every layout we accept loads exactly; every bad file is refused with a clear message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import randomize_bn
from safetensors.torch import save_file

from resnet_deploy.errors import CheckpointError, ConfigError
from resnet_deploy.models import build_model, list_archs
from resnet_deploy.pipeline.checkpoint import (
    guess_layout,
    load_model,
    random_model,
    read_checkpoint,
    save_checkpoint,
    save_safetensors,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def resnet20():
    """A resnet20 (10 classes) whose weights and BN statistics differ from a fresh model's."""
    torch.manual_seed(0)
    return randomize_bn(build_model("resnet20", num_classes=10)).eval()


@pytest.fixture(scope="module")
def sample():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def assert_same_model(loaded, reference, sample):
    ref_sd, got_sd = reference.state_dict(), loaded.model.state_dict()
    assert list(got_sd) == list(ref_sd)
    for k in ref_sd:
        torch.testing.assert_close(got_sd[k], ref_sd[k], rtol=0, atol=0, msg=k)
    assert not loaded.model.training
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(sample), reference(sample))


def akamaster_state_dict(model) -> dict[str, torch.Tensor]:
    """The layout of akamaster/pytorch_resnet_cifar10's .th files: DataParallel prefix, fc called linear."""
    return {"module." + k.replace("fc.", "linear."): v.clone() for k, v in model.state_dict().items()}


class TestLayouts:
    @pytest.mark.parametrize("suffix", [".pt", ".pth", ".th", ".tar"])
    def test_torch_suffixes(self, tmp_path, resnet20, sample, suffix):
        path = tmp_path / f"weights{suffix}"
        torch.save(resnet20.state_dict(), path)
        loaded = load_model(path)
        assert (loaded.arch, loaded.num_classes, loaded.in_channels, loaded.shortcut) == ("resnet20", 10, 3, "A")
        assert loaded.source == str(path)
        assert_same_model(loaded, resnet20, sample)

    @pytest.mark.parametrize("nest", [None, "state_dict", "model", "model_state_dict", "net"])
    @pytest.mark.parametrize("prefix", ["", "module."])
    def test_raw_and_nested_state_dicts(self, tmp_path, resnet20, sample, nest, prefix):
        sd = {prefix + k: v for k, v in resnet20.state_dict().items()}
        obj = sd if nest is None else {nest: sd, "epoch": 90, "optimizer": {"lr": 0.1}}
        torch.save(obj, tmp_path / "w.pt")
        assert_same_model(load_model(tmp_path / "w.pt"), resnet20, sample)

    def test_safetensors_raw(self, tmp_path, resnet20, sample):
        save_file({"module." + k: v.contiguous() for k, v in resnet20.state_dict().items()}, tmp_path / "w.safetensors")
        loaded = load_model(tmp_path / "w.safetensors")
        assert loaded.meta == {}
        assert_same_model(loaded, resnet20, sample)

    def test_our_own_writers_round_trip_with_metadata(self, tmp_path, resnet20, sample):
        meta = {"arch": "resnet20", "shortcut": "A",
                "preprocessing": {"input_size": [28, 28], "channels": 1, "mean": [0.5], "std": [0.25]}}
        save_checkpoint(tmp_path / "w.pt", resnet20, meta, epoch=3)
        save_safetensors(tmp_path / "w.safetensors", resnet20, meta)
        for name in ("w.pt", "w.safetensors"):
            loaded = load_model(tmp_path / name)
            assert loaded.meta == meta
            assert_same_model(loaded, resnet20, sample)

    @pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
    def test_akamaster_cifar_checkpoint_loads_into_resnet20(self, tmp_path, resnet20, sample, legacy):
        path = tmp_path / "resnet20-12fca82f.th"
        torch.save({"state_dict": akamaster_state_dict(resnet20), "best_prec1": 91.0}, path,
                   _use_new_zipfile_serialization=not legacy)
        loaded = load_model(path)
        assert (loaded.arch, loaded.num_classes, loaded.shortcut) == ("resnet20", 10, "A")
        assert_same_model(loaded, resnet20, sample)

    def test_checkpoint_from_before_num_batches_tracked_loads(self, tmp_path, resnet20, sample):
        # PyTorch < 0.4.1 wrote no num_batches_tracked; torch's own loader accepts such files.
        sd = {k: v for k, v in akamaster_state_dict(resnet20).items() if not k.endswith("num_batches_tracked")}
        torch.save({"state_dict": sd, "best_prec1": 91.0}, tmp_path / "old.th", _use_new_zipfile_serialization=False)
        loaded = load_model(tmp_path / "old.th")
        with torch.inference_mode():
            torch.testing.assert_close(loaded.model(sample), resnet20(sample))

    def test_cifar_projection_shortcut_named_shortcut_is_renamed(self, tmp_path, sample):
        torch.manual_seed(2)
        model = randomize_bn(build_model("resnet20", num_classes=10, shortcut="B")).eval()
        sd = {k.replace(".downsample.", ".shortcut."): v for k, v in model.state_dict().items()}
        torch.save(sd, tmp_path / "b.pt")
        loaded = load_model(tmp_path / "b.pt")
        assert loaded.shortcut == "B"
        assert_same_model(loaded, model, sample)

    def test_num_classes_and_channels_inferred(self, tmp_path):
        model = build_model("resnet20", num_classes=7, in_channels=1)
        torch.save(model.state_dict(), tmp_path / "w.pt")
        loaded = load_model(tmp_path / "w.pt")
        assert (loaded.num_classes, loaded.in_channels) == (7, 1)
        assert loaded.model(torch.randn(1, 1, 28, 28)).shape == (1, 7)

    def test_explicit_matching_flags_are_accepted(self, tmp_path, resnet20):
        torch.save(resnet20.state_dict(), tmp_path / "w.pt")
        assert load_model(tmp_path / "w.pt", arch="ResNet20", num_classes=10, in_channels=3).arch == "resnet20"

    def test_random_model(self):
        loaded = random_model("resnet20", num_classes=4, in_channels=1)
        assert (loaded.arch, loaded.num_classes, loaded.source) == ("resnet20", 4, "random-init")


@pytest.mark.parametrize("arch", list_archs())
def test_arch_guessed_from_keys(arch):
    with torch.device("meta"):  # shapes only: resnet152 costs nothing
        model = build_model(arch, num_classes=5, in_channels=1)
    guess = guess_layout(model.state_dict())
    assert guess == {"arch": arch, "num_classes": 5, "in_channels": 1, "shortcut": model.shortcut}


class TestRefusals:
    """Each bad input: a domain error whose message names the flag to fix."""

    def test_missing_file(self, tmp_path):
        with pytest.raises(CheckpointError, match=r"--checkpoint: .*does not exist"):
            load_model(tmp_path / "nope.pt")

    def test_directory_instead_of_file(self, tmp_path):
        with pytest.raises(CheckpointError, match="--checkpoint"):
            load_model(tmp_path)

    @pytest.mark.parametrize("suffix", [".onnx", ".h5", ".npz", ""])
    def test_unknown_suffix(self, tmp_path, suffix):
        path = tmp_path / f"weights{suffix}"
        path.write_bytes(b"\0" * 16)
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        assert "--checkpoint" in str(err.value) and ".safetensors" in str(err.value) and ".pth" in str(err.value)

    @pytest.mark.parametrize("damage", ["truncated-zip", "truncated-legacy", "garbage", "text", "empty"])
    def test_corrupt_torch_file(self, tmp_path, resnet20, damage):
        good = tmp_path / "good.pt"
        torch.save(resnet20.state_dict(), good, _use_new_zipfile_serialization=damage != "truncated-legacy")
        data = good.read_bytes()
        bad = {
            "truncated-zip": data[: len(data) // 2],
            "truncated-legacy": data[: len(data) // 2],
            "garbage": bytes((i * 73 + 41) % 256 for i in range(4096)),
            "text": b"this is not a checkpoint\n" * 20,
            "empty": b"",
        }[damage]
        path = tmp_path / "bad.pth"
        path.write_bytes(bad)
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        msg = str(err.value)
        assert msg.startswith("--checkpoint:") and "corrupt" in msg
        assert "pickled Python objects" not in msg  # damage is not an attack: do not send the user hunting

    @pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
    def test_truncated_anywhere(self, tmp_path, resnet20, legacy):
        # torch.load fails on damaged files with a zoo of exceptions (IndexError, struct.error,
        # TypeError, AssertionError, ...); every one must reach the user as a CheckpointError.
        good = tmp_path / "good.pt"
        torch.save({"state_dict": resnet20.state_dict(), "best_prec1": 91.0}, good,
                   _use_new_zipfile_serialization=not legacy)
        data = good.read_bytes()
        path = tmp_path / "bad.pt"
        for cut in [*range(1, 600, 7), *range(600, len(data), len(data) // 40)]:
            path.write_bytes(data[:cut])
            with pytest.raises(CheckpointError, match="--checkpoint"):
                load_model(path)

    @pytest.mark.parametrize("damage", ["truncated", "garbage"])
    def test_corrupt_safetensors(self, tmp_path, resnet20, damage):
        good = tmp_path / "good.safetensors"
        save_safetensors(good, resnet20, {})
        data = good.read_bytes()
        path = tmp_path / "bad.safetensors"
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 64)
        with pytest.raises(CheckpointError, match=r"--checkpoint: .*not a readable safetensors"):
            load_model(path)

    def test_safetensors_with_broken_metadata_record(self, tmp_path, resnet20):
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in resnet20.state_dict().items()}, path,
                  metadata={"resnet_deploy": '{"arch": "resnet20",'})
        with pytest.raises(CheckpointError, match=r"--checkpoint: .*not a readable safetensors"):
            load_model(path)

    def test_pickled_code_is_refused_and_never_runs(self, tmp_path, resnet20):
        marker = tmp_path / "pwned"

        class Payload:
            def __reduce__(self):
                return (os.system, (f"echo pwned > {marker}",))

        path = tmp_path / "evil.pt"
        torch.save({"state_dict": resnet20.state_dict(), "extra": Payload()}, path)
        assert not marker.exists()  # saving only records the call
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        msg = str(err.value)
        assert msg.startswith("--checkpoint:") and "pickled Python objects" in msg
        assert "system" in msg  # names what was refused
        assert not marker.exists()

    def test_arbitrary_class_instance_is_refused(self, tmp_path, resnet20):
        torch.save({"state_dict": resnet20.state_dict(), "args": Path("/tmp")}, tmp_path / "w.pt")
        with pytest.raises(CheckpointError, match="pickled Python objects"):
            load_model(tmp_path / "w.pt")

    def test_another_architecture(self, tmp_path, resnet20):
        torch.save(resnet20.state_dict(), tmp_path / "w.pt")
        with pytest.raises(CheckpointError) as err:
            load_model(tmp_path / "w.pt", arch="resnet32")
        msg = str(err.value)
        assert "--checkpoint" in msg and "resnet32" in msg and "missing keys" in msg
        assert "--arch resnet20" in msg

    def test_imagenet_weights_for_cifar_arch(self, tmp_path):
        torch.save(build_model("resnet18", num_classes=10).state_dict(), tmp_path / "w.pt")
        with pytest.raises(CheckpointError, match="--arch resnet18"):
            load_model(tmp_path / "w.pt", arch="resnet20")

    def test_other_class_count_suggests_the_flag_that_fits(self, tmp_path, resnet20):
        torch.save(resnet20.state_dict(), tmp_path / "w.pt")
        with pytest.raises(CheckpointError) as err:
            load_model(tmp_path / "w.pt", num_classes=100)
        msg = str(err.value)
        assert "--num-classes 10" in msg and "fc.weight (10, 64) vs (100, 64)" in msg

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
    def test_non_finite_weights(self, tmp_path, resnet20, bad):
        sd = {k: v.clone() for k, v in resnet20.state_dict().items()}
        sd["layer2.1.conv1.weight"][0, 0, 0, 0] = bad
        torch.save(sd, tmp_path / "w.pt")
        with pytest.raises(CheckpointError) as err:
            load_model(tmp_path / "w.pt")
        assert "--checkpoint" in str(err.value) and "NaN or Inf" in str(err.value)
        assert "layer2.1.conv1.weight" in str(err.value)

    def test_unknown_arch_flag(self, tmp_path, resnet20):
        torch.save(resnet20.state_dict(), tmp_path / "w.pt")
        with pytest.raises(ConfigError, match=r"--arch.*resnet18, resnet34"):
            load_model(tmp_path / "w.pt", arch="vgg16")

    def test_unrecognised_network_asks_for_arch(self, tmp_path):
        torch.save({"encoder.weight": torch.zeros(3, 3), "head.bias": torch.zeros(3)}, tmp_path / "w.pt")
        with pytest.raises(CheckpointError, match="Pass --arch"):
            load_model(tmp_path / "w.pt")

    @pytest.mark.parametrize("obj", [[torch.zeros(1)], torch.zeros(3)], ids=["list", "tensor"])
    def test_not_a_dict(self, tmp_path, obj):
        torch.save(obj, tmp_path / "w.pt")
        with pytest.raises(CheckpointError, match=r"--checkpoint: .*not a state dict"):
            read_checkpoint(tmp_path / "w.pt")

    def test_dict_without_tensors(self, tmp_path):
        torch.save({"epoch": 3, "best_prec1": 91.0}, tmp_path / "w.pt")
        with pytest.raises(CheckpointError, match=r"--checkpoint: .*holds no tensors"):
            read_checkpoint(tmp_path / "w.pt")
