"""Accuracy on a VoxCeleb-style trial list: embed every file once, score every trial, report EER/minDCF,
calibration quality (Cllr) and the error rates of the decisions `verify` would make with the same settings."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..core.audio import read_audio
from ..errors import AudioError, EdgeVerifyError
from ..core.metrics import cllr, compute_eer, error_rates, min_cllr, min_dcf
from ..core.scoring import Side
from ..core.trials import read_trials  # noqa: F401  (re-exported: `edgeverify eval` and tests read it here)
from ..core.verifier import Verifier

log = logging.getLogger(__name__)

# Score given to a trial whose file the verifier refuses (e.g. too little speech): a refusal is a
# "different speaker" outcome for the product, so it counts as one here and is reported in n_refused.
REFUSED_SCORE = -1.0
REFUSED_LLR = -30.0


@dataclass
class EvalResult:
    eer_percent: float
    min_dcf: float
    threshold: float
    n_trials: int
    n_target: int
    n_files: int
    n_refused_files: int
    model: str
    vad: str
    score_mode: str = "calibrated"
    operating_point: str = "eer"
    far_percent: float = 0.0  # of the decisions verify makes with these settings
    frr_percent: float = 0.0
    cllr: Optional[float] = None  # of the calibrated llr (None for cosine scoring)
    min_cllr: float = 0.0
    refused: Dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


Prepared = Tuple[np.ndarray, Optional[Side]]


def embed_files(
    verifier: Verifier, root: Path, files: List[str], progress: Optional[Callable[[int, int], None]] = None
) -> Tuple[Dict[str, Prepared], Dict[str, str]]:
    embeddings: Dict[str, Prepared] = {}
    refused: Dict[str, str] = {}
    for i, name in enumerate(files, 1):
        try:
            embeddings[name] = verifier.prepare(read_audio(root / name, name=name))
        except AudioError as exc:
            refused[name] = exc.message
            log.info("refused %s: %s", name, exc.message)
        if progress:
            progress(i, len(files))
    return embeddings, refused


def score_trials(
    verifier: Verifier,
    trials: List[Tuple[int, str, str]],
    embeddings: Dict[str, Prepared],
    threshold: Optional[float] = None,
    target_far: Optional[float] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(scores, labels, accepted, operating point): the llr in calibrated mode, else the cosine; decisions
    exactly as verifier.decide_sides makes them (a refused file is a rejection)."""
    scores, accepted = np.empty(len(trials)), np.zeros(len(trials), bool)
    point = "eer"
    for i, (_, a, b) in enumerate(trials):
        if a in embeddings and b in embeddings:
            d = verifier.decide_sides(embeddings[a], embeddings[b], threshold, target_far)
            scores[i] = d.score if d.llr is None else d.llr
            accepted[i], point = d.same_speaker, d.operating_point
        else:
            scores[i] = REFUSED_SCORE if verifier.scorer is None else REFUSED_LLR
    return scores, np.array([label for label, _, _ in trials]), accepted, point


def evaluate(
    verifier: Verifier,
    root: Path,
    trials_path: Path,
    progress: Optional[Callable[[int, int], None]] = None,
    threshold: Optional[float] = None,
    target_far: Optional[float] = None,
) -> Tuple[EvalResult, np.ndarray, np.ndarray]:
    trials = read_trials(trials_path)
    files = sorted({name for _, a, b in trials for name in (a, b)})
    embeddings, refused = embed_files(verifier, Path(root), files, progress)
    scores, labels, accepted, point = score_trials(verifier, trials, embeddings, threshold, target_far)
    calibrated = point != "threshold" and verifier.scorer is not None
    eer, eer_threshold = compute_eer(scores, labels)
    dcf, _ = min_dcf(scores, labels, p_target=0.01)
    far, frr = error_rates(accepted, labels)
    result = EvalResult(
        eer_percent=100.0 * eer,
        min_dcf=float(dcf),
        threshold=float(eer_threshold),
        n_trials=len(trials),
        n_target=int(labels.sum()),
        n_files=len(files),
        n_refused_files=len(refused),
        model=verifier.model_name,
        vad=verifier.vad_mode,
        score_mode=verifier.score_mode,
        operating_point=point,
        far_percent=round(100.0 * far, 4),
        frr_percent=round(100.0 * frr, 4),
        cllr=round(cllr(scores, labels), 4) if calibrated else None,
        min_cllr=round(min_cllr(scores, labels), 4),
        refused=refused,
    )
    return result, scores, labels


