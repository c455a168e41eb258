"""The verdict's statistics against published values, each UNVERIFIED/FAILED rule on synthetic predictions,
the per-image predictions in the bundle, and one real build that comes out UNVERIFIED."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from resnet_deploy.cli import main
from resnet_deploy.errors import BundleError, GateFailed, GateUnverified
from resnet_deploy.pipeline import bundle as bundle_io
from resnet_deploy.pipeline import predictions as predictions_io
from resnet_deploy.pipeline.predictions import Predictions, RowPredictions
from resnet_deploy.pipeline.records import Gate, Latency, ResultRow, to_json
from resnet_deploy.pipeline.report import gate
from resnet_deploy.pipeline.verdict import (
    Paired,
    cannot_pass,
    confusion_delta,
    mcnemar_exact,
    paired_difference,
    wilson,
)

# --- the statistics --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # Newcombe, Stat Med 1998;17:857-72, Table II, method 3 (Wilson score, no continuity correction)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_newcombe(k, n, low, high):
    assert wilson(k, n) == pytest.approx((low, high), abs=5e-5)


def test_paired_difference_matches_the_published_square_and_add_interval():
    # Cavo et al. 2012 as worked in Fagerland, Lydersen & Laake (2014; their R package contingencytables):
    # both 59, first only 6, second only 16, neither 80 -> estimate -0.0621, 95 % CI -0.1186 to -0.0046.
    assert paired_difference(59, 6, 16, 80) == pytest.approx((-0.1186, -0.0046), abs=5e-5)
    low, high = paired_difference(59, 16, 6, 80)  # swapping the two proportions mirrors the interval
    assert (low, high) == pytest.approx((0.0046, 0.1186), abs=5e-5)


def test_paired_interval_is_wide_when_few_images_and_contains_the_estimate():
    low, high = paired_difference(9, 0, 0, 1)  # 10 images, none discordant: still about +-28 points
    assert low < -0.2 and high > 0.2
    for table in [(900, 30, 10, 60), (5, 0, 3, 2), (0, 4, 0, 0)]:
        n = sum(table)
        low, high = paired_difference(*table)
        assert low <= (table[1] - table[2]) / n <= high


def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)  # 2 * P(X <= 1), X ~ Bin(10, 1/2)
    assert mcnemar_exact(6, 16) == pytest.approx(2 * 110056 / 2**22)  # sum of C(22, 0..6) = 110056
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(7, 7) == 1.0 and mcnemar_exact(0, 5) == pytest.approx(1 / 16)


def test_mcnemar_exact_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(0, 1), (3, 12), (40, 60), (500, 560), (10_000, 10_400)]:
        assert mcnemar_exact(b, c) == pytest.approx(stats.binomtest(b, b + c).pvalue, rel=1e-9)


def test_confusion_delta_counts_what_moved():
    labels = np.array([0, 0, 1, 1, 2])
    fp32 = np.array([0, 0, 1, 2, 2])
    int8 = np.array([0, 1, 1, 1, 2])  # image 1: 0 -> 1 (label 0); image 3: 2 -> 1 (label 1)
    assert set(confusion_delta(labels, fp32, int8)) == {(0, 0, -1), (0, 1, 1), (1, 2, -1), (1, 1, 1)}
    assert confusion_delta(labels, fp32, fp32) == ()
    paired = Paired.of(labels, fp32, int8)
    assert (paired.both, paired.fp32_only, paired.int8_only, paired.neither, paired.agree) == (3, 1, 1, 0, 3)


# --- the gate, rule by rule --------------------------------------------------------------------------------


def _row(target: str) -> ResultRow:
    return ResultRow(target, "int8", "rt", False, "runner", 0.0, (), None, 1, 1, 1.0, Latency(1, 1, 1, 1, 1),
                     f"{target}/m", 1, 0.0)


def _judge(labels, fp32, int8s: dict[str, np.ndarray], *, max_drop=1.0, min_agreement=0.98,
           names: tuple[str, ...] = ()) -> Gate:
    preds = Predictions(np.arange(len(labels)).astype(str), labels, fp32,
                        tuple(RowPredictions(t, "int8", False, p) for t, p in int8s.items()))
    return gate([_row(t) for t in int8s], preds, max_drop=max_drop, min_agreement=min_agreement, class_names=names)


def _good_model(n: int, classes: int = 10, accuracy: float = 0.9, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    fp32 = np.where(rng.random(n) < accuracy, labels, rng.integers(0, classes, n))
    return labels, fp32


def _flip(preds: np.ndarray, count: int, classes: int = 10, *, start: int = 0) -> np.ndarray:
    out = preds.copy()
    out[start:start + count] = (out[start:start + count] + 1) % classes
    return out


def test_a_good_row_on_enough_images_passes_with_its_evidence():
    labels, fp32 = _good_model(10_000)
    g = _judge(labels, fp32, {"a": _flip(fp32, 50)})
    assert g.status == "passed" and g.passed and not g.failures and not g.unverified
    row = g.rows[0]
    assert row.status == "passed" and row.images == 10_000 and row.disagreements == 50
    assert row.drop == pytest.approx((row.fp32_only_correct - row.int8_only_correct) / 100)
    assert row.drop_low < row.drop < row.drop_high and (row.drop_high - row.drop_low) / 2 < 1.0
    assert row.agreement == pytest.approx(0.995) and row.agreement_low < 0.995 < row.agreement_high
    assert 0 < row.mcnemar_p <= 1 and row.confusion_delta
    assert Gate.from_json(json.loads(json.dumps(to_json(g)))) == g


def test_too_few_images_for_the_gate_is_unverified_and_more_images_verify():
    labels, fp32 = _good_model(10)
    g = _judge(labels, fp32, {"a": fp32.copy()})
    assert g.status == "unverified" and not g.passed
    assert any("wider than --max-drop 1" in r for r in g.unverified), g.unverified
    labels, fp32 = _good_model(2000)
    assert _judge(labels, fp32, {"a": fp32.copy()}).status == "passed"


def test_fewer_than_two_classes_is_unverified():
    labels = np.full(5000, 3)
    g = _judge(labels, labels.copy(), {"a": labels.copy()})
    assert g.status == "unverified" and any("fewer than 2" in r for r in g.unverified), g.unverified


def test_fp32_not_clearly_above_chance_is_unverified():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 5000)
    fp32 = rng.integers(0, 10, 5000)  # guessing: about 10 % top-1
    g = _judge(labels, fp32, {"a": fp32.copy()})
    assert g.status == "unverified" and any("not clearly above chance" in r for r in g.unverified), g.unverified
    assert not any("one class" in r for r in g.unverified)


def test_one_class_taking_most_predictions_is_unverified_but_a_good_two_class_model_is_not():
    labels, fp32 = _good_model(5000, accuracy=0.95)
    fp32 = fp32.copy()
    fp32[: 3000] = 7  # 60 % of the predictions to one class holding ~10 % of the labels
    g = _judge(labels, fp32, {"a": fp32.copy()}, max_drop=100, names=tuple(f"c{i}" for i in range(10)))
    share = f"{(fp32 == 7).mean():.2%}"
    assert g.status == "unverified" and any("class 7 (c7)" in r and share in r for r in g.unverified), g.unverified
    labels, fp32 = _good_model(5000, classes=2, accuracy=0.95)  # ~50 % each: not a collapse
    assert _judge(labels, fp32, {"a": fp32.copy()}).status == "passed"


def test_a_clear_failure_is_failed_never_unverified():
    labels = np.full(500, 4)  # fewer than 2 classes, and FP32 predicts one class: both UNVERIFIED rules hold ...
    int8 = _flip(labels, 100)  # ... but INT8 changes a fifth of the answers
    g = _judge(labels, labels.copy(), {"a": int8})
    assert g.status == "failed" and not g.passed and g.rows[0].status == "failed"
    assert any("fewer than 2" in r for r in g.unverified)  # said beside the failure, never instead of it
    assert set(g.rows[0].failed) == {"drop", "agreement"}
    assert any("clearly: 95 % interval" in f for f in g.failures), g.failures


def test_agreement_is_gated_even_when_top1_does_not_drop():
    labels, fp32 = _good_model(10_000)
    wrong = np.flatnonzero(fp32 != labels)[:300]
    int8 = fp32.copy()
    int8[wrong] = (int8[wrong] + 1) % 10  # wrong answers change: top-1 barely moves, agreement 97 %
    g = _judge(labels, fp32, {"a": int8})
    assert g.status == "failed" and g.rows[0].failed == ("agreement",)
    assert abs(g.rows[0].drop) < 0.3 and "--min-agreement 98.00%" in g.failures[0]
    assert _judge(labels, fp32, {"a": int8}, min_agreement=0.96).status == "passed"


def test_failed_outranks_unverified_outranks_passed():
    labels, fp32 = _good_model(10_000)
    ok, bad = _flip(fp32, 20), _flip(fp32, 600, start=100)
    assert _judge(labels, fp32, {"a": ok, "b": bad}).status == "failed"
    g = _judge(labels, fp32, {"a": fp32.copy(), "b": fp32.copy()}, max_drop=0.01)  # finer than 10,000 images tell
    assert g.status == "unverified" and [r.status for r in g.rows] == ["unverified", "unverified"]


# --- the predictions in the bundle -----------------------------------------------------------------------


def test_cannot_pass_says_before_any_int8_row_when_no_row_could_pass():
    """What turns the mixed-precision fallback off: the reasons hold for every INT8 row, even a perfect one."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 1000)
    good = np.where(rng.random(1000) < 0.9, labels, (labels + 1) % 10)
    assert cannot_pass(labels, good, max_drop=1.0) == ()
    (one_class,) = cannot_pass(labels, np.full(1000, 3), max_drop=100.0)[:1]
    assert "not clearly above chance" in one_class
    (few,) = cannot_pass(labels[:10], good[:10], max_drop=1.0)
    assert "on 10 evaluation images" in few and "wider than --max-drop 1" in few
    assert cannot_pass(labels[:10], good[:10], max_drop=100.0) == ()


