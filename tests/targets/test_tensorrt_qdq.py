"""The Q/DQ ONNX for TensorRT explicit quantization: structure, calibration rules, and agreement with FP32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from bn_stats import randomize_bn
from onnx import numpy_helper

from resnet_deploy.calibration import qdq
from resnet_deploy.calibration.activation_ranges import entropy_amax, percentile_amax
from resnet_deploy.errors import ConfigError
from resnet_deploy.models import build_model
from resnet_deploy.pipeline.export import export_onnx, run_onnx
from resnet_deploy.pipeline.fold import fold_batchnorm
from resnet_deploy.targets import onnx_session

CIFAR10 = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "cifar10"


def make_qdq_onnx(*args, **kwargs):
    """The Q/DQ writer with the pipeline's ONNX executor, as the TensorRT targets call it."""
    return qdq.make_qdq_onnx(*args, session=onnx_session, **kwargs)


def _export(model: torch.nn.Module, path: Path, sample: np.ndarray) -> Path:
    folded, _ = fold_batchnorm(model.eval())
    export_onnx(folded, path, sample=sample, metadata={"arch": "resnet20"})
    return path


@pytest.fixture(scope="module", params=["A", "B"], ids=["zero-pad-shortcut", "projection-shortcut"])
def quantized(request, tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(f"qdq{request.param}")
    calib = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    model = randomize_bn(build_model("resnet20", num_classes=10, shortcut=request.param), seed=1)
    fp32 = _export(model, folder / "fp32.onnx", calib[:4])
    result = make_qdq_onnx(fp32, folder / "qdq.onnx", calib, method="max")
    return fp32, result, onnx.load(str(result.path)), calib


def _index(model):
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, i))
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    return producer, consumers, inits


def _dequantized(tensor, producer) -> tuple:
    """(DequantizeLinear, QuantizeLinear) feeding ``tensor``, or (None, None)."""
    dq = producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None, None
    q = producer.get(dq.input[0])
    assert q is not None and q.op_type == "QuantizeLinear", "every DequantizeLinear must follow a QuantizeLinear"
    return dq, q


def _axis(node):
    return next((a.i for a in node.attribute if a.name == "axis"), None)