@dataclass
class IdentifyResult:
    """Open-set identification on a folder of speakers (the home case): who, or nobody."""

    n_enrolled: int
    enroll_clips: int
    n_known_tests: int  # clips of enrolled speakers not used for enrollment
    n_stranger_tests: int  # clips of speakers who are not enrolled
    correct_id_percent: float  # known clip named as its own speaker
    wrong_id_percent: float  # known clip named as someone else
    false_alarm_percent: float  # stranger clip named as anyone
    operating_point: str
    score_mode: str
    model: str
    n_refused_files: int

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_identification(
    verifier: Verifier,
    root: Path,
    enroll_clips: int = 3,
    max_enrolled: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
) -> IdentifyResult:
    """Every other speaker (sorted ids) with more than `enroll_clips` usable clips is enrolled from their first
    `enroll_clips` clips; all other clips are tests. Profiles go through the real ProfileStore. Clips the
    verifier refuses (too little speech) take no part (n_refused_files)."""
    import tempfile

    from ..errors import ProfileError
    from ..store.profiles import ProfileStore

    root = Path(root)
    speakers = sorted(p.name for p in root.iterdir() if p.is_dir())
    clips = {s: sorted(str(f.relative_to(root)) for f in (root / s).iterdir() if f.suffix.lower() in (".wav", ".flac"))
             for s in speakers}
    files = sorted(f for s in speakers for f in clips[s])
    prepared, refused = embed_files(verifier, root, files, progress)
    clips = {s: [f for f in fs if f in prepared] for s, fs in clips.items()}  # refused clips take no part
    eligible = [s for s in speakers if len(clips[s]) > enroll_clips]
    enrolled = eligible[::2][: max_enrolled or None]
    if not enrolled:
        raise EdgeVerifyError(f"{root}: no speaker folder has more than {enroll_clips} usable clips")
    correct = wrong = alarms = known = strangers = 0
    with tempfile.TemporaryDirectory() as tmp:
        store = ProfileStore(tmp)
        for s in enrolled:
            use = clips[s][:enroll_clips]
            try:
                store.enroll(s, [prepared[f][0] for f in use], clip_names=use, model=verifier.model_name,
                             speech_s=[prepared[f][1].speech_s if prepared[f][1] else 10.0 for f in use],
                             scorer=verifier.scorer)
            except ProfileError as exc:
                log.info("not enrolled %s: %s", s, exc.message)
        sides = store.sides(verifier.scorer)
        point = "eer"
        for s in speakers:
            tests = clips[s][enroll_clips:] if s in sides else clips[s]
            for f in tests:
                best, d, _ = verifier.identify(prepared[f], sides)
                point = d.operating_point if d is not None else point
                if s in sides:
                    known += 1
                    correct += best == s
                    wrong += best is not None and best != s
                else:
                    strangers += 1
                    alarms += best is not None
    return IdentifyResult(
        n_enrolled=len(sides), enroll_clips=enroll_clips, n_known_tests=known, n_stranger_tests=strangers,
        correct_id_percent=round(100.0 * correct / max(known, 1), 3),
        wrong_id_percent=round(100.0 * wrong / max(known, 1), 3),
        false_alarm_percent=round(100.0 * alarms / max(strangers, 1), 3),
        operating_point=point, score_mode=verifier.score_mode, model=verifier.model_name,
        n_refused_files=len(refused),
    )
