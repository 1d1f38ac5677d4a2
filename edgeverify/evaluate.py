"""Accuracy on a VoxCeleb-style trial list: embed every file once, score every trial, report EER/minDCF."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .audio import read_audio
from .errors import AudioError, EdgeVerifyError
from .metrics import compute_eer, min_dcf
from .verifier import Verifier

log = logging.getLogger(__name__)

# Score given to a trial whose file the verifier refuses (e.g. too little speech): a refusal is a
# "different speaker" outcome for the product, so it counts as one here and is reported in n_refused.
REFUSED_SCORE = -1.0


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
    refused: Dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def read_trials(path: Path) -> List[Tuple[int, str, str]]:
    trials = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[0] not in ("0", "1"):
                raise EdgeVerifyError(f"{path}:{number}: expected '<0|1> <file> <file>', got {line.strip()!r}")
            trials.append((int(parts[0]), parts[1], parts[2]))
    if not trials:
        raise EdgeVerifyError(f"{path}: no trials")
    return trials


def embed_files(
    verifier: Verifier, root: Path, files: List[str], progress: Optional[Callable[[int, int], None]] = None
) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    embeddings: Dict[str, np.ndarray] = {}
    refused: Dict[str, str] = {}
    for i, name in enumerate(files, 1):
        try:
            embeddings[name] = verifier.embed(read_audio(root / name, name=name))
        except AudioError as exc:
            refused[name] = exc.message
            log.info("refused %s: %s", name, exc.message)
        if progress:
            progress(i, len(files))
    return embeddings, refused


def score_trials(
    trials: List[Tuple[int, str, str]], embeddings: Dict[str, np.ndarray]
) -> Tuple[np.ndarray, np.ndarray]:
    scores = np.array(
        [
            float(embeddings[a] @ embeddings[b]) if a in embeddings and b in embeddings else REFUSED_SCORE
            for _, a, b in trials
        ]
    )
    return scores, np.array([label for label, _, _ in trials])


def evaluate(
    verifier: Verifier, root: Path, trials_path: Path, progress: Optional[Callable[[int, int], None]] = None
) -> Tuple[EvalResult, np.ndarray, np.ndarray]:
    trials = read_trials(trials_path)
    files = sorted({name for _, a, b in trials for name in (a, b)})
    embeddings, refused = embed_files(verifier, Path(root), files, progress)
    scores, labels = score_trials(trials, embeddings)
    eer, threshold = compute_eer(scores, labels)
    dcf, _ = min_dcf(scores, labels, p_target=0.01)
    result = EvalResult(
        eer_percent=100.0 * eer,
        min_dcf=float(dcf),
        threshold=float(threshold),
        n_trials=len(trials),
        n_target=int(labels.sum()),
        n_files=len(files),
        n_refused_files=len(refused),
        model=verifier.model_name,
        vad=verifier.vad_mode,
        refused=refused,
    )
    return result, scores, labels