def test_predictions_round_trip_through_the_manifest_and_damage_is_refused(tmp_path):
    ids = np.asarray(["a/1.png", "b/22.png", "c/333.png"])
    preds = Predictions(ids, np.array([0, 1, 2]), np.array([0, 1, 1]),
                        (RowPredictions("x", "fp32", False, np.array([0, 1, 1])),
                         RowPredictions("x", "int8", True, np.array([0, 2, 1]))))
    predictions_io.save(tmp_path / predictions_io.FILE, preds)
    bundle_io.write_manifest(tmp_path, versions={}, args={}, seed=0, calibration={})
    back = predictions_io.load(tmp_path)
    assert back.image_ids.dtype.kind == "U" and list(back.image_ids) == list(ids)
    assert back.labels.tolist() == [0, 1, 2] and back.reference.tolist() == [0, 1, 1]
    sim = back.row("x", "int8", True)
    assert sim is not None and sim.classes.tolist() == [0, 2, 1] and back.row("x", "int8") is None
    with np.load(tmp_path / predictions_io.FILE, allow_pickle=False) as data:  # plain arrays, no pickles
        assert set(data.files) >= {"image_ids", "labels", "reference", "row_predictions"}
    (tmp_path / predictions_io.FILE).write_bytes(b"x" * (tmp_path / predictions_io.FILE).stat().st_size)
    with pytest.raises(BundleError, match="sha256"):
        predictions_io.load(tmp_path)


