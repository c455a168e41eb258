"""Mixed-precision fallback: keep the most sensitive layers in float until a target's INT8 meets the gate.

With ``--fallback auto`` the data stage draws ``HELD_OUT`` more images from the calibration source (never
an evaluation image, never a calibration one), and each INT8 artifact is checked on them (agreement with
FP32 and top-1 drop, the gate's two rules, by their one-sided 95 % bounds). A target that misses is compiled
again with the layers that ``calibration/sensitivity.py`` ranks first kept in float, each target through its
own mechanism (``CompileInput.float_layers``), until it meets the gate or ``--max-float-layers`` is reached
(the residual shortcuts, one entry of the ranking, count as one).
Evaluation images never steer any of this: they give the verdict afterwards.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from resnet_deploy.calibration.agreement import predictions
from resnet_deploy.calibration.channel_spread import diagnosis
from resnet_deploy.calibration.sensitivity import Sensitivity, analyse
from resnet_deploy.console import Ui
from resnet_deploy.pipeline.latency import LatencySettings, measure
from resnet_deploy.pipeline.verdict import paired_difference, wilson
from resnet_deploy.targets import Artifact, CompileInput, Target, onnx_session, runtimes

# Held-out images from the calibration source. The gate's figures are a point apart: at 98 % agreement the
# estimate's standard error is 0.44 points on 1,000 images, 1.4 on 100 (measured: 100 held-out images passed
# rows that agreed on 97.5 % of the 10,000 test images).
# The data stage draws twice that: one half scores each target's ``auto`` candidates, the other checks the chosen
# one. Checked on the images that chose it, the best of five looked better than it was: a ResNeXt-50's simulated
# TensorRT row scored 0.981 there and agreed on 97.13 % of the test images.
HELD_OUT = 1000
# A row meets the gate on the held-out images when its one-sided 95 % bounds do (the agreement's Wilson bound, the
# drop's Newcombe bound): at 1,000 images that asks for about 98.75 % agreement. Held-out images are training-split
# images, which the model answers with more confidence than new ones: on a CIFAR ResNeXt-50 (61.8 % top-1 on 10,000
# training images, 55.7 % on the test ones) the simulated TensorRT row agreed on 97.58 % and 97.13 %, and the
# ONNX Runtime row on 98.18 % and 97.86 %; checked by its point estimate, the first read 0.980 and passed.
MARGIN_Z = 1.6448536269514722  # the standard normal's 95th percentile
MIN_HELD_OUT = 200  # fewer cannot tell 97 % agreement from 98.5 % (standard error 1 point): no fallback then
LATENCY_ROUNDS = 3  # all-INT8 and mixed rows timed in alternation, medians of the rounds' p50


@dataclass(frozen=True)
class Check:
    """One INT8 artifact on the held-out calibration images, with ``float_layers`` layers kept in float."""

    float_layers: int
    agreement: float
    drop: float  # points of top-1 below the FP32 ONNX on the same images
    passed: bool
    agreement_low: float  # one-sided 95 % bounds (``MARGIN_Z``): what ``passed`` reads
    drop_high: float

    def to_dict(self) -> dict[str, Any]:
        return {"float_layers": self.float_layers, "agreement": round(self.agreement, 6),
                "agreement_low": round(self.agreement_low, 6), "drop": round(self.drop, 4),
                "drop_high": round(self.drop_high, 4), "passed": self.passed}


def held_out_count(mode: str) -> int:
    """How many held-out images the data stage draws for ``--fallback mode``: the check's and ``auto``'s."""
    return 2 * HELD_OUT if mode == "auto" else 0


def _row(a: Artifact) -> str:
    """An artifact's row within its target, the same from one compile to the next (its path may change: a
    file with the same bytes as another target's is stored once, under that target's folder)."""
    return f"{a.precision} {a.runtime}{' simulated' if a.simulated else ''}"


def smallest_passing(limit: int, passes: Callable[[int], bool]) -> int | None:
    """The smallest ``k`` in 1..``limit`` with ``passes(k)``, taking more float layers never to hurt: tries
    1, 2, 4, ... up to ``limit``, then bisects between the last failure and the first success (about
    2 log2(limit) compiles, where one more layer at a time can take ``limit``). None when ``limit`` fails."""
    if limit < 1:
        return None
    failed, k = 0, 1
    while True:
        k = min(k, limit)
        if passes(k):
            break
        if k == limit:
            return None
        failed, k = k, k * 2
    passed = k
    while passed - failed > 1:
        mid = (failed + passed) // 2
        if passes(mid):
            passed = mid
        else:
            failed = mid
    return passed


class Fallback:
    """The fallback of one build: the held-out split, the shared sensitivity analysis, and the loop per target."""

    def __init__(self, *, mode: str, min_agreement: float, max_drop: float, max_float_layers: int, fp32_onnx: Path,
                 calibration: np.ndarray, held_out: np.ndarray, labels: np.ndarray,
                 latency: LatencySettings | None = None, threads: int | None = None, ui: Ui | None = None) -> None:
        """``held_out``: images from the calibration source that calibration does not see, ``labels`` theirs. With
        room for both (``2 * MIN_HELD_OUT``), every other image is ``scoring_images`` and the rest the check's:
        interleaved, so that two halves of images listed class by class still hold every class alike."""
        self.scoring_images: np.ndarray | None = None  # for a target's ``auto`` choice (``CompileInput.check``)
        if len(held_out) >= 2 * MIN_HELD_OUT:
            self.scoring_images, held_out, labels = held_out[0::2], held_out[1::2], labels[1::2]
        self.min_agreement, self.max_drop, self.max_float_layers = min_agreement, max_drop, max_float_layers
        self.fp32_onnx, self.threads, self.ui = fp32_onnx, threads, ui
        self.latency = latency or LatencySettings()
        self.active = mode == "auto" and len(held_out) >= MIN_HELD_OUT
        if mode == "auto" and not self.active and ui is not None:
            ui.warn(f"--fallback auto checks INT8 rows on {MIN_HELD_OUT} or more calibration-source images set apart "
                    f"from calibration and evaluation; --calib-data offers {len(held_out)} more: INT8 rows are not "
                    "checked before the evaluation and no layer is kept in float. Give a larger --calib-data.")
        self.calibration, self.held_out, self.labels = calibration, held_out, labels
        self.sensitivity: Sensitivity | None = None
        self._fp32: np.ndarray | None = None

    # --- the loop ------------------------------------------------------------------------------------

    def compile(self, target: Target, inp: CompileInput, bundle: Path) -> list[Artifact]:
        """``target.compile``, then (when active) the held-out check and, if it misses, the fallback loop."""
        artifacts = list(target.compile(inp, bundle))
        if not self.active:
            return artifacts
        checks = self.check(target, artifacts, bundle, 0)
        if not checks or all(c.passed for c in checks.values()):
            return self._annotate(artifacts, [], checks, [checks], None)
        worst = min(checks.values(), key=lambda c: c.agreement)
        self._say(f"fallback: {target.name} int8 on {len(self.held_out)} held-out calibration images: agreement "
                  f"{worst.agreement:.4f}, at least {worst.agreement_low:.4f} (needs {self.min_agreement}), drop "
                  f"{worst.drop:+.2f} points, at most {worst.drop_high:+.2f} (needs {self.max_drop}; one-sided 95 % "
                  "bounds)")
        if not target.float_layers or self.max_float_layers == 0:
            why = ("--max-float-layers is 0" if target.float_layers
                   else f"--target {target.name} cannot keep layers in float")
            self._say(f"fallback: {why}; the all-INT8 {target.name} row stays as it is.", warn=True)
            return self._annotate(artifacts, [], checks, [checks], None)
        ranked = self.ranking()[: self.max_float_layers]

        def kept(k: int) -> tuple[str, ...]:  # the node names of the k first entries (a group counts once)
            return tuple(name for entry in ranked[:k] for name in entry)

        history = [checks]
        latest: dict[str, Any] = {"k": 0, "artifacts": artifacts}
        with tempfile.TemporaryDirectory(prefix="resnet-deploy-all-int8-") as keep:
            all_int8 = self._copy_measured(artifacts, bundle, Path(keep))

            def passes(k: int) -> bool:
                latest["artifacts"] = list(target.compile(replace(inp, float_layers=kept(k)), bundle))
                latest["k"] = k
                history.append(self.check(target, latest["artifacts"], bundle, len(kept(k))))
                c = min(history[-1].values(), key=lambda c: c.agreement) if history[-1] else None
                self._say(f"fallback: {target.name} with {len(kept(k))} layer(s) in float: "
                          + (f"agreement {c.agreement:.4f} (at least {c.agreement_low:.4f}), drop {c.drop:+.2f} "
                             f"points (at most {c.drop_high:+.2f})" if c else "nothing to check")
                          + (" (meets the gate)" if all(x.passed for x in history[-1].values()) else ""))
                return all(x.passed for x in history[-1].values())

            found = smallest_passing(len(ranked), passes)
            k = found if found is not None else len(ranked)
            if latest["k"] != k:
                passes(k)
            final = latest["artifacts"]
            if found is None:
                self._say(f"fallback: {target.name} misses the gate on the held-out images even with {len(kept(k))} "
                          "layer(s) in float (--max-float-layers); its row keeps them and the evaluation gives the "
                          "verdict. " + diagnosis(self.sensitivity.spread if self.sensitivity else ()),
                          warn=True)
            latency = self._latency_cost(target, final, bundle, all_int8, Path(keep))
        return self._annotate(final, kept(k), history[-1], history, latency)

    def ranking(self) -> list[tuple[str, ...]]:
        """Entries (a layer's node name, or a group's), most sensitive first: the sensitivity analysis, run once
        for every target."""
        if self.sensitivity is None:
            self._say(f"sensitivity: each quantized layer left in float in turn (reference Q/DQ graph, "
                      f"{min(len(self.calibration), 128)} calibration images)")
            self.sensitivity = analyse(self.fp32_onnx, self.calibration, session=onnx_session)
            top = ", ".join(f"{s.label} (+{s.gain_db:.1f} dB)" for s in self.sensitivity.layers[:3])
            self._say(f"sensitivity: all-INT8 SQNR {self.sensitivity.int8_sqnr_db:.1f} dB; most sensitive: {top} "
                      f"({self.sensitivity.seconds:.1f} s)")
        return self.sensitivity.ranked()

    # --- measurements --------------------------------------------------------------------------------

    def check(self, target: Target, artifacts: Sequence[Artifact], bundle: Path, layers: int) -> dict[str, Check]:
        """Each INT8 artifact whose runtime is present (``layers`` of its layers kept in float), on the held-out
        images: ``_row(artifact)`` -> Check."""
        if self._fp32 is None:
            session = onnx_session(self.fp32_onnx, threads=self.threads)
            name = session.get_inputs()[0].name
            self._fp32 = predictions(lambda x: session.run(None, {name: x})[0], self.held_out)
        known = runtimes()
        out = {}
        for a in artifacts:
            if a.precision != "int8" or a.runtime not in known or not known[a.runtime].present():
                continue
            preds = predictions(target.load(a, bundle, threads=self.threads).run, self.held_out)
            out[_row(a)] = self.judge(layers, self._fp32, preds, self.labels)
        return out

    def judge(self, layers: int, fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray) -> Check:
        """The gate on held-out predictions, by its one-sided 95 % bounds rather than the point estimates."""
        n, same = len(fp32), int((int8 == fp32).sum())
        right, right8 = fp32 == labels, int8 == labels
        _, drop_high = paired_difference(int((right & right8).sum()), int((right & ~right8).sum()),
                                         int((~right & right8).sum()), int((~right & ~right8).sum()), z=MARGIN_Z)
        low = wilson(same, n, z=MARGIN_Z)[0]
        drop = float(right.mean() - right8.mean()) * 100 if n else 0.0
        passed = low >= self.min_agreement - 1e-9 and drop_high * 100 <= self.max_drop + 1e-9
        return Check(layers, same / n if n else 0.0, drop, passed, low, drop_high * 100)

    def _copy_measured(self, artifacts: Sequence[Artifact], bundle: Path, keep: Path) -> list[Artifact]:
        """Copies (under ``keep``, same relative paths) of the measured INT8 artifacts before the fallback
        rewrites them, so the all-INT8 row can be timed beside the mixed one; simulated rows are not timed."""
        out = []
        for a in artifacts:
            if a.precision != "int8" or a.simulated:
                continue
            for rel in (a.path, *a.files):
                (keep / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(bundle / rel, keep / rel)
            out.append(a)
        return out

    def _latency_cost(self, target: Target, final: Sequence[Artifact], bundle: Path, all_int8: Sequence[Artifact],
                      keep: Path) -> dict[str, dict[str, float]]:
        """p50 at batch 1 of the all-INT8 (copies under ``keep``) and the mixed artifact, timed in alternation
        (medians of the rounds' p50)."""
        out = {}
        x = self.held_out[:1]
        for before in all_int8:
            after = next((a for a in final if _row(a) == _row(before)), None)
            if after is None:
                continue
            runners = (target.load(before, keep, threads=self.threads),
                       target.load(after, bundle, threads=self.threads))
            p50: tuple[list[float], list[float]] = ([], [])
            for _ in range(LATENCY_ROUNDS):
                for times, runner in zip(p50, runners):
                    times.append(measure(runner.run, x, self.latency).p50)
            base, mixed = statistics.median(p50[0]), statistics.median(p50[1])
            out[_row(after)] = {"all_int8_p50_ms": round(base, 4), "p50_ms": round(mixed, 4),
                               "cost": round(mixed / base - 1.0, 4) if base > 0 else 0.0}
        return out

    # --- records -------------------------------------------------------------------------------------

    def _annotate(self, artifacts: list[Artifact], layers: Sequence[str], checks: dict[str, Check],
                  history: list[dict[str, Check]], latency: dict[str, dict[str, float]] | None) -> list[Artifact]:
        """Each INT8 artifact's ``details["fallback"]``: the layers kept in float, the held-out check of the
        kept artifact and of every attempt, and the latency cost where the row is measured."""
        out = []
        for a in artifacts:
            if a.precision != "int8":
                out.append(a)
                continue
            record: dict[str, Any] = {
                "float_layers": list(layers), "held_out_images": len(self.held_out),
                "calibration_images": len(self.calibration), "min_agreement": self.min_agreement,
                "max_drop": self.max_drop, "max_float_layers": self.max_float_layers,
            }
            if _row(a) in checks:
                record["held_out"] = checks[_row(a)].to_dict()
                record["attempts"] = [h[_row(a)].to_dict() for h in history if _row(a) in h]
            if latency and _row(a) in latency:
                record["latency"] = latency[_row(a)]
            out.append(replace(a, details={**a.details, "fallback": record}))
        return out

    def _say(self, message: str, *, warn: bool = False) -> None:
        if self.ui is not None:
            (self.ui.warn if warn else self.ui.info)(message)
