"""The statistics of a verdict on an INT8 row, from the per-image predictions of FP32 and INT8.

Top-1 and agreement measured on N images are estimates: a row that "passes" on 10 images, or beside a
model that predicts one class for everything, proves nothing. FP32 and INT8 see the same images, so the
drop is a paired difference: its 95 % interval (Newcombe's method 10) and McNemar's exact test use the
images on which only one of the two is right. The rules below say, as numbers, when an evaluation
cannot support a verdict (UNVERIFIED); a row outside the gate is FAILED whatever those rules say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from resnet_deploy.pipeline.records import GateRow

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: two-sided 95 % intervals
# UNVERIFIED when the evaluation labels hold fewer classes than this: nothing tells a classifier from a constant.
MIN_CLASSES = 2
# UNVERIFIED when one class takes more than this share of FP32's predictions and more than
# CLASS_SHARE_OVER_LABELS times its share of the labels (the factor spares a good model on a balanced
# two-class set or on a set where one class is the majority of the labels).
MAX_CLASS_SHARE = 0.5
CLASS_SHARE_OVER_LABELS = 1.5
RULES = {"confidence": 0.95, "min_classes": MIN_CLASSES, "max_class_share": MAX_CLASS_SHARE,
         "class_share_over_labels": CLASS_SHARE_OVER_LABELS}
_EPS = 1e-9  # figures exactly at the gate pass, whatever the float rounding of the shares


def wilson(k: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``k / n`` (Wilson 1927; Newcombe 1998a, method 3)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(both: int, first_only: int, second_only: int, neither: int, *,
                      z: float = Z95) -> tuple[float, float]:
    """95 % interval for p1 - p2 of two proportions measured on the same subjects: Newcombe's method 10
    (square-and-add of the two Wilson intervals, with the correlation estimate phi corrected as in
    Newcombe, Stat Med 1998;17:2635-50, and Fagerland, Lydersen & Laake, Stat Med 2014;33:2850-75)."""
    n = both + first_only + second_only + neither
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    l1, u1 = wilson(both + first_only, n, z=z)
    l2, u2 = wilson(both + second_only, n, z=z)
    margins = (both + first_only, second_only + neither, both + second_only, first_only + neither)
    phi = 0.0
    if min(margins) > 0:
        a = both * neither - first_only * second_only
        scale = math.sqrt(math.prod(float(m) for m in margins))
        phi = (a - n / 2) / scale if a > n / 2 else (a / scale if a < 0 else 0.0)
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    high = d + math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    return max(-1.0, low), min(1.0, high)


def mcnemar_exact(first_only: int, second_only: int) -> float:
    """McNemar's exact two-sided p-value: the discordant pairs as a Binomial(b + c, 1/2) (the same as
    ``scipy.stats.binomtest(b, b + c).pvalue``)."""
    m = first_only + second_only
    k = min(first_only, second_only)
    if m == 0 or 2 * k >= m:
        return 1.0
    j = np.arange(1, k + 1, dtype=np.float64)
    log_comb = np.concatenate(([0.0], np.cumsum(np.log((m - j + 1) / j))))  # log C(m, 0..k)
    top = float(log_comb.max())
    log_tail = top + math.log(float(np.exp(log_comb - top).sum())) - m * math.log(2)
    return min(1.0, 2 * math.exp(log_tail))


@dataclass(frozen=True)
class Paired:
    """FP32 and INT8 on the same images: the 2x2 table of who is right, and how often they predict alike."""

    both: int
    fp32_only: int  # FP32 right, INT8 wrong: what the drop is made of
    int8_only: int
    neither: int
    agree: int  # same predicted class (right or wrong)

    @classmethod
    def of(cls, labels: np.ndarray, fp32: np.ndarray, int8: np.ndarray) -> Paired:
        r32, r8 = fp32 == labels, int8 == labels
        return cls(int((r32 & r8).sum()), int((r32 & ~r8).sum()), int((~r32 & r8).sum()), int((~r32 & ~r8).sum()),
                   int((fp32 == int8).sum()))

    @property
    def images(self) -> int:
        return self.both + self.fp32_only + self.int8_only + self.neither

    def drop(self) -> float:
        """FP32 top-1 minus INT8 top-1, as a share of the images."""
        return (self.fp32_only - self.int8_only) / self.images if self.images else 0.0

    def drop_interval(self) -> tuple[float, float]:
        return paired_difference(self.both, self.fp32_only, self.int8_only, self.neither)

    def agreement_interval(self) -> tuple[float, float]:
        return wilson(self.agree, self.images)

    def mcnemar_p(self) -> float:
        return mcnemar_exact(self.fp32_only, self.int8_only)


def evaluation_reasons(labels: np.ndarray, fp32: np.ndarray, class_names: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Why these evaluation images and FP32 predictions cannot support a verdict on any row (none: they can)."""
    n = len(labels)
    if n == 0:
        return ("there are no evaluation images",)
    reasons: list[str] = []
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < MIN_CLASSES:
        reasons.append(f"the evaluation labels hold {len(classes)} class, fewer than {MIN_CLASSES}: top-1 and "
                       "agreement cannot tell a classifier from a constant")
    chance = float(counts.max()) / n  # what always answering the most frequent label scores
    correct = int((fp32 == labels).sum())
    low, high = wilson(correct, n)
    if low <= chance + _EPS:
        reasons.append(f"the FP32 reference's top-1 {correct / n:.2%} (95 % interval {low:.2%} to {high:.2%}) is "
                       f"not clearly above chance: the low end is not above {chance:.2%}, what always answering the "
                       "most frequent label scores; check the model, its preprocessing and the labels")
    predicted, pcounts = np.unique(fp32, return_counts=True)
    top = int(predicted[pcounts.argmax()])
    share = float(pcounts.max()) / n
    label_share = float(counts[classes == top].sum()) / n
    if share > MAX_CLASS_SHARE and share > CLASS_SHARE_OVER_LABELS * label_share:
        name = f"class {top} ({class_names[top]})" if 0 <= top < len(class_names) else f"class {top}"
        reasons.append(f"one class takes most predictions: {name} gets {share:.2%} of the FP32 reference's "
                       f"predictions (more than {MAX_CLASS_SHARE:.0%}, and more than {CLASS_SHARE_OVER_LABELS:g}x "
                       f"its {label_share:.2%} of the labels), so agreeing with FP32 says little")
    return tuple(reasons)


