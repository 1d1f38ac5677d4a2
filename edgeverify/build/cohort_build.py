"""Build the shipped cohort + calibration (models/cohort-<variant>.json) from the shared dev speakers.

One deterministic command, re-run whenever the model changes (embeddings move, so must the cohort):

    edgeverify model calibrate --speech-dir ../shared/data/speech [--model campp|ecapa] [--report]

Only speakers whose licence allows redistributing derived numbers are used (LICENSED_SOURCES; EmoDB and
Hyke carry no licence, FSDD is share-alike); the file holds numbers only (a mean embedding per band and a
few calibration constants), with the model's sha256 and the attribution. Everything is scored
speaker-disjointly: a trial's centring mean never contains its own speakers (K folds over speakers),
so the calibration sees the score distribution that unseen users will produce.

Per band, what is embedded: the licensed dev clips (16 kHz, or taken through 8 kHz), a command-length cut
of each (command_crop: for the target_far thresholds only), and for 8 kHz also a telephone-line copy of
each (telephone_channel: in the cohort mean and the calibration). The target_far table is the 90 % bound
of a speaker bootstrap (scoring.far_table), so the rate holds on speakers outside the cohort.
"""

from __future__ import annotations

import csv
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.audio import TARGET_RATE, audio_from_array, read_audio, resample
from ..errors import AudioError, EdgeVerifyError
from ..core.metrics import compute_eer, cllr, min_cllr, min_dcf
from ..core.scoring import (FAR_BOOTSTRAP_ROUNDS, Band, Calibration, far_table, file_sha256, fit_logistic, quality,
                            save_scorer, unit)
from ..core.trials import read_trials as parse_trials, speaker_of
from ..core.vad import speech_segments
from ..core.verifier import EMBEDDING_VAD, Verifier
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
COMMAND_S = (1.0, 2.5)  # length of the command-length calibration pieces (command_crop)
COMMAND_PREFIX = "command/"  # how command cuts are addressed in calibration trials (speaker_of still works)
TELEPHONE_PREFIX = "telephone/"  # and telephone copies (8 kHz band only)
# target_far thresholds: the 90 % upper confidence bound over a speaker bootstrap (far_table). Speaker-
# disjoint on the shared sets, the plain quantile gave 1.2-1.95 % for a requested 1 % (docs/accuracy.md).
FAR_CONFIDENCE = 0.9
REPORT_FARS = (0.05, 0.01, 0.001)
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


def command_crop(samples: np.ndarray, name: str) -> np.ndarray:
    """A voice-command-length piece of a clip: 1.0-2.5 s of audio starting at a random point of its speech
    (seeded by the file name, so builds are reproducible). Commands are what a home device mostly
    hears, and the dev clips alone hold too few of them to calibrate the duration term and thresholds."""
    rng = np.random.default_rng(zlib.crc32(f"command:{name}".encode()))
    length = int(rng.uniform(COMMAND_S[0], COMMAND_S[1]) * TARGET_RATE)
    segs = speech_segments(samples, TARGET_RATE, EMBEDDING_VAD)
    first, last = (segs[0][0], segs[-1][1]) if segs else (0, samples.size)
    start = int(rng.integers(first, max(first + 1, last - length)))
    return samples[max(0, start - int(0.1 * TARGET_RATE)) : start + length]


def telephone_channel(samples: np.ndarray, name: str) -> np.ndarray:
    """A 16 kHz clip as a telephone line delivers it at 8 kHz: 300-3400 Hz band-pass, a level between -30
    and -15 dBFS, G.711 mu-law (8 bit). Seeded by the file name. An 8 kHz device mostly hears such audio,
    not clean downsampled speech; with these copies in the 8 kHz cohort and calibration, telephone
    recordings of speakers it never saw score on the calibrated scale (docs/models.md)."""
    from scipy.signal import butter, sosfilt  # build time only

    rng = np.random.default_rng(zlib.crc32(f"tel:{name}".encode()))
    x = resample(np.asarray(samples, dtype=np.float64), TARGET_RATE, 8000)
    x = sosfilt(butter(4, [300, 3400], btype="bandpass", fs=8000, output="sos"), x)
    x *= 10 ** (rng.uniform(-30, -15) / 20) / (np.sqrt(np.mean(x**2)) + 1e-12)
    mu = 255.0
    y = np.round(np.sign(x) * np.log1p(mu * np.minimum(np.abs(x), 1.0)) / np.log1p(mu) * 127) / 127
    return np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu


def embed_files(verifier: Verifier, root: Path, files: Sequence[str], via_8k: bool = False,
                progress: Progress = None, label: str = "", crop: bool = False, telephone: bool = False) -> Embedded:
    """Embed as `verify` does; via_8k first takes the clip down to 8 kHz (what a telephone-band device gets);
    crop first cuts a command-length piece (command_crop); telephone passes it through telephone_channel."""
    index, embs, secs, spk = {}, [], [], []
    for i, name in enumerate(files, 1):
        try:
            audio = read_audio(root / name, name=name)
            if crop:
                audio = audio_from_array(command_crop(audio.samples, name), TARGET_RATE, name=name)
            if telephone:
                audio = audio_from_array(telephone_channel(audio.samples, name).astype(np.float32), 8000, name=name)
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
    sa: List[str]  # speaker of each side (the threshold bootstrap resamples speakers)
    sb: List[str]
    command: np.ndarray  # the test side is a command-length cut (thresholds only, not the llr fit)
    telephone: np.ndarray  # both sides are telephone-channel copies (8 kHz band)
    alike: Optional[np.ndarray] = None  # non-target of one corpus and gender (trials_meta.tsv), if known

    def subset(self, mask: np.ndarray) -> "TrialSet":
        return TrialSet(self.y[mask], self.score[mask], self.cosine[mask], self.speech_s[mask], self.fa[mask],
                        self.fb[mask], [s for s, k in zip(self.sa, mask) if k], [s for s, k in zip(self.sb, mask) if k],
                        self.command[mask], self.telephone[mask], None if self.alike is None else self.alike[mask])

    @staticmethod
    def concat(a: "TrialSet", b: "TrialSet") -> "TrialSet":
        return TrialSet(*(np.r_[x, z] if isinstance(x, np.ndarray) else x + z
                          for x, z in ((getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
                          if not (x is None or z is None)))


def heldout_trials(y: np.ndarray, a: List[str], b: List[str], test: Embedded, cohort: Embedded,
                   folds: Dict[str, int], alike: Optional[np.ndarray] = None) -> TrialSet:
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
    return TrialSet(y[keep], score, np.sum(ea * eb, axis=1), secs, fa, fb, [speaker_of(n) for n in a],
                    [speaker_of(n) for n in b], np.array([n.startswith(COMMAND_PREFIX) for n in b], bool),
                    np.array([n.startswith(TELEPHONE_PREFIX) for n in b], bool),
                    None if alike is None else np.asarray(alike, bool)[keep])


def read_alike(root: Path, n_trials: int) -> Optional[np.ndarray]:
    """Which trials of root/trials.txt are non-targets of one corpus and one gender (trials_meta.tsv kind
    nontarget_same_source): the nearest the shared sets come to another member of the household."""
    meta = root / "trials_meta.tsv"
    if not meta.is_file():
        return None
    with open(meta, encoding="utf-8") as fh:
        kinds = [row.get("kind", "") for row in csv.DictReader(fh, delimiter="\t")]
    return np.array([k == "nontarget_same_source" for k in kinds]) if len(kinds) == n_trials else None


def prefixed(e: Embedded, prefix: str) -> Embedded:
    return Embedded({prefix + k: v for k, v in e.index.items()}, e.emb, e.speech_s, e.speaker)


def calibration_trials(y: np.ndarray, a: List[str], b: List[str], clips: Embedded, commands: Optional[Embedded],
                       folds: Dict[str, int], telephone: Optional[Embedded] = None) -> TrialSet:
    """The dev trials as they are, then (with `commands`) the same trials with the test side replaced by its
    command-length cut: clip-versus-command is what a home device scores most of the time; then (with
    `telephone`) the same trials with both sides through the telephone channel. The centring mean is
    that of `cohort_rows` (clips and telephone copies) without the trial's folds."""
    cohort = cohort_rows(clips, telephone)
    t = heldout_trials(y, a, b, clips, cohort, folds)
    if commands is not None:
        both = merge(clips, prefixed(commands, COMMAND_PREFIX))
        t = TrialSet.concat(t, heldout_trials(y, a, [COMMAND_PREFIX + n for n in b], both, cohort, folds))
    if telephone is not None:
        tel = prefixed(telephone, TELEPHONE_PREFIX)
        t = TrialSet.concat(t, heldout_trials(y, [TELEPHONE_PREFIX + n for n in a], [TELEPHONE_PREFIX + n for n in b],
                                              tel, cohort, folds))
    return t


def cohort_rows(clips: Embedded, telephone: Optional[Embedded] = None) -> Embedded:
    """What a band's cohort mean is taken over: its clips, and for 8 kHz also their telephone copies."""
    return clips if telephone is None else merge(clips, prefixed(telephone, TELEPHONE_PREFIX))


def fit_calibration(t: TrialSet, mask: Optional[np.ndarray] = None) -> Calibration:
    """llr weights from the whole-clip trials; EER point from them too; the target-FAR thresholds from
    the non-targets of all trials (commands included), at FAR_CONFIDENCE over a speaker bootstrap."""
    m = np.ones(len(t.y), bool) if mask is None else mask
    fit = m & ~t.command
    w = fit_logistic(np.column_stack([t.score[fit], quality(t.speech_s[fit])]), t.y[fit])
    cal = Calibration(weights=w, eer_llr=0.0, far_grid=np.array([1.0]), far_llr=np.array([0.0]))
    llr = cal.llr(t.score, t.speech_s)
    nt = m & (t.y == 0)
    grid, thr = far_table(llr[nt], speakers=([s for s, k in zip(t.sa, nt) if k], [s for s, k in zip(t.sb, nt) if k]),
                          confidence=FAR_CONFIDENCE)
    return Calibration(weights=w, eer_llr=compute_eer(llr[fit], t.y[fit])[1], far_grid=grid, far_llr=thr)


def heldout_report(t: TrialSet, train: TrialSet, cosine_threshold: float) -> Dict[str, float]:
    """Figures for trials `t` with calibrations fitted only on `train` trials of other speaker folds."""
    llr = np.zeros(len(t.y))
    accept = {k: np.zeros(len(t.y), bool) for k in ("eer",) + tuple(f"far{f:g}" for f in REPORT_FARS)}
    for f1, f2 in sorted(set(zip(t.fa.tolist(), t.fb.tolist()))):
        sel = (t.fa == f1) & (t.fb == f2)
        m = ~np.isin(train.fa, [f1, f2]) & ~np.isin(train.fb, [f1, f2])
        cal = fit_calibration(train, m)
        llr[sel] = cal.llr(t.score[sel], t.speech_s[sel])
        accept["eer"][sel] = llr[sel] >= cal.eer_llr
        for f in REPORT_FARS:
            accept[f"far{f:g}"][sel] = llr[sel] >= cal.threshold_for_far(f)
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
        if t.alike is not None and t.alike.any():
            r[f"{k}_far_percent_alike"] = 100 * acc[t.alike & ~y].mean()
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
    trainsets: Dict[str, TrialSet] = {}
    for band, via_8k in (("16k", False), ("8k", True)):
        emb = embed_files(verifier, dev, files, via_8k, progress, f"dev {band}")
        commands = embed_files(verifier, dev, files, via_8k, progress, f"dev {band} commands", crop=True)
        telephone = embed_files(verifier, dev, files, False, progress, "dev telephone", telephone=True) if via_8k else None
        embedded[band] = cohort_rows(emb, telephone)
        train = trainsets[band] = calibration_trials(y_l, a_l, b_l, emb, commands, folds, telephone)
        bands[band] = Band(mean=embedded[band].emb.mean(axis=0), calibration=fit_calibration(train))
        figures[f"dev-licensed ({band} cohort)" if band == "16k" else "dev-licensed via 8 kHz"] = heldout_report(
            train.subset(~train.command & ~train.telephone), train, cosine_threshold)
    model_path = verifier.embedder.path
    path = Path(out) if out else model_path.parent / f"cohort-{model_path.stem}.json"
    save_scorer(path, bands, file_sha256(model_path), {
        "model": model_path.stem,
        "built_by": "edgeverify model calibrate (edgeverify/build/cohort_build.py)",
        "cohort": {"speakers": len(licensed), "files": len(embedded["16k"].index), "folds": FOLDS,
                   "sources": [LICENSED_SOURCES[s] for s in used_sources]},
        "calibration_trials": {"16k": int(lic.sum()), "8k": int(lic.sum()),
                               "from": "dev/trials.txt, licensed speakers only; 8k = same clips via 8 kHz, "
                                       "and again through a telephone channel (band-pass, G.711 mu-law)"},
        "far_thresholds": {"confidence": FAR_CONFIDENCE, "bootstrap_rounds": FAR_BOOTSTRAP_ROUNDS,
                           "from": "non-target llrs of the calibration trials and of the same trials with a "
                                   f"{COMMAND_S[0]:g}-{COMMAND_S[1]:g} s command cut from the test side; "
                                   "speaker bootstrap"},
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
            train = trainsets[band]
            t = heldout_trials(ty, ta, tb, test, embedded[band], folds, read_alike(root, len(ty)))
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
            t = heldout_trials(ty, ta, tb, test, embedded["16k"], folds, read_alike(Path(speech_dir) / "dev", len(ty)))
            figures[f"degraded {cond}"] = {**heldout_report(t, train16, cosine_threshold),
                                           "n_refused_clips": len(need) - (len(test.speaker) - len(clean_dev.speaker))}
    return path, figures