# --- end to end ----------------------------------------------------------------------------------------------


def test_ten_evaluation_images_build_is_unverified_with_its_own_exit_code(tmp_path, fashion_mnist, stub_target):
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["build", "--target", stub_target, "--eval-samples", "10",
                                       "--calib-samples", "32", "--latency-seconds", "0", "--out", str(out), "--json"])
    assert result.exit_code == GateUnverified.exit_code == 5, result.output
    assert GateFailed.exit_code == 4
    assert "--fallback auto: skipped" in " ".join(result.stderr.split())  # nothing it did could be verified
    report = json.loads(result.stdout)  # --json prints the unverified report, as for a failed one
    assert report["status"] == "unverified" and report["gate"]["status"] == "unverified"
    assert any("10 evaluation images cannot tell" in r for r in report["gate"]["unverified"])
    (row,) = report["gate"]["rows"]
    assert row["target"] == stub_target and row["images"] == 10 and row["drop_high"] - row["drop_low"] > 2
    assert {"mcnemar_p", "fp32_only_correct", "int8_only_correct", "drop_low"} <= set(row)
    manifest = bundle_io.verify_bundle(out)
    assert predictions_io.FILE in manifest["files"]
    preds = predictions_io.load(out)
    assert len(preds.image_ids) == 10 and {(r.target, r.precision) for r in preds.rows} == {
        (stub_target, "fp32"), (stub_target, "int8")}
    assert "UNVERIFIED" in (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert 'class="badge unverified"' in html and "Quantization settings" in html and "per-channel" in html


@pytest.mark.slow
def test_a_clear_failure_on_real_predictions_exits_4(tmp_path, fashion_mnist, monkeypatch):
    """The real gate on real labels and FP32 predictions, with the INT8 answers of a broken quantizer."""
    from resnet_deploy.pipeline import build as build_mod

    def broken(results, preds, **kw):
        rows = tuple(RowPredictions(r.target, r.precision, r.simulated,
                                    _flip(r.classes, len(r.classes) // 5) if r.precision == "int8" else r.classes)
                     for r in preds.rows)
        return gate(results, Predictions(preds.image_ids, preds.labels, preds.reference, rows), **kw)

    monkeypatch.setattr(build_mod, "gate", broken)
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["build", "--target", "onnxruntime", "--eval-samples", "500",
                                       "--calib-samples", "32", "--out", str(out), "-q"])
    assert result.exit_code == 4, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and "agreement" in report["gate"]["rows"][0]["failed"]
    assert "class=bad" in (out / "report.html").read_text()