def cannot_pass(labels: np.ndarray, fp32: np.ndarray, class_names: tuple[str, ...] = (), *,
                max_drop: float) -> tuple[str, ...]:
    """Why no INT8 row can come out PASSED on this evaluation, whatever it predicts (none: one can): the
    evaluation's own reasons, or a drop interval wider than +-max_drop even for a row identical to FP32."""
    reasons = list(evaluation_reasons(labels, fp32, class_names))
    n = len(labels)
    if n:
        correct = int((fp32 == labels).sum())
        low, high = paired_difference(correct, 0, 0, n - correct)
        half = (high - low) / 2 * 100
        if half > max_drop + _EPS:
            reasons.append(f"on {n} evaluation images even an INT8 row that agrees with FP32 on every image has a "
                           f"drop interval of +-{half:.2f} points, wider than --max-drop {max_drop:g}")
    return tuple(reasons)


def confusion_delta(labels: np.ndarray, fp32: np.ndarray, int8: np.ndarray) -> tuple[tuple[int, int, int], ...]:
    """The confusion matrix of INT8 minus FP32's (rows: label, columns: predicted), as its non-zero cells
    ``(label, predicted, change)``: the counts that moved, largest first."""
    moved = fp32 != int8
    width = int(max(labels.max(initial=0), fp32.max(initial=0), int8.max(initial=0))) + 1
    delta: dict[int, int] = {}
    for preds, sign in ((int8[moved], 1), (fp32[moved], -1)):
        cells, counts = np.unique(labels[moved].astype(np.int64) * width + preds, return_counts=True)
        for cell, count in zip(cells.tolist(), counts.tolist()):
            delta[cell] = delta.get(cell, 0) + sign * count
    out = [(cell // width, cell % width, change) for cell, change in delta.items() if change]
    return tuple(sorted(out, key=lambda t: (-abs(t[2]), t[0], t[1])))


def judge(target: str, precision: str, simulated: bool, labels: np.ndarray, fp32: np.ndarray, int8: np.ndarray, *,
          max_drop: float, min_agreement: float, evaluation: tuple[str, ...] = ()) -> GateRow:
    """One row's verdict. FAILED when its drop (points) or agreement is outside the gate, whatever the
    evaluation (UNVERIFIED is never a way out of a failure); else UNVERIFIED when the evaluation cannot
    support a verdict (``evaluation`` reasons, or a drop interval wider than +-max_drop); else PASSED."""
    paired = Paired.of(labels, fp32, int8)
    n = paired.images
    drop, (low, high) = paired.drop() * 100, paired.drop_interval()
    low, high = low * 100, high * 100
    agreement = paired.agree / n if n else 0.0
    a_low, a_high = paired.agreement_interval()
    p = paired.mcnemar_p()
    label = f"{target} {precision}" + (" (simulated)" if simulated else "")
    failed: list[str] = []
    reasons: list[str] = []
    if drop > max_drop + _EPS:
        clear = "clearly: " if low > max_drop else "not clearly (more images could tell): "
        reasons.append(f"{label}: top-1 is {drop:.2f} points below the FP32 reference, more than --max-drop "
                       f"{max_drop:g} ({clear}95 % interval {low:.2f} to {high:.2f} points; McNemar p = {p:.2g}, "
                       f"{paired.fp32_only} image(s) only FP32 gets right, {paired.int8_only} only INT8)")
        failed.append("drop")
    if agreement < min_agreement - _EPS:
        clear = "clearly: " if a_high < min_agreement else "not clearly (more images could tell): "
        reasons.append(f"{label}: agrees with the FP32 reference on {agreement:.2%} of {n} images, less than "
                       f"--min-agreement {min_agreement:.2%} ({clear}95 % interval {a_low:.2%} to {a_high:.2%})")
        failed.append("agreement")
    if failed:
        status = "failed"
    else:
        reasons += evaluation  # the same for every row: said once in the gate's summary
        half = (high - low) / 2
        if half > max_drop + _EPS:
            reasons.append(f"{label}: the 95 % interval of the drop, {low:.2f} to {high:.2f} points (+-{half:.2f}), "
                           f"is wider than --max-drop {max_drop:g} on each side: {n} evaluation images cannot tell "
                           "whether the drop is within the gate; evaluate on more images (--eval-samples)")
        status = "unverified" if reasons else "passed"
    return GateRow(target=target, precision=precision, simulated=simulated, status=status, reasons=tuple(reasons),
                   failed=tuple(failed), images=n, drop=round(drop, 4), drop_low=round(low, 4),
                   drop_high=round(high, 4), agreement=round(agreement, 6), agreement_low=round(a_low, 6),
                   agreement_high=round(a_high, 6), mcnemar_p=float(f"{p:.4g}"), fp32_only_correct=paired.fp32_only,
                   int8_only_correct=paired.int8_only, disagreements=n - paired.agree,
                   confusion_delta=confusion_delta(labels, fp32, int8))


def overall(statuses: list[str]) -> str:
    """failed > unverified > passed."""
    for status in ("failed", "unverified"):
        if status in statuses:
            return status
    return "passed"
