"""Scores that mean something: cohort-centred cosine turned into a calibrated log-likelihood ratio.

Plain numpy. The only I/O is reading the shipped cohort file (models/cohort-<variant>.json), which
`edgeverify model calibrate` (edgeverify/build/cohort_build.py) builds from licensed shared speakers.

Per trial, with L2-normalised embeddings a, b and the band's cohort mean m:
  1. centre: a' = unit(a - m), b' = unit(b - m); s = a'.b'. Every embedding of out-of-domain audio
     shares a common offset that plain cosine counts as similarity; removing it halved dev EER.
     (Adaptive s-norm against the cohort's top-N was measured too and made EER worse on top of
     centring on every shared set, so it is not used: README "Scoring".)
  2. llr = w0 + w1 * s + w2 * log(min speech seconds of the two sides): prior-weighted logistic
     regression fitted on dev trials scored speaker-disjointly, so a short command is not judged by
     the threshold of a long clip.
A decision accepts when llr >= the operating point's llr threshold: the EER point of the calibration
trials, or the threshold for target_far. That one is set on the calibration non-targets together with
the same trials cut to voice-command length, and is the 90 % upper bound of a speaker bootstrap
(far_table): a plain quantile held the requested rate on the calibration speakers but not on unseen
ones (1 % requested gave 1.2-1.95 % on 16 kHz, 8 kHz and command trials, docs/accuracy.md).
(LDA/WCCN fitted on the cohort speakers instead of plain centring was measured too: worse EER on
nearly every set, docs/models.md.)
A numeric cosine `threshold` bypasses all of this (the 0.1 meaning, kept for old clients).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ModelError

log = logging.getLogger(__name__)

BANDS = ("16k", "8k")
TELEPHONE_MAX_RATE = 8000  # audio recorded at this rate or lower is scored with the telephone-band cohort
# The duration term is clamped to [MIN_QUALITY_S, MAX_QUALITY_S] seconds of speech. Below 3 s the dev trials
# hold too few clips to learn it, and extrapolating it raised short clips' non-target llrs: on test sides
# cut to 1.5-2 s a requested FAR of 1 % gave 3.5 % unclamped, 1.0 % clamped (README "Scoring").
MIN_QUALITY_S = 3.0
MAX_QUALITY_S = 20.0
SCORE_MODES = ("calibrated", "cosine")
DEFAULT_SCORE_MODE = "calibrated"
FAR_MIN, FAR_MAX = 0.0005, 0.5  # target_far range; below ~1/(non-target calibration trials) is guesswork
COHORT_FORMAT = 1
FAR_BOOTSTRAP_ROUNDS = 200


def band_for_rate(source_rate: int) -> str:
    return "8k" if int(source_rate) <= TELEPHONE_MAX_RATE else "16k"


def unit(x: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis (rows of a matrix, or one vector)."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def quality(speech_s: np.ndarray | float) -> np.ndarray:
    return np.log(np.clip(np.asarray(speech_s, dtype=np.float64), MIN_QUALITY_S, MAX_QUALITY_S))


def check_target_far(far: float) -> float:
    far = float(far)
    if not FAR_MIN <= far <= FAR_MAX:
        raise ValueError(f"target_far must be in {FAR_MIN:g}..{FAR_MAX:g}, got {far:g}")
    return far


@dataclass(frozen=True)
class Calibration:
    """llr = w[0] + w[1] * centred cosine + w[2] * log(min speech s), with its operating points."""

    weights: np.ndarray  # (3,)
    eer_llr: float  # llr threshold at the EER point of the calibration trials
    far_grid: np.ndarray  # ascending false-accept rates ...
    far_llr: np.ndarray  # ... and the llr thresholds that give them on the calibration non-targets

    def llr(self, score: np.ndarray | float, speech_s: np.ndarray | float) -> np.ndarray:
        w = self.weights
        return w[0] + w[1] * np.asarray(score, dtype=np.float64) + w[2] * quality(speech_s)

    def threshold_for_far(self, far: float) -> float:
        """llr threshold whose false-accept rate on the calibration non-targets is `far` (log-interpolated)."""
        far = check_target_far(far)
        return float(np.interp(math.log(far), np.log(self.far_grid), self.far_llr))


@dataclass(frozen=True)
class Band:
    mean: np.ndarray  # (d,) cohort mean embedding
    calibration: Calibration

    def centre(self, embedding: np.ndarray) -> np.ndarray:
        return unit(np.asarray(embedding, dtype=np.float64) - self.mean)


@dataclass(frozen=True)
class Side:
    """One side of a trial, prepared once (a test clip, or a profile at enrollment)."""

    embedding: np.ndarray  # raw L2-normalised embedding (plain cosine)
    speech_s: float
    band: str  # the band of the audio it came from
    centred: Dict[str, np.ndarray]  # band -> (clips, d) embedding(s) centred on that band's cohort mean


@dataclass(frozen=True)
class TrialScore:
    cosine: float
    centred: float
    llr: float
    band: str


class Scorer:
    """The shipped cohort means and calibrations of one model variant."""

    def __init__(self, bands: Dict[str, Band], fingerprint: str, model_sha256: str = "", source: str = "") -> None:
        if "16k" not in bands:
            raise ModelError("a cohort needs at least the 16k band")
        self.bands = bands
        self.fingerprint = fingerprint  # changes whenever the cohort changes (profiles store it)
        self.model_sha256 = model_sha256
        self.source = source

    def band(self, name: str) -> Band:
        return self.bands.get(name) or self.bands["16k"]

    def side(self, embedding: np.ndarray, speech_s: float, band: str = "16k",
             centred: Optional[Dict[str, np.ndarray]] = None, clips: Optional[np.ndarray] = None) -> Side:
        """A clip, or a profile: then `clips` holds its enrollment embeddings and a trial scores the mean
        of the per-clip centred cosines -- the scale the calibration was fitted on (one clip vs one clip;
        the cosine to a mean embedding is inflated by 1/|mean| and named strangers twice as often)."""
        e = unit(embedding)
        rows = unit(np.atleast_2d(clips if clips is not None else e))
        given = centred or {}
        c = {}
        for name, b in self.bands.items():
            g = given.get(name)
            ok = g is not None and np.ndim(g) in (1, 2) and np.atleast_2d(g).shape == rows.shape
            c[name] = np.atleast_2d(g) if ok else b.centre(rows)
        return Side(embedding=e, speech_s=float(speech_s), band=band, centred=c)

    def score(self, a: Side, b: Side) -> TrialScore:
        """Telephone-band if either side is: the wideband side loses nothing the narrow one has."""
        band = "8k" if "8k" in (a.band, b.band) and "8k" in self.bands else "16k"
        s = float(np.mean(np.atleast_2d(a.centred[band]) @ np.atleast_2d(b.centred[band]).T))
        llr = float(self.bands[band].calibration.llr(s, min(a.speech_s, b.speech_s)))
        return TrialScore(cosine=float(a.embedding @ b.embedding), centred=s, llr=llr, band=band)

    def llr_threshold(self, band: str, target_far: Optional[float]) -> float:
        cal = self.band(band).calibration
        return cal.eer_llr if target_far is None else cal.threshold_for_far(target_far)


# -- the cohort file -----------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=4)
def _cached_sha256(path: str, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def cohort_file(model_path: Path, variant: str) -> Path:
    """The model's own cohort (model_store.cohort_path: cohort-campp-int8.json beside campp-int8.onnx);
    for a model file of another name, cohort-<variant>.json, else cohort-int8.json beside it."""
    from .model_store import MODELS, cohort_path

    if Path(model_path).stem.rpartition("-")[0] in MODELS:
        return cohort_path(model_path)
    d = Path(model_path).parent
    own = d / f"cohort-{variant}.json"
    return own if own.is_file() else d / "cohort-int8.json"


def load_scorer(path: Path, model_path: Optional[Path] = None, variant: Optional[str] = None) -> Scorer:
    """Read a cohort file; logs a warning when it was built from a different model file of the same
    variant (the fp32 model borrowing the int8 cohort is expected: their embeddings agree to ~0.997)."""
    try:
        raw = Path(path).read_bytes()
        doc = json.loads(raw)
        bands = {}
        for name, b in doc["bands"].items():
            if name not in BANDS:
                continue
            cal = b["calibration"]
            bands[name] = Band(
                mean=np.asarray(b["mean"], dtype=np.float64),
                calibration=Calibration(
                    weights=np.asarray(cal["weights"], dtype=np.float64),
                    eer_llr=float(cal["eer_llr"]),
                    far_grid=np.asarray(cal["far_grid"], dtype=np.float64),
                    far_llr=np.asarray(cal["far_llr"], dtype=np.float64),
                ),
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read cohort file {path}: {exc}") from exc
    model_sha = str(doc.get("model_sha256", ""))
    if model_path is not None and model_sha and (variant is None or doc.get("model") == variant):
        p = Path(model_path)
        actual = _cached_sha256(str(p), p.stat().st_mtime_ns)
        if actual != model_sha:
            log.warning(
                "cohort %s was built from another model (sha256 %s..., %s has %s...): scores may be off; "
                "re-run `edgeverify model calibrate`", path, model_sha[:12], p.name, actual[:12],
            )
    fingerprint = hashlib.sha256(raw).hexdigest()[:16]
    return Scorer(bands, fingerprint=fingerprint, model_sha256=model_sha, source=str(path))


def save_scorer(path: Path, bands: Dict[str, Band], model_sha256: str, extra: Dict) -> None:
    def r(x: np.ndarray, digits: int = 6) -> List[float]:
        return [round(float(v), digits) for v in np.asarray(x).ravel()]

    doc = {
        "format": COHORT_FORMAT,
        "model_sha256": model_sha256,
        **extra,
        "bands": {
            name: {
                "mean": r(b.mean, 7),
                "calibration": {
                    "weights": r(b.calibration.weights, 8),
                    "eer_llr": round(float(b.calibration.eer_llr), 6),
                    "far_grid": r(b.calibration.far_grid, 8),
                    "far_llr": r(b.calibration.far_llr, 6),
                },
            }
            for name, b in bands.items()
        },
    }
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


# -- fitting (used by cohort_build; plain numpy, no sklearn) -------------------------------------------


def fit_logistic(x: np.ndarray, y: np.ndarray, prior: float = 0.5, l2: float = 1e-6, iters: int = 100) -> np.ndarray:
    """Prior-weighted logistic regression by Newton/IRLS: returns w with llr = [1, x] @ w.

    Targets and non-targets are weighted so the effective prior is `prior`; the fitted log-odds minus
    logit(prior) is then a log-likelihood ratio (Brummer's linear calibration).
    """
    y = np.asarray(y).astype(bool)
    X = np.column_stack([np.ones(len(y)), np.asarray(x, dtype=np.float64).reshape(len(y), -1)])
    wt = np.where(y, prior / y.sum(), (1 - prior) / (~y).sum())
    offset = math.log(prior / (1 - prior))
    w = np.zeros(X.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(X @ w + offset)))
        grad = X.T @ (wt * (p - y)) + l2 * w
        hess = (X * (wt * p * (1 - p))[:, None]).T @ X + l2 * np.eye(X.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def far_table(nontarget_llrs: np.ndarray, grid: Optional[np.ndarray] = None,
              speakers: Optional[Tuple[Sequence[str], Sequence[str]]] = None, confidence: float = 0.0,
              rounds: int = FAR_BOOTSTRAP_ROUNDS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """llr thresholds at which the given non-target llrs are accepted at each false-accept rate.

    With `speakers` (the two sides' speaker ids per trial) and a `confidence`, each threshold is the
    `confidence` quantile of the thresholds of `rounds` speaker-bootstrap resamplings: the trials of one
    pair of voices are not independent, so the false-accept rate of the next, unseen speakers varies far
    more than the trial count suggests, and the plain quantile holds the requested rate only half the time.
    """
    g = np.geomspace(FAR_MIN, FAR_MAX, 49) if grid is None else np.asarray(grid, dtype=np.float64)
    llr = np.asarray(nontarget_llrs, dtype=np.float64)
    if speakers is None or confidence <= 0.0:
        return g, np.quantile(llr, 1.0 - g)
    if not len(speakers[0]) == len(speakers[1]) == llr.size:
        raise ValueError("far_table: one speaker pair per non-target llr")
    names = sorted(set(speakers[0]) | set(speakers[1]))
    ids = {n: i for i, n in enumerate(names)}
    ia = np.array([ids[n] for n in speakers[0]])
    ib = np.array([ids[n] for n in speakers[1]])
    order = np.argsort(-llr)
    ranked, ia, ib = llr[order], ia[order], ib[order]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=rounds).astype(np.float64)
    out = np.empty((rounds, g.size))
    for r in range(rounds):  # one round: speakers drawn with replacement, a trial weighs count(a) * count(b)
        w = counts[r, ia] * counts[r, ib]
        accepted = np.cumsum(w) / max(w.sum(), 1e-12)  # FAR when the threshold is at each ranked llr
        out[r] = ranked[np.minimum(np.searchsorted(accepted, g), ranked.size - 1)]
    return g, np.quantile(out, confidence, axis=0)