def test_zero_points_are_int8_zero_and_scales_positive(quantized):
    _, _, model, _ = quantized
    _, _, inits = _index(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        scale, zero = inits[n.input[1]], inits[n.input[2]]
        assert zero.dtype == np.int8 and not zero.any(), n.name
        assert scale.dtype == np.float32 and (scale > 0).all(), n.name


def test_every_conv_and_gemm_has_quantized_inputs(quantized):
    _, result, model, _ = quantized
    producer, _, inits = _index(model)
    weighted = [n for n in model.graph.node if n.op_type == "Conv"]
    # resnet20: 19 convs, plus two 1x1 projections with the option-B shortcut
    assert len(weighted) == len(result.weights) in (19, 21)
    # the 10-class classifier (N = 10 < 16) stays float, as ModelOpt leaves it
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert _dequantized(gemm.input[0], producer) == (None, None) and _dequantized(gemm.input[1], producer)[0] is None
    for n in weighted:
        dq, _ = _dequantized(n.input[0], producer)
        assert dq is not None and _axis(dq) is None, f"{n.name}: activation input must be per-tensor Q/DQ"
        assert inits[dq.input[1]].ndim == 0
        wdq, wq = _dequantized(n.input[1], producer)
        assert wdq is not None, f"{n.name}: weights must be Q/DQ"
        weights = inits[wq.input[0]]
        # TensorRT wants the output-channel axis: 0 for Conv (K, C, kh, kw) and Gemm with transB=1 (N, K)
        assert _axis(wq) == _axis(wdq) == 0
        scale = inits[wdq.input[1]]
        assert scale.shape == (weights.shape[0],)
        expected = np.abs(weights.reshape(weights.shape[0], -1)).max(1) / 127.0
        np.testing.assert_allclose(scale, expected.astype(np.float32), rtol=1e-6)
        if len(n.input) > 2:
            assert _dequantized(n.input[2], producer) == (None, None), "biases stay FP32"


def test_gemm_is_torch_linear_with_trans_b(quantized):
    _, _, model, _ = quantized
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert next(a.i for a in gemm.attribute if a.name == "transB") == 1


def test_each_residual_add_quantizes_its_identity_branch_only(quantized):
    _, _, model, _ = quantized
    producer, _, _ = _index(model)
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == 9  # one per BasicBlock
    for add in adds:
        sources = [_dequantized(t, producer)[0] is not None for t in add.input]
        assert sorted(sources) == [False, True], f"{add.name}: exactly the identity input is Q/DQ"
        main = add.input[sources.index(False)]
        assert producer[main].op_type == "Conv", "the unquantized input is the residual branch's last conv"
        identity_q = _dequantized(add.input[sources.index(True)], producer)[1]
        # the shortcut: the block input (a ReLU), the zero-pad shortcut's Pad, or the 1x1 projection conv
        source = producer.get(identity_q.input[0])
        assert source is not None and source.op_type in ("Relu", "Pad", "Conv")
        if source.op_type == "Conv":
            assert source.name != producer[main].name


def test_no_layer_output_is_quantized(quantized):
    _, _, model, _ = quantized
    producer, consumers, _ = _index(model)
    graph_outputs = {o.name for o in model.graph.output}
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        assert q.input[0] not in graph_outputs
        source = producer.get(q.input[0])
        assert source is None or source.op_type not in ("Add", "Gemm", "GlobalAveragePool"), q.name
    for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        for node, index in consumers[dq.output[0]]:
            # Q/DQ feeds only the inputs TensorRT quantizes: Conv/Gemm inputs and residual Add identities
            assert node.op_type in ("Conv", "Gemm", "Add"), f"{dq.name} feeds {node.op_type}"
            if node.op_type == "Add":
                assert producer[node.input[1 - index]].op_type == "Conv"


def test_amax_covers_every_float_activation(quantized):
    fp32, result, _, _ = quantized
    graph = onnx.load(str(fp32)).graph
    assert set(result.activations) <= set(result.amax)
    assert "input" in result.amax and graph.output[0].name in result.amax
    convs = [n.output[0] for n in graph.node if n.op_type == "Conv"]
    assert set(convs) <= set(result.amax), "implicit INT8 needs a range for every conv output"
    assert all(v > 0 for v in result.amax.values())


def test_qdq_model_runs_and_keeps_metadata(quantized):
    fp32, result, model, calib = quantized
    assert {p.key for p in model.metadata_props} >= {"arch", "resnet_deploy.quantization"}
    ref, out = run_onnx(fp32, calib), run_onnx(result.path, calib)
    assert out.shape == ref.shape and np.isfinite(out).all()


def test_known_ranges_skip_calibration(quantized, tmp_path):
    fp32, result, _, _ = quantized
    again = make_qdq_onnx(fp32, tmp_path / "again.onnx", np.zeros((0, 3, 32, 32), np.float32), amax=result.amax)
    assert again.activations == result.activations


def test_old_opsets_are_refused(quantized, tmp_path):
    fp32, _, _, calib = quantized
    model = onnx.load(str(fp32))
    model.opset_import[0].version = 12
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(ConfigError, match="opset"):
        make_qdq_onnx(tmp_path / "old.onnx", tmp_path / "q.onnx", calib)


def test_unknown_method_is_a_config_error(quantized, tmp_path):
    fp32, _, _, calib = quantized
    with pytest.raises(ConfigError, match="method"):
        make_qdq_onnx(fp32, tmp_path / "q.onnx", calib, method="kl")


# --- activation range rules ------------------------------------------------------------------------

def _hist(values: np.ndarray) -> tuple[np.ndarray, float]:
    top = float(np.abs(values).max())
    idx = np.minimum((np.abs(values) * 2048 / top).astype(int), 2047)
    return np.bincount(idx, minlength=2048), top


def test_percentile_clips_the_rarest_values():
    hist, top = _hist(np.linspace(0, 1, 100_001))
    assert percentile_amax(hist, top, 50.0) == pytest.approx(0.5, abs=2e-3)
    assert percentile_amax(hist, top, 100.0) == pytest.approx(1.0)


def test_entropy_clips_outliers_but_keeps_the_bulk():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(200_000), [40.0, -35.0]])
    hist, top = _hist(values)
    amax = entropy_amax(hist, top)
    assert 3.0 < amax < 0.5 * top


def test_entropy_is_not_dragged_down_by_relu_zeros():
    # Most of a ReLU output is exactly zero; without neutralising the zero bin the rule clips at a sliver.
    rng = np.random.default_rng(0)
    values = np.maximum(rng.standard_normal(300_000), 0) * 2.0
    hist, top = _hist(values)
    assert entropy_amax(hist, top) > 0.5 * top


