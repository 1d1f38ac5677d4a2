"""Verification metrics (EER, minDCF, DET) computed the way VoxCeleb/SpeechBrain report them,
so our figures are directly comparable with the reference scores shipped with the model."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from ..errors import EdgeVerifyError

__all__ = ["det_curve", "compute_eer", "min_dcf", "error_rates", "cllr", "min_cllr", "pav", "plot_det"]


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise EdgeVerifyError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise EdgeVerifyError("scores contain NaN or infinite values")
    if not y.any() or y.all():
        raise EdgeVerifyError("need both target (1) and non-target (0) trials")
    return s, y


def det_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-accept and false-reject rates for accepting ``score >= threshold``.

    Returns (fpr, fnr, thresholds) with thresholds descending (distinct score values,
    preceded by +inf where nothing is accepted), like sklearn's roc_curve without dropping points.
    """
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of each run of equal scores: accepting at that score accepts the whole run
    distinct = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tp = np.cumsum(y_sorted)[distinct]
    fp = np.cumsum(~y_sorted)[distinct]
    n_pos = y.sum()
    n_neg = y.size - n_pos
    tp = np.r_[0, tp]
    fp = np.r_[0, fp]
    thresholds = np.r_[np.inf, s_sorted[distinct]]
    fpr = fp / n_neg
    fnr = 1.0 - tp / n_pos
    return fpr, fnr, thresholds


def compute_eer(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Equal error rate (fraction) and the threshold where it occurs.

    Linear interpolation between the two ROC points that bracket fpr == fnr (the
    VoxCeleb ``tuneThresholdfromScore`` approach without its nearest-point rounding).
    """
    fpr, fnr, thr = det_curve(scores, labels)
    diff = fnr - fpr  # decreasing from 1 to -1 as the threshold falls
    i = int(np.flatnonzero(diff <= 0)[0])
    if diff[i] == 0 or i == 0:
        t = thr[i] if np.isfinite(thr[i]) else thr[i + 1]
        return float(fpr[i]), float(t)
    # between point i-1 (diff > 0) and point i (diff <= 0)
    d0, d1 = diff[i - 1], diff[i]
    w = d0 / (d0 - d1)
    eer = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    t0 = thr[i - 1] if np.isfinite(thr[i - 1]) else thr[i]
    threshold = t0 + w * (thr[i] - t0)
    return float(eer), float(threshold)


def min_dcf(
    scores: np.ndarray,
    labels: np.ndarray,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> tuple[float, float]:
    """Normalised minimum detection cost (NIST SRE definition) and its threshold."""
    fpr, fnr, thr = det_curve(scores, labels)
    cost = c_miss * fnr * p_target + c_fa * fpr * (1.0 - p_target)
    c_def = min(c_miss * p_target, c_fa * (1.0 - p_target))
    i = int(np.argmin(cost))
    t = thr[i] if np.isfinite(thr[i]) else thr[i + 1] + 1e-6
    return float(cost[i] / c_def), float(t)


def error_rates(accepted: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(false-accept rate, false-reject rate) of actual decisions, not of a swept threshold."""
    a = np.asarray(accepted).ravel().astype(bool)
    y = np.asarray(labels).ravel().astype(bool)
    if a.shape != y.shape or not y.any() or y.all():
        raise EdgeVerifyError("need decisions for both target (1) and non-target (0) trials")
    return float(a[~y].mean()), float((~a[y]).mean())


def cllr(llrs: np.ndarray, labels: np.ndarray) -> float:
    """Log-likelihood-ratio cost in bits (Brummer): 0 is perfect, 1 is an uninformative system."""
    s, y = _check(llrs, labels)
    # log2(1 + e^x) computed without overflow
    miss = np.logaddexp(0.0, -s[y]) / np.log(2.0)
    fa = np.logaddexp(0.0, s[~y]) / np.log(2.0)
    return float(0.5 * (miss.mean() + fa.mean()))


def pav(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing sequence closest (weighted least squares) to values."""
    v = np.asarray(values, dtype=np.float64).ravel()
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    means: list[float] = []
    sums: list[float] = []
    counts: list[int] = []
    for x, wx in zip(v, w):
        means.append(x)
        sums.append(wx)
        counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m2, w2, c2 = means.pop(), sums.pop(), counts.pop()
            m1, w1, c1 = means[-1], sums[-1], counts[-1]
            means[-1] = (m1 * w1 + m2 * w2) / (w1 + w2)
            sums[-1] = w1 + w2
            counts[-1] = c1 + c2
    return np.repeat(means, counts)


def min_cllr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Cllr after the best monotone (PAV / ROC convex hull) calibration: the discrimination-only loss."""
    s, y = _check(scores, labels)
    # targets first among ties, so tied scores pool into one bin (no credit for an arbitrary order)
    order = np.lexsort((~y, s))
    posterior = pav(y[order].astype(np.float64))
    n_t, n_n = int(y.sum()), int((~y).sum())
    eps = 1e-12
    p = np.clip(posterior, eps, 1.0 - eps)
    llr = np.log(p / (1.0 - p)) - np.log(n_t / n_n)
    # clipping keeps log finite; the PAV bins at 0 or 1 contribute 0 cost, as they should
    out = np.empty_like(llr)
    out[order] = llr
    return cllr(out, y)


def plot_det(path: str | os.PathLike, curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write a DET plot (probit axes) of one or more systems to ``path`` (PNG/PDF/SVG by suffix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        raise EdgeVerifyError("plotting needs matplotlib: pip install 'edgeverify[plot]'") from exc
    from scipy.stats import norm

    ticks = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4])
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (scores, labels) in curves.items():
        fpr, fnr, _ = det_curve(scores, labels)
        eer, _ = compute_eer(scores, labels)
        eps = 1e-4
        ax.plot(
            norm.ppf(np.clip(fpr, eps, 1 - eps)),
            norm.ppf(np.clip(fnr, eps, 1 - eps)),
            label=f"{name} (EER {100 * eer:.2f} %)",
        )
    ax.set_xticks(norm.ppf(ticks))
    ax.set_xticklabels([f"{100 * t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks))
    ax.set_yticklabels([f"{100 * t:g}" for t in ticks])
    lim = norm.ppf([0.0005, 0.5])
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("false accept rate (%)")
    ax.set_ylabel("false reject rate (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)
