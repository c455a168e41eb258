"""pipeline.int8_aware: the fake-INT8 pass rounds each activation the targets quantize to its tracked range and
each weight to its output channel's INT8 grid, and leaves the FP32 pass alone; `train --int8-aware` fine-tunes
with batch-norm statistics frozen and leaves no hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnet_deploy.errors import ConfigError
from resnet_deploy.pipeline.int8_aware import QMAX, FakeInt8, consistency_loss, freeze_bn
from resnet_deploy.pipeline.train import TrainSettings, train

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


def inputs_seen(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """What each Conv2d/Linear receives (hooks added after FakeInt8's, so they see its output)."""
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model(x)
    for h in handles:
        h.remove()
    return seen


def test_the_fake_pass_rounds_each_input_to_int8_steps_of_its_own_range():
    model = small().train()
    freeze_bn(model)
    x = torch.randn(16, 3, 8, 8)
    fake = FakeInt8(model, momentum=0.0, min_clip=1.0)  # range = the last FP32 pass's peak, no clipping
    fp32 = inputs_seen(model, x)
    with fake.active():
        int8 = inputs_seen(model, x)
    assert len(fp32) == len(int8) == 2
    for a, b in zip(fp32, int8):
        scale = float(a.abs().amax()) / QMAX
        steps = b / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3)  # on the INT8 grid
        assert steps.round().unique().numel() <= 2 * QMAX + 1
        assert not torch.equal(a, b)
    scale = float(fp32[0].abs().amax()) / QMAX  # the image: rounding only, as the range holds its peak
    assert float((fp32[0] - int8[0]).abs().amax()) <= scale / 2 + 1e-6
    assert all(torch.equal(a, b) for a, b in zip(fp32, inputs_seen(model, x)))  # off again after the block


def test_a_narrower_clip_saturates_the_largest_inputs():
    model = small().train()
    freeze_bn(model)
    x = torch.randn(16, 3, 8, 8)
    fake = FakeInt8(model, momentum=0.0, min_clip=0.5, gen=torch.Generator().manual_seed(1))
    peak = float(inputs_seen(model, x)[0].abs().amax())
    with fake.active():
        assert 0.5 <= fake.clip <= 1.0
        clipped = inputs_seen(model, x)[0]
    assert float(clipped.abs().amax()) == pytest.approx(peak * fake.clip, rel=1e-3)


def test_the_loss_trains_the_weights_through_the_rounding():
    model = small().train()
    freeze_bn(model)
    fake = FakeInt8(model)
    x = torch.randn(16, 3, 8, 8)
    consistency_loss(model, fake, x, model(x)).backward()
    assert model[0].weight.grad is not None and float(model[0].weight.grad.abs().sum()) > 0


def test_ranges_are_tracked_in_training_passes_only():
    model = small().train()
    fake = FakeInt8(model, momentum=0.0)
    model(torch.ones(2, 3, 8, 8))
    tracked = dict(fake.amax)
    model.eval()(torch.ones(2, 3, 8, 8) * 100)  # e.g. the held-out top-1 after an epoch
    assert fake.amax == tracked


def test_the_loss_measures_how_far_int8_moves_the_prediction():
    model = small().train()
    freeze_bn(model)
    fake = FakeInt8(model, min_clip=1.0)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        logits = model(x)
        loss = float(consistency_loss(model, fake, x, logits))
        fake.amax = {m: a / 20 for m, a in fake.amax.items()}  # ranges a twentieth of the peaks: far worse
        worse = float(consistency_loss(model, fake, x, logits))
    assert 0 < loss < worse
    own = float(torch.nn.functional.cross_entropy(logits, logits.argmax(1)))  # the hard-label part at no change
    assert loss == pytest.approx(own, abs=2e-3) and worse > own + 0.1


def test_settings_refuse_a_negative_weight():
    with pytest.raises(ConfigError, match="--int8-aware"):
        TrainSettings(int8_aware=-1.0)


def test_it_fine_tunes_and_so_needs_a_trained_model():
    with pytest.raises(ConfigError, match="--init-from"):  # refused before any data is read
        TrainSettings(int8_aware=1.0)


def test_freeze_bn_keeps_running_statistics_and_trains_the_affine_weights():
    model = small().train()
    freeze_bn(model)
    bn = model[1]
    before = bn.running_mean.clone()
    model(torch.randn(8, 3, 8, 8) * 5 + 3).sum().backward()
    assert not bn.training and model[0].training and torch.equal(bn.running_mean, before)
    assert bn.weight.grad is not None