# --- agreement with FP32 on real images --------------------------------------------------------------

def _cifar(split: str, count: int, seed: int):
    from resnet_deploy.calibration.preprocess import Preprocessing
    from resnet_deploy.calibration.sampling import choose, decode
    from resnet_deploy.calibration.sources import open_source

    if not (CIFAR10 / "train").is_dir():
        pytest.skip(f"CIFAR-10 is not present at {CIFAR10} (see ../shared/datasets/README.md)")
    prep = Preprocessing((32, 32), mean=(0.491, 0.482, 0.447), std=(0.247, 0.243, 0.262))
    source = open_source(CIFAR10, split, flag="--data")
    batch = decode(source, choose(len(source), count, seed=seed), prep, flag="--data")
    return batch.inputs(prep), batch.labels


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


@pytest.mark.cifar
@pytest.mark.slow  # fits a head on 2,000 CIFAR-10 images: 15-30 s here
def test_agreement_on_real_images_random_features_with_fitted_head(tmp_path):
    """A random-init ResNet-20 agrees with anything; so its BN statistics are estimated on real images
    and its classifier fitted to real labels (ridge regression, seconds), giving real, spread-out
    predictions. Random convolutions are less robust to INT8 than trained ones (trained ResNet-20s
    agree 97-99%), so the bar is 85%; a control with badly clipped ranges shows the test can fail."""
    torch.manual_seed(0)
    fit_x, fit_y = _cifar("train", 1000, seed=0)
    test_x, test_y = _cifar("test", 200, seed=1)
    model = build_model("resnet20", num_classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the whole pass
            m.reset_running_stats()
    x = torch.from_numpy(fit_x)
    with torch.no_grad():
        model.train()
        for i in range(0, len(x), 250):
            model(x[i:i + 250])
        model.eval()
        feats = torch.flatten(model.avgpool(model.forward_features(x)), 1).double()
        a = torch.cat([feats, torch.ones(len(feats), 1, dtype=torch.float64)], 1)
        target = torch.nn.functional.one_hot(torch.from_numpy(fit_y), 10).double()
        w = torch.linalg.solve(a.T @ a + 0.1 * torch.eye(a.shape[1], dtype=torch.float64), a.T @ target)
        model.fc.weight.copy_(w[:-1].T.float())
        model.fc.bias.copy_(w[-1].float())
    fp32 = _export(model, tmp_path / "fp32.onnx", test_x[:4])
    ref = run_onnx(fp32, test_x)
    assert (ref.argmax(1) == test_y).mean() > 0.2 and len(set(ref.argmax(1))) >= 5, "FP32 must beat chance"

    # This random-feature model is fragile, so the rule is fixed (entropy) rather than the default
    # "auto" choice, which picks by agreement on the calibration images: the subject here is the graph.
    good = make_qdq_onnx(fp32, tmp_path / "qdq.onnx", fit_x[:128], method="entropy")
    out = run_onnx(good.path, test_x)
    agreement = _agreement(out, ref)
    assert agreement >= 0.85, f"INT8 agrees with FP32 on {agreement:.1%} of 200 test images"
    drop = (ref.argmax(1) == test_y).mean() - (out.argmax(1) == test_y).mean()
    assert drop <= 0.03, f"top-1 drop {drop:.1%}"

    clipped = make_qdq_onnx(fp32, tmp_path / "bad.onnx", fit_x[:1], amax={k: v / 16 for k, v in good.amax.items()})
    control = _agreement(run_onnx(clipped.path, test_x), ref)
    assert control < 0.5, f"ranges clipped 16x still agree {control:.1%}: the check cannot tell"


@pytest.mark.slow
@pytest.mark.cifar
def test_agreement_on_real_images_quickly_trained_resnet20(tmp_path):
    """The real thing: a ResNet-20 trained for a few minutes (about 40% top-1) keeps >= 95% agreement."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    train_x, train_y = _cifar("train", 3072, seed=0)
    test_x, test_y = _cifar("test", 500, seed=1)
    model = build_model("resnet20", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    epochs, batch = 4, 128
    steps = epochs * (len(train_x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.2, total_steps=steps)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(len(x) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            xb = x[idx]
            xb = torch.where(torch.rand(len(xb))[:, None, None, None] < 0.5, xb.flip(3), xb)
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    fp32 = _export(model, tmp_path / "fp32.onnx", test_x[:4])
    ref = run_onnx(fp32, test_x)
    assert (ref.argmax(1) == test_y).mean() > 0.3
    out = run_onnx(make_qdq_onnx(fp32, tmp_path / "qdq.onnx", train_x[:300]).path, test_x)
    assert _agreement(out, ref) >= 0.95
    assert (ref.argmax(1) == test_y).mean() - (out.argmax(1) == test_y).mean() <= 0.02


def test_auto_rule_keeps_the_candidate_that_agrees_best_on_calibration_images(tmp_path):
    """"auto" scores every amax rule on the calibration images and keeps the best; only one file remains."""
    from resnet_deploy.models import build_model as _build

    torch.manual_seed(0)
    model = _build("resnet20", num_classes=10).eval()
    calib = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    fp32 = _export(model, tmp_path / "fp32.onnx", calib[:2])
    result = make_qdq_onnx(fp32, tmp_path / "qdq.onnx", calib)
    assert set(result.candidates) == {"max", "percentile", "entropy", "mse"}
    assert result.calibration_agreement == max(result.candidates.values())
    assert result.method in result.candidates
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "qdq.onnx"]


def test_auto_rule_is_scored_on_the_held_out_images_when_given(tmp_path, monkeypatch):
    """With held-out images (the build's fallback split), the rules are scored on them, not on the calibration
    images their ranges came from."""
    from resnet_deploy.models import build_model as _build

    torch.manual_seed(0)
    model = _build("resnet20", num_classes=10).eval()
    images = np.random.default_rng(0).standard_normal((23, 3, 32, 32)).astype(np.float32)
    calib, held = images[:16], images[16:]
    fp32 = _export(model, tmp_path / "fp32.onnx", calib[:2])
    monkeypatch.setattr(qdq, "_SCORES", {})  # scores another test left for the same model and images
    scored = []
    top1 = qdq._top1
    monkeypatch.setattr(qdq, "_top1", lambda path, x, **kw: scored.append(x) or top1(path, x, **kw))
    result = make_qdq_onnx(fp32, tmp_path / "qdq.onnx", calib, check=held)
    assert len(scored) == 5 and all(x is held for x in scored)  # FP32 once, then each of the 4 rules
    assert result.to_dict()["agreement_scored_on"] == "7 held-out calibration-source images"
    scored.clear()
    plain = make_qdq_onnx(fp32, tmp_path / "plain.onnx", calib)
    assert len(scored) == 5 and all(np.array_equal(x, calib) for x in scored)
    assert plain.to_dict()["agreement_scored_on"] == "16 calibration images"


def test_the_same_request_again_reuses_the_scores(tmp_path, monkeypatch):
    """A build's tensorrt and jetson targets ask for the same Q/DQ model: the second writes only the chosen graph,
    runs nothing, and gets the same file and record; other float layers are a new request."""
    from resnet_deploy.models import build_model as _build

    torch.manual_seed(0)
    model = _build("resnet20", num_classes=10).eval()
    calib = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32)
    fp32 = _export(model, tmp_path / "fp32.onnx", calib[:2])
    monkeypatch.setattr(qdq, "_SCORES", {})
    first = make_qdq_onnx(fp32, tmp_path / "a.onnx", calib)
    runs = []
    top1 = qdq._top1
    monkeypatch.setattr(qdq, "_top1", lambda path, x, **kw: runs.append(path) or top1(path, x, **kw))
    again = make_qdq_onnx(fp32, tmp_path / "b.onnx", calib)
    assert runs == [] and again.candidates == first.candidates and again.method == first.method
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx", "fp32.onnx"]
    layer = qdq.quantizable_layers(onnx.load(str(fp32)).graph)[0]
    make_qdq_onnx(fp32, tmp_path / "c.onnx", calib, float_layers=[layer])
    assert len(runs) == 5


def test_int8_weights_fold_the_weight_quantizers_and_compute_the_same(quantized, tmp_path):
    _, result, _, calib = quantized
    model = onnx.load(str(result.path))
    folded = qdq.int8_weights(model)
    assert folded == len(result.weights)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":  # only activations are quantized at run time now
            assert node.input[0] not in inits
        if node.op_type == "DequantizeLinear" and node.input[0] not in producer:
            assert inits[node.input[0]].dtype == np.int8
    assert not any(name in inits for name in result.weights), "the FP32 weights are gone"
    onnx.save(model, str(tmp_path / "w8.onnx"))
    np.testing.assert_allclose(run_onnx(tmp_path / "w8.onnx", calib), run_onnx(result.path, calib), rtol=0, atol=1e-5)
