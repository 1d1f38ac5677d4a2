"""Calibrated scoring: metrics (Cllr, min Cllr), the numpy logistic regression, operating points, the shipped
cohort on real recordings of speakers it was not built from, and profile cohort statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeverify.core.metrics import cllr, compute_eer, error_rates, min_cllr, pav
from edgeverify.core.scoring import Calibration, far_table, fit_logistic, quality

def _gauss(n_t: int = 2000, n_n: int = 8000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(1.0, 1.0, n_t), rng.normal(-1.0, 1.0, n_n)], np.r_[np.ones(n_t), np.zeros(n_n)].astype(int)


def test_cllr_and_min_cllr() -> None:
    s, y = _gauss()
    true_llr = 2.0 * s  # log N(s;1,1) - log N(s;-1,1)
    assert cllr(np.zeros_like(s), y) == pytest.approx(1.0)  # an uninformative system costs 1 bit
    assert min_cllr(true_llr, y) <= cllr(true_llr, y) + 1e-9
    assert cllr(true_llr, y) - min_cllr(true_llr, y) < 0.02  # the true llr is (nearly) calibrated
    assert cllr(5 * true_llr, y) > cllr(true_llr, y) + 0.1  # over-confident scores cost more
    assert min_cllr(5 * true_llr + 3, y) == pytest.approx(min_cllr(true_llr, y), abs=1e-9)  # monotone-invariant
    assert min_cllr(np.array([0.0, 1.0]), np.array([1, 0])) == pytest.approx(1.0)  # reversed: no information
    assert list(pav(np.array([1.0, 3.0, 2.0, 4.0]))) == [1.0, 2.5, 2.5, 4.0]


def test_error_rates() -> None:
    far, frr = error_rates(np.array([1, 0, 1, 1]), np.array([1, 1, 0, 0]))
    assert (far, frr) == (1.0, 0.5)


def test_logistic_recovers_the_true_llr() -> None:
    s, y = _gauss()
    w = fit_logistic(s[:, None], y)
    assert w[1] == pytest.approx(2.0, rel=0.1) and w[0] == pytest.approx(0.0, abs=0.15)
    # the prior weighting makes the output an llr whatever the target/non-target ratio
    s2, y2 = _gauss(n_t=500, n_n=9500, seed=1)
    w2 = fit_logistic(s2[:, None], y2)
    assert w2[0] == pytest.approx(0.0, abs=0.3)


def test_operating_points_are_ordered() -> None:
    s, y = _gauss()
    grid, thr = far_table(2 * s[y == 0])
    cal = Calibration(weights=np.array([0.0, 2.0, 0.0]), eer_llr=compute_eer(2 * s, y)[1], far_grid=grid, far_llr=thr)
    t1, t01 = cal.threshold_for_far(0.01), cal.threshold_for_far(0.001)
    assert t01 > t1 > cal.eer_llr
    assert np.mean(2 * s[y == 0] >= t1) == pytest.approx(0.01, abs=0.003)
    with pytest.raises(ValueError):
        cal.threshold_for_far(0.9)
    assert quality(0.1) == quality(3.0) < quality(5.0) < quality(100.0) == quality(20.0)


# -- the shipped cohort on real recordings -----------------------------------------------------------


@pytest.fixture(scope="module", params=["dev", "dev8k"])
def emodb(request, speech_dir: Path, int8_verifier) -> dict:
    """EmoDB's 2 s acted-emotion clips at 16 kHz and 8 kHz: speakers the cohort does not contain (no
    licence to ship them), short clips (the duration term), emotions differing on purpose."""
    from edgeverify.core.audio import read_audio

    root = speech_dir / request.param
    trials = [t.split() for t in (root / "trials.txt").read_text().splitlines()]
    keep = [t for t in trials if t[1].startswith("emodb") and t[2].startswith("emodb")]
    files = sorted({f for t in keep for f in t[1:]})
    prepared = {f: int8_verifier.prepare(read_audio(root / f)) for f in files}
    return {"trials": keep, "prepared": prepared, "band": "16k" if request.param == "dev" else "8k"}


@pytest.mark.slow
def test_calibrated_beats_cosine_on_unseen_speakers(emodb: dict, int8_verifier) -> None:
    v = int8_verifier
    y = np.array([int(t[0]) for t in emodb["trials"]])
    pairs = [(emodb["prepared"][a], emodb["prepared"][b]) for _, a, b in emodb["trials"]]
    assert all(side is not None and side.band == emodb["band"] for p in pairs for _, side in p)
    decisions = [v.decide_sides(a, b) for a, b in pairs]
    llr = np.array([d.llr for d in decisions])
    cos = np.array([d.score for d in decisions])
    assert compute_eer(llr, y)[0] <= compute_eer(cos, y)[0]
    # llr sign: same-speaker trials mostly positive, different-speaker trials mostly negative
    assert np.median(llr[y == 1]) > 0 > np.median(llr[y == 0])
    assert all(d.operating_point == "eer" and d.same_speaker == (d.llr >= d.threshold) for d in decisions)


@pytest.mark.slow
def test_calibration_monotone_and_target_far(emodb: dict, int8_verifier) -> None:
    v = int8_verifier
    a, b = (emodb["prepared"][f] for f in emodb["trials"][0][1:])
    cal = v.scorer.bands["16k"].calibration
    assert cal.weights[1] > 0  # more similar -> more evidence (the duration weight's sign is the data's call)
    for band in v.scorer.bands.values():
        assert np.all(np.diff(band.calibration.far_llr) <= 0)  # higher FAR -> lower llr threshold
    strict, loose = v.decide_sides(a, b, target_far=0.001), v.decide_sides(a, b, target_far=0.1)
    assert strict.operating_point == "far=0.001" and loose.operating_point == "far=0.1"
    assert strict.threshold > loose.threshold and strict.llr == loose.llr
    old = v.decide_sides(a, b, threshold=0.5)  # a numeric threshold keeps its 0.1 meaning: raw cosine
    assert old.operating_point == "threshold" and old.llr is None and old.same_speaker == (old.score >= 0.5)


def test_profile_stores_cohort_stats_and_recomputes(tmp_path: Path) -> None:
    from edgeverify.store.profiles import ProfileStore
    from edgeverify.core.scoring import Band, Scorer

    rng = np.random.default_rng(3)
    cal = Calibration(weights=np.array([0.0, 10.0, 1.0]), eer_llr=3.0, far_grid=np.array([0.01, 0.1]),
                      far_llr=np.array([4.0, 2.0]))
    mean = rng.normal(size=16)
    scorer = Scorer({"16k": Band(mean=mean, calibration=cal)}, fingerprint="aaaa")
    store = ProfileStore(tmp_path)
    e = rng.normal(size=16) + 0.3 * rng.normal(size=(3, 16))  # three clips of one voice
    store.enroll("alice", list(e), speech_s=[2.0, 3.0, 4.0], scorer=scorer)
    doc = json.loads(store.path("alice").read_text())
    assert doc["cohort"]["fingerprint"] == "aaaa" and doc["speech_s"] == 3.0 and len(doc["clip_embeddings"]) == 3
    stored = np.asarray(doc["cohort"]["centred"]["16k"])
    side = store.sides(scorer)["alice"][1]
    np.testing.assert_allclose(side.centred["16k"], stored, atol=1e-6)
    # another cohort: the stored statistics are stale and get recomputed from the embedding
    other = Scorer({"16k": Band(mean=-mean, calibration=cal)}, fingerprint="bbbb")
    fresh = store.sides(other)["alice"][1]
    clips = store.get("alice").clip_embeddings
    assert clips.shape == (3, 16)
    np.testing.assert_allclose(fresh.centred["16k"], other.bands["16k"].centre(clips), atol=1e-9)
    assert float(np.sum(fresh.centred["16k"] * stored, axis=1).max()) < 0.99
    # a profile trial scores the mean of the per-clip centred cosines (the calibration's one-clip scale)
    test = scorer.side(e[0], 3.0)
    trial = scorer.score(test, side)
    assert trial.centred == pytest.approx(float(np.mean(stored @ test.centred["16k"][0])), abs=1e-6)


@pytest.mark.slow
def test_identification_eval_on_a_folder(tmp_path: Path, speech_dir: Path, int8_verifier) -> None:
    """eval --identify on 7 EmoDB speakers (2 s clips): 4 enrolled from 3 clips, 3 strangers."""
    from edgeverify.tools.evaluate import evaluate_identification

    for d in sorted((speech_dir / "dev").glob("emodb-*")):
        (tmp_path / d.name).symlink_to(d)
    r = evaluate_identification(int8_verifier, tmp_path, enroll_clips=3)
    assert r.n_enrolled == 4 and r.n_known_tests == 4 * 5 and r.n_stranger_tests == 3 * 8
    assert r.operating_point == "eer" and r.score_mode == "calibrated"
    assert r.correct_id_percent + r.wrong_id_percent <= 100.0
    assert r.correct_id_percent >= 50.0 and r.false_alarm_percent <= 50.0
