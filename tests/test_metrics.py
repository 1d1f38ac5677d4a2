"""EER / minDCF / DET: hand-checked toy cases and SpeechBrain's reference figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeverify.errors import EdgeVerifyError
from edgeverify.core.metrics import compute_eer, det_curve, min_dcf, plot_det

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "models" / "spkrec-ecapa-voxceleb" / "reference"


def test_perfect_separation():
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    labels = np.array([1, 1, 1, 0, 0, 0])
    eer, thr = compute_eer(scores, labels)
    assert eer == 0.0 and 0.3 <= thr <= 0.7
    dcf, _ = min_dcf(scores, labels)
    assert dcf == 0.0


def test_fully_reversed():
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    labels = np.array([1, 1, 0, 0])
    assert compute_eer(scores, labels)[0] == pytest.approx(1.0)


def test_known_eer_and_det():
    # targets 0.6..0.9 + one bad target at 0.1; non-targets 0.0..0.3 + one at 0.7
    scores = np.array([0.6, 0.7, 0.8, 0.9, 0.1, 0.0, 0.1, 0.2, 0.3, 0.7])
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    fpr, fnr, thr = det_curve(scores, labels)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(fnr) <= 0)
    assert thr[0] == np.inf and fpr[0] == 0 and fnr[0] == 1 and fpr[-1] == 1 and fnr[-1] == 0
    # at threshold 0.7 (ties accepted): 3/5 accepted targets... fnr 2/5, fpr 1/5; at 0.6: fnr 1/5, fpr 1/5
    i = int(np.flatnonzero(thr == 0.6)[0])
    assert fpr[i] == pytest.approx(0.2) and fnr[i] == pytest.approx(0.2)
    eer, t = compute_eer(scores, labels)
    assert eer == pytest.approx(0.2) and t == pytest.approx(0.6)


def test_bad_input():
    with pytest.raises(EdgeVerifyError):
        compute_eer([0.1, 0.2], [1, 1])
    with pytest.raises(EdgeVerifyError):
        compute_eer([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(EdgeVerifyError):
        min_dcf([0.1, np.nan], [1, 0])


@pytest.mark.parametrize(
    "name,eer_pct,dcf,eer_thr",
    [("dev", 4.816, 0.429, 0.357), ("dev8k", 7.928, 0.424, None), ("native8k", 2.208, 0.274, None)],
)
def test_reproduces_speechbrain_reference(name, eer_pct, dcf, eer_thr):
    path = REFERENCE / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"{path} missing")
    ref = np.load(path)
    eer, thr = compute_eer(ref["scores"], ref["labels"])
    assert 100 * eer == pytest.approx(eer_pct, abs=0.01)
    if eer_thr is not None:
        assert thr == pytest.approx(eer_thr, abs=0.002)
    assert min_dcf(ref["scores"], ref["labels"], p_target=0.01)[0] == pytest.approx(dcf, abs=0.001)


def test_plot_det(tmp_path):
    import importlib.util

    rng = np.random.default_rng(0)
    s = np.r_[rng.normal(0.6, 0.1, 200), rng.normal(0.2, 0.1, 200)]
    y = np.r_[np.ones(200), np.zeros(200)]
    out = tmp_path / "det.png"
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(EdgeVerifyError, match="matplotlib"):
            plot_det(out, {"toy": (s, y)})
        return
    plot_det(out, {"toy": (s, y)})
    assert out.stat().st_size > 1000
