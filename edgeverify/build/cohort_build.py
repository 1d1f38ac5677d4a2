"""Build the shipped cohort + calibration (models/cohort-<variant>.json) from the shared dev speakers.

One deterministic command, re-run whenever the model changes (embeddings move, so must the cohort):

    edgeverify model calibrate --speech-dir ../shared/data/speech [--model int8|fp32] [--report]

Only speakers whose licence allows redistributing derived numbers are used (LICENSED_SOURCES; EmoDB and
Hyke carry no licence, FSDD is share-alike); the file holds numbers only (a mean embedding per band and a
few calibration constants), with the model's sha256 and the attribution. Everything is scored
speaker-disjointly: a trial's centring mean never contains its own speakers (K folds over speakers),
so the calibration sees the score distribution that unseen users will produce.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.audio import TARGET_RATE, audio_from_array, read_audio, resample
from ..errors import AudioError, EdgeVerifyError
from ..core.metrics import compute_eer, cllr, min_cllr, min_dcf
from ..core.scoring import Band, Calibration, far_table, fit_logistic, quality, save_scorer, unit, file_sha256
from ..core.trials import read_trials as parse_trials, speaker_of
from ..core.verifier import Verifier
from ..core.model_store import resolve_model

log = logging.getLogger(__name__)

# source corpus (speakers.tsv "source") -> attribution line shipped in the cohort file and README
LICENSED_SOURCES = {
    "speechocean762": "speechocean762 (Zhang et al., Interspeech 2021; OpenSLR 101), CC BY 4.0",
    "librispeech": "LibriSpeech (Panayotov et al., ICASSP 2015; OpenSLR 12), CC BY 4.0",
    "vctk": "CSTR VCTK Corpus 0.92 (Yamagishi et al.), CC BY 4.0",
    "deep-speaker-samples": "deep-speaker sample recordings (philipperemy/deep-speaker), MIT",
}
FOLDS = 5
Progress = Optional[Callable[[str, int, int], None]]


@dataclass
class Embedded:
    index: Dict[str, int]  # file -> row
    emb: np.ndarray  # (n, d) L2-normalised
    speech_s: np.ndarray  # (n,)
    speaker: List[str]


def read_sources(root: Path) -> Dict[str, str]:
    with open(root / "speakers.tsv", encoding="utf-8") as fh:
        return {row["speaker"]: row["source"] for row in csv.DictReader(fh, delimiter="\t")}


def read_trials(path: Path) -> Tuple[np.ndarray, List[str], List[str]]:
    t = parse_trials(path)
    return np.array([x[0] for x in t]), [x[1] for x in t], [x[2] for x in t]


def embed_files(verifier: Verifier, root: Path, files: Sequence[str], via_8k: bool = False,
                progress: Progress = None, label: str = "") -> Embedded:
    """Embed as `verify` does; via_8k first takes the clip down to 8 kHz (what a telephone-band device gets)."""
    index, embs, secs, spk = {}, [], [], []
    for i, name in enumerate(files, 1):
        try:
            audio = read_audio(root / name, name=name)
            if via_8k:
                narrow = resample(audio.samples.astype(np.float64), TARGET_RATE, 8000)
                audio = audio_from_array(narrow.astype(np.float32), 8000, name=name)
            e, s = verifier.embed_with_speech(audio)
        except AudioError as exc:
            log.info("skipped %s: %s", name, exc.message)
        else:
            index[name] = len(embs)
            embs.append(e)
            secs.append(s)
            spk.append(speaker_of(name))
        if progress:
            progress(label, i, len(files))
    if not embs:
        raise EdgeVerifyError(f"no usable clips under {root}")
    return Embedded(index, np.stack(embs).astype(np.float64), np.array(secs), spk)


def assign_folds(speakers: Sequence[str], k: int = FOLDS) -> Dict[str, int]:
    """Round-robin over sorted ids: deterministic, and each source corpus spread over every fold."""
    return {s: i % k for i, s in enumerate(sorted(set(speakers)))}


@dataclass
class TrialSet:
    y: np.ndarray
    score: np.ndarray  # centred cosine, held-out mean
    cosine: np.ndarray
    speech_s: np.ndarray  # min of both sides
    fa: np.ndarray  # fold of each side (-1: speaker in no fold, i.e. never in the cohort)
    fb: np.ndarray


def heldout_trials(y: np.ndarray, a: List[str], b: List[str], test: Embedded, cohort: Embedded,
                   folds: Dict[str, int]) -> TrialSet:
    """Centred cosine per trial with a cohort mean that leaves out the folds of both trial speakers."""
    keep = np.array([n in test.index for n in a]) & np.array([n in test.index for n in b])
    a = [n for n, k in zip(a, keep) if k]
    b = [n for n, k in zip(b, keep) if k]
    ea = test.emb[[test.index[n] for n in a]]
    eb = test.emb[[test.index[n] for n in b]]
    fa = np.array([folds.get(speaker_of(n), -1) for n in a])
    fb = np.array([folds.get(speaker_of(n), -1) for n in b])
    cfold = np.array([folds.get(s, -2) for s in cohort.speaker])
    score = np.zeros(len(a))
    for f1, f2 in sorted(set(zip(fa.tolist(), fb.tolist()))):
        sel = (fa == f1) & (fb == f2)
        rows = (cfold >= 0) & (cfold != f1) & (cfold != f2)
        mean = cohort.emb[rows].mean(axis=0)
        score[sel] = np.sum(unit(ea[sel] - mean) * unit(eb[sel] - mean), axis=1)
    secs = np.minimum(test.speech_s[[test.index[n] for n in a]], test.speech_s[[test.index[n] for n in b]])
    return TrialSet(y[keep], score, np.sum(ea * eb, axis=1), secs, fa, fb)


def fit_calibration(t: TrialSet, mask: Optional[np.ndarray] = None) -> Calibration:
    m = np.ones(len(t.y), bool) if mask is None else mask
    w = fit_logistic(np.column_stack([t.score[m], quality(t.speech_s[m])]), t.y[m])
    cal = Calibration(weights=w, eer_llr=0.0, far_grid=np.array([1.0]), far_llr=np.array([0.0]))
    llr = cal.llr(t.score[m], t.speech_s[m])
    grid, thr = far_table(llr[t.y[m] == 0])
    return Calibration(weights=w, eer_llr=compute_eer(llr, t.y[m])[1], far_grid=grid, far_llr=thr)


def heldout_report(t: TrialSet, train: TrialSet, cosine_threshold: float) -> Dict[str, float]:
    """Figures for trials `t` with calibrations fitted only on `train` trials of other speaker folds."""
    llr = np.zeros(len(t.y))
    accept = {k: np.zeros(len(t.y), bool) for k in ("eer", "far0.01", "far0.001")}
    for f1, f2 in sorted(set(zip(t.fa.tolist(), t.fb.tolist()))):
        sel = (t.fa == f1) & (t.fb == f2)
        m = ~np.isin(train.fa, [f1, f2]) & ~np.isin(train.fb, [f1, f2])
        cal = fit_calibration(train, m)
        llr[sel] = cal.llr(t.score[sel], t.speech_s[sel])
        accept["eer"][sel] = llr[sel] >= cal.eer_llr
        accept["far0.01"][sel] = llr[sel] >= cal.threshold_for_far(0.01)
        accept["far0.001"][sel] = llr[sel] >= cal.threshold_for_far(0.001)
    y = t.y.astype(bool)
    cos_acc = t.cosine >= cosine_threshold
    r = {
        "n_trials": int(len(y)), "n_target": int(y.sum()),
        "cosine_eer_percent": 100 * compute_eer(t.cosine, y)[0],
        "cosine_min_dcf": min_dcf(t.cosine, y)[0],
        "cosine_far_percent": 100 * cos_acc[~y].mean(), "cosine_frr_percent": 100 * (~cos_acc[y]).mean(),
        "centred_eer_percent": 100 * compute_eer(t.score, y)[0],
        "eer_percent": 100 * compute_eer(llr, y)[0],
        "min_dcf": min_dcf(llr, y)[0],
        "cllr": cllr(llr, y), "min_cllr": min_cllr(llr, y),
    }
    for k, acc in accept.items():
        r[f"{k}_far_percent"] = 100 * acc[~y].mean()
        r[f"{k}_frr_percent"] = 100 * (~acc[y]).mean()
    return {k: round(float(v), 4) if isinstance(v, float) else v for k, v in r.items()}


def merge(a: Embedded, b: Embedded, prefix_a: str = "") -> Embedded:
    index = {prefix_a + k: v for k, v in a.index.items()}
    index.update({k: v + len(a.speaker) for k, v in b.index.items()})
    return Embedded(index, np.vstack([a.emb, b.emb]), np.r_[a.speech_s, b.speech_s], a.speaker + b.speaker)


def build(speech_dir: Path, model: str = "int8", out: Optional[Path] = None, report: bool = False,
          progress: Progress = None, degraded: Optional[Path] = None, precision: Optional[str] = None
          ) -> Tuple[Path, Dict]:
    """Embed, fit and write the cohort file (cohort-<model file>.json beside the model); returns
    (path, held-out figures)."""
    dev = Path(speech_dir) / "dev"
    if not (dev / "trials.txt").is_file():
        raise EdgeVerifyError(f"{dev}/trials.txt not found (is --speech-dir the shared speech folder?)")
    model_file = resolve_model(model, precision)
    verifier = Verifier.load(str(model_file), score_mode="cosine")
    sources = read_sources(dev)
    licensed = sorted(s for s, src in sources.items() if src in LICENSED_SOURCES)
    used_sources = sorted({sources[s] for s in licensed})
    folds = assign_folds(licensed)
    files = sorted(str(p.relative_to(dev)) for s in licensed for p in (dev / s).glob("*.wav"))
    y, a, b = read_trials(dev / "trials.txt")
    lic = np.array([speaker_of(x) in folds and speaker_of(z) in folds for x, z in zip(a, b)])
    y_l, a_l, b_l = y[lic], [x for x, k in zip(a, lic) if k], [x for x, k in zip(b, lic) if k]
    bands: Dict[str, Band] = {}
    figures: Dict[str, Dict] = {}
    embedded: Dict[str, Embedded] = {}
    cosine_threshold = verifier.threshold
    for band, via_8k in (("16k", False), ("8k", True)):
        emb = embed_files(verifier, dev, files, via_8k, progress, f"dev {band}")
        embedded[band] = emb
        train = heldout_trials(y_l, a_l, b_l, emb, emb, folds)
        bands[band] = Band(mean=emb.emb.mean(axis=0), calibration=fit_calibration(train))
        figures[f"dev-licensed ({band} cohort)" if band == "16k" else "dev-licensed via 8 kHz"] = heldout_report(
            train, train, cosine_threshold)
    model_path = verifier.embedder.path
    path = Path(out) if out else model_path.parent / f"cohort-{model_path.stem}.json"
    save_scorer(path, bands, file_sha256(model_path), {
        "model": model_path.stem,
        "built_by": "edgeverify model calibrate (edgeverify/build/cohort_build.py)",
        "cohort": {"speakers": len(licensed), "files": len(embedded["16k"].index), "folds": FOLDS,
                   "sources": [LICENSED_SOURCES[s] for s in used_sources]},
        "calibration_trials": {"16k": int(lic.sum()), "8k": int(lic.sum()),
                               "from": "dev/trials.txt, licensed speakers only; 8k = same clips via 8 kHz"},
    })
    if report:
        extra = [("dev", "16k"), ("dev8k", "8k"), ("native8k", "8k")]
        for name, band in extra:
            root = Path(speech_dir) / name
            if not (root / "trials.txt").is_file():
                continue
            ty, ta, tb = read_trials(root / "trials.txt")
            need = sorted(set(ta) | set(tb))
            test = embed_files(verifier, root, need, False, progress, name)
            train = heldout_trials(y_l, a_l, b_l, embedded[band], embedded[band], folds)
            t = heldout_trials(ty, ta, tb, test, embedded[band], folds)
            figures[name] = heldout_report(t, train, cosine_threshold)
            if name == "dev":
                clean_dev, train16 = test, train
    if report and degraded is not None:
        # python -m edgeverify.tools.degrade output: <degraded>/<condition>/trials.txt, enrollment side dev/...
        for trials_file in sorted(Path(degraded).glob("*/trials.txt")):
            cond = trials_file.parent.name
            if trials_file.parent.is_symlink():  # DIR/dev links to the clean set
                continue
            ty, ta, tb = read_trials(trials_file)
            need = sorted({n for n in tb if not n.startswith("dev/")})
            test = merge(clean_dev, embed_files(verifier, Path(degraded), need, False, progress, cond), "dev/")
            t = heldout_trials(ty, ta, tb, test, embedded["16k"], folds)
            figures[f"degraded {cond}"] = {**heldout_report(t, train16, cosine_threshold),
                                           "n_refused_clips": len(need) - (len(test.speaker) - len(clean_dev.speaker))}
    return path, figures