def test_training_with_it_writes_plain_weights_and_leaves_no_hook(tmp_path, monkeypatch):
    from test_train import PREP, synthetic

    from resnet_deploy.calibration.sources import FASHION_MNIST_CLASSES, ArraySource
    from resnet_deploy.pipeline.checkpoint import load_model

    images, labels = synthetic(64, seed=0)
    hooked: list[FakeInt8] = []
    real = FakeInt8.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        hooked.append(self)

    monkeypatch.setattr(FakeInt8, "__init__", spy)
    source = ArraySource("tiny", images, labels, FASHION_MNIST_CLASSES)
    start = train(TrainSettings(arch="resnet20", epochs=1, batch_size=32), source, PREP, tmp_path / "start")
    bn = load_model(str(start.weights)).model.bn1
    result = train(TrainSettings(arch="resnet20", epochs=1, batch_size=32, int8_aware=1.0,
                                 init_from=str(start.weights)), source, PREP, tmp_path / "aware")
    # the image, 19 ReLU outputs, 19 batch-norm outputs (frozen, so in eval mode), the pooled features
    assert len(hooked) == 1 and len(hooked[0].amax) == 40
    model = load_model(str(result.weights)).model
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert not any("forward" in vars(m) for m in hooked[0]._layers)  # the weight rounding is gone too
    assert torch.equal(model.bn1.running_mean, bn.running_mean)  # fine-tuned with the statistics frozen
    assert result.history[0]["loss"] > 0


def test_each_call_of_a_shared_relu_has_its_own_range_and_rounded_outputs_are_not_rounded_again():
    from resnet_deploy.models.resnet import Bottleneck

    torch.manual_seed(0)
    block = Bottleneck(64, 16, se=True)  # one ReLU module, called three times; SE before the add
    freeze_bn(block)
    fake = FakeInt8(block)
    block(torch.randn(2, 64, 4, 4))
    assert {call for module, call in fake.amax if module is block.relu} == {0, 1, 2}
    assert (block.se, 0) in fake.amax  # the SE-scaled branch, as it reaches the residual add
    # conv2 and conv3 read ReLU outputs (rounded there); conv1 reads the block input; the SE's fc1 the pooled mean
    assert {module for module, _ in fake.amax if isinstance(module, nn.Conv2d)} == {block.conv1, block.se.fc1}


def test_the_fake_pass_rounds_each_weight_to_its_output_channels_int8_grid_and_trains_through_it():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    with torch.no_grad():
        conv.weight[1] *= 50  # channels far apart: each keeps its own grid
    fake = FakeInt8(conv.eval(), min_clip=1.0)  # eval: no input range tracked, so only the weight is rounded
    x = torch.randn(2, 3, 5, 5)
    fp32 = conv(x)
    with fake.active():
        int8 = conv(x)
    w = conv.weight.detach()
    scale = w.abs().flatten(1).amax(1).view(-1, 1, 1, 1) / (QMAX // 2)
    expected = nn.functional.conv2d(x, (w / scale).round() * scale)  # the input: range still 0, not rounded
    assert torch.allclose(int8, expected, atol=1e-5) and not torch.allclose(int8, fp32, atol=1e-4)
    with fake.active():
        conv(x).sum().backward()  # straight through the rounding
    assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0
    with fake.active():
        positive = conv(x.abs())  # an unsigned input keeps 8 bits; the signed one above got 7, as ORT gives it
    scale = w.abs().flatten(1).amax(1).view(-1, 1, 1, 1) / QMAX
    expected = nn.functional.conv2d(x.abs(), (w / scale).round() * scale)
    assert torch.allclose(positive, expected, atol=1e-5)
    fake.remove()
    assert torch.equal(conv(x), fp32)


def test_frozen_batch_norm_outputs_and_the_se_gate_are_rounded():
    from resnet_deploy.models.resnet import Bottleneck

    torch.manual_seed(0)
    block = Bottleneck(64, 16, se=True).train()
    freeze_bn(block)
    fake = FakeInt8(block)
    block(torch.randn(2, 64, 4, 4))
    rounded = {module for module, _ in fake.amax}
    assert {block.bn1, block.bn2, block.bn3, block.se.gate} <= rounded
