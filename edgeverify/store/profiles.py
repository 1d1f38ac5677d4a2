"""Enrolled speaker profiles on disk: one JSON file per speaker holding the mean normalised embedding.

For calibrated scoring a profile also stores its cohort statistics (the embedding centred on each
band's cohort mean) with the cohort's fingerprint, computed at enrollment and recomputed on load when
the shipped cohort changed, so identifying among many profiles costs a few dot products each.

Every profile records the model it was enrolled with (core.model_identity: name, precision, sha256 of
the .onnx file); profiles written before that are read as ECAPA profiles. The Verifier never scores a
profile of another model.

Names are case-preserving but unique regardless of case: "Alice" beside "alice" is refused, because the
two are one person to whoever reads them in Home Assistant, and one file on a case-insensitive file
system (an SD card formatted FAT/exFAT, macOS).

Plain numpy + files (no MQTT, no model): the daemon, the CLI and tests share it. Writes are atomic
(temp file + rename) so a reader never sees half a profile, and files are private (0600 in a 0700
directory) because a voice print is biometric data. One store is shared by threads (the model worker,
Wyoming's executor): a lock guards its cache and every change.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence, Union

import numpy as np

from .config import PROFILE_NAME_RE
from ..core.model_identity import ModelIdentity, from_record
from ..core.verifier import Prepared
from ..errors import AudioError, ProfileError, UnknownProfileError

if TYPE_CHECKING:
    from ..core.scoring import Scorer

log = logging.getLogger(__name__)

CLIP_LEVEL = 0.99  # |x| at or above this counts as a clipped sample
MAX_CLIPPED_FRACTION = 0.01  # more clipped samples than this: the clip is refused
MIN_CONSISTENCY = 0.2  # cosine of a clip to the mean of the others below this: refused (wrong speaker/clip)
# The floor depends on the model: CAM++ embeddings follow a ReLU, so even two different speakers' cosines
# are positive and higher (another speaker's clip: ~0.3 with CAM++, ~0.04 with ECAPA). Each floor sits
# where 0.2 sits for ECAPA: above most different-speaker pairs, below nearly all same-speaker ones.
MIN_CONSISTENCY_BY_MODEL = {"ecapa": MIN_CONSISTENCY, "campp": 0.42}
RECOMMENDED_CLIPS = 3


@dataclass(frozen=True)
class Profile:
    name: str
    embedding: np.ndarray  # L2-normalised
    clips: int
    created: str
    model: ModelIdentity = from_record(None)  # the model it was enrolled with (ECAPA for old profiles)
    speech_s: float = 10.0  # total speech of the enrollment clips (quality term); 10 s for 0.1 profiles
    band: str = "16k"
    cohort: Optional[dict] = None  # {"fingerprint": ..., "centred": {band: (clips, d)}} (scoring.Scorer.side)
    clip_embeddings: Optional[np.ndarray] = None  # (clips, d) L2-normalised; scored clip by clip, then averaged


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0.0:
        raise ProfileError("embedding is zero or not finite")
    return v / n


class Enrolled(NamedTuple):
    profile: Profile
    replaced: Optional[Profile]  # the profile of that name it replaced, if any


def check_name(name: str) -> str:
    """The name itself when it is valid (the whole string: "alice\\n" is not "alice"), else ProfileError
    quoting it escaped and cut short."""
    if not isinstance(name, str) or PROFILE_NAME_RE.fullmatch(name) is None or name in (".", ".."):
        shown = repr(name[:80]) + ("..." if isinstance(name, str) and len(name) > 80 else "") if isinstance(
            name, str) else type(name).__name__
        raise ProfileError(f"invalid profile name {shown}: use 1-64 characters of A-Z a-z 0-9 _ . -")
    return name


def check_clipping(samples: np.ndarray, name: str = "clip", limit: float = MAX_CLIPPED_FRACTION) -> None:
    """Refuse over-driven recordings: clipping distorts the spectrum and hence the voice print."""
    x = np.asarray(samples)
    if x.size == 0:
        return
    fraction = float(np.mean(np.abs(x) >= CLIP_LEVEL))
    if fraction > limit:
        raise AudioError(
            f"{name}: {100 * fraction:.1f}% of samples are clipped (limit {100 * limit:.1f}%); "
            "record again with lower input gain"
        )


def _rounded(x: np.ndarray) -> list:
    return np.round(np.asarray(x, dtype=np.float64), 8).tolist()


def _rows(v: object) -> np.ndarray:
    """(n, d) matrix of L2-normalised rows from a JSON list (a vector or a list of vectors)."""
    m = np.atleast_2d(np.asarray(v, dtype=np.float64))
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[0] > 1000:
        raise ValueError(f"bad embedding matrix shape {m.shape}")
    return np.stack([_normalise(r) for r in m])


def _cohort_stats(scorer: Optional["Scorer"], embedding: np.ndarray, speech_s: float, band: str,
                  clips: np.ndarray) -> Optional[dict]:
    if scorer is None:
        return None
    side = scorer.side(embedding, speech_s, band, clips=clips)
    return {"fingerprint": scorer.fingerprint, "centred": side.centred}


def _read_clips(doc: object) -> Optional[np.ndarray]:
    try:
        return None if doc is None else _rows(doc)
    except (ValueError, TypeError, ProfileError):
        return None


def _read_cohort(doc: object) -> Optional[dict]:
    """Stored cohort statistics, or None when absent/malformed (then recomputed from the embeddings)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("centred"), dict):
        return None
    try:
        centred = {str(b): _rows(v) for b, v in doc["centred"].items()}
    except (ValueError, TypeError, ProfileError):
        return None
    return {"fingerprint": str(doc.get("fingerprint", "")), "centred": centred}


class ProfileStore:
    """Profiles under <state_dir>/profiles/<name>.json; re-read when the directory changes on disk."""

    def __init__(self, state_dir: str | os.PathLike, min_consistency: Optional[float] = None) -> None:
        """min_consistency: the enrollment floor for every model; None: each model's own
        (MIN_CONSISTENCY_BY_MODEL)."""
        self.dir = Path(state_dir) / "profiles"
        self.min_consistency = None if min_consistency is None else float(min_consistency)
        self._cache: dict[str, Profile] = {}
        self._stamp: Optional[int] = None
        self._sides: dict = {}
        # the model worker, Wyoming's executor thread and admin share one store: every read of the cache
        # and every change holds this (re-entrant: enroll reads the cache)
        self._lock = threading.RLock()

    # -- writing ---------------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)

    def enroll(
        self,
        name: str,
        embeddings: Sequence[np.ndarray],
        clip_names: Optional[Sequence[str]] = None,
        replace: bool = False,
        model: Union[ModelIdentity, str, None] = None,
        speech_s: Optional[Sequence[float]] = None,
        scorer: Optional["Scorer"] = None,
        band: str = "16k",
    ) -> Profile:
        """Mean of the normalised clip embeddings, re-normalised; refuses inconsistent clips.
        `model`: the verifier's `model` (a plain string or None is read as profiles of earlier releases were)."""
        return self.enroll_replacing(name, embeddings, clip_names, replace, model, speech_s, scorer, band).profile

    def enroll_replacing(
        self,
        name: str,
        embeddings: Sequence[np.ndarray],
        clip_names: Optional[Sequence[str]] = None,
        replace: bool = False,
        model: Union[ModelIdentity, str, None] = None,
        speech_s: Optional[Sequence[float]] = None,
        scorer: Optional["Scorer"] = None,
        band: str = "16k",
    ) -> Enrolled:
        """As enroll, and says which profile it replaced (replace=True), so callers log a replacement as one."""
        check_name(name)
        if len(embeddings) < 1:
            raise ProfileError("enrollment needs at least 1 clip (3 recommended)")
        names = list(clip_names) if clip_names is not None else [f"clip {i + 1}" for i in range(len(embeddings))]
        vecs = np.stack([_normalise(e) for e in embeddings])
        identity = model if isinstance(model, ModelIdentity) else from_record(model)
        floor = self.min_consistency
        if floor is None:
            floor = MIN_CONSISTENCY_BY_MODEL.get(identity.name, MIN_CONSISTENCY)
        if len(vecs) > 1:
            total = vecs.sum(axis=0)
            scores = [float(np.dot(v, _normalise(total - v))) for v in vecs]
            worst = int(np.argmin(scores))
            if scores[worst] < floor:
                which = f"{names[0]} and {names[1]} do not match each other" if len(vecs) == 2 else (
                    f"{names[worst]} does not match the other clips"
                )
                raise ProfileError(
                    f"{which} (cosine {scores[worst]:.3f} < {floor:.2f}); "
                    "are they all the same speaker, and mostly speech?"
                )
        mean = _normalise(vecs.mean(axis=0))
        # the quality term of a profile trial: a typical enrollment clip's speech (scores are per clip)
        clip_s = float(np.mean(speech_s)) if speech_s is not None and len(speech_s) else 10.0
        profile = Profile(
            name=name,
            embedding=mean,
            clips=len(vecs),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            model=identity,
            speech_s=clip_s,
            band=band,
            cohort=_cohort_stats(scorer, mean, clip_s, band, vecs),
            clip_embeddings=vecs,
        )
        with self._lock:  # the checks and the write as one step: two enrollments of one name cannot both pass
            self._refresh()
            twin = next((n for n in self._cache if n != name and n.casefold() == name.casefold()), None)
            if twin is not None:
                raise ProfileError(f"profile {twin!r} already exists and names differ only in case: "
                                   f"use {twin!r}, or forget it first")
            old = self._cache.get(name)
            exists = old is not None or self.path(name).exists()  # an unreadable file needs replace too
            if exists and not replace:
                raise ProfileError(f"profile {name!r} already exists (forget it first, or replace it)")
            self._write(profile)
        if exists:
            was = "unreadable" if old is None else f"enrolled {old.created or 'on an unknown date'} with {old.model.label}"
            log.info("profile %s replaced: new voiceprint from %d clip(s) with %s (the old one: %s)", name,
                     len(vecs), profile.model.label, was)
        else:
            log.info("profile %s enrolled from %d clip(s) with %s", name, len(vecs), profile.model.label)
        if len(vecs) < RECOMMENDED_CLIPS:
            log.warning("profile %s enrolled from %d clip(s); %d are recommended", name, len(vecs), RECOMMENDED_CLIPS)
        return Enrolled(profile, old)

    def _write(self, p: Profile) -> None:
        self._ensure_dir()
        doc = {
            "name": p.name,
            "clips": p.clips,
            "created": p.created,
            "model": p.model.to_dict(),
            "speech_s": round(p.speech_s, 2),
            "band": p.band,
            "embedding": _rounded(p.embedding),
        }
        if p.clip_embeddings is not None:
            doc["clip_embeddings"] = _rounded(p.clip_embeddings)
        if p.cohort is not None:
            doc["cohort"] = {
                "fingerprint": p.cohort["fingerprint"],
                "centred": {b: _rounded(v) for b, v in p.cohort["centred"].items()},
            }
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)
                json.dump(doc, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self._match_owner(tmp)
            os.replace(tmp, self.path(p.name))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = None

    def _match_owner(self, path: str) -> None:
        """Run as root (sudo edgeverify enroll)? give the file to the directory's owner (the service user)."""
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            st = self.dir.stat()
            if st.st_uid != 0:
                os.chown(path, st.st_uid, st.st_gid)

    def forget(self, name: str) -> None:
        check_name(name)
        with self._lock:
            try:
                self.path(name).unlink()
            except FileNotFoundError:
                raise self._unknown(name) from None
            self._stamp = None
        log.info("profile %s forgotten", name)

    def _unknown(self, name: str) -> UnknownProfileError:
        twin = next((n for n in self._cache if n.casefold() == name.casefold()), None)
        hint = f" (there is {twin!r}: names are case-sensitive)" if twin is not None else ""
        return UnknownProfileError(f"no profile named {name!r}{hint}")

    # -- reading ---------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.dir / f"{check_name(name)}.json"

    def _refresh(self) -> None:
        """Re-read the directory when it changed (caller holds the lock)."""
        try:
            stamp = self.dir.stat().st_mtime_ns
        except FileNotFoundError:
            self._cache, self._stamp = {}, None
            return
        if stamp == self._stamp:
            return
        cache: dict[str, Profile] = {}
        for f in sorted(self.dir.glob("*.json")):
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
                p = Profile(
                    name=check_name(str(doc["name"])),
                    embedding=_normalise(np.asarray(doc["embedding"], dtype=np.float64)),
                    clips=int(doc.get("clips", 1)),
                    created=str(doc.get("created", "")),
                    model=from_record(doc.get("model")),
                    speech_s=float(doc.get("speech_s", 10.0)),
                    band="8k" if doc.get("band") == "8k" else "16k",
                    cohort=_read_cohort(doc.get("cohort")),
                    clip_embeddings=_read_clips(doc.get("clip_embeddings")),
                )
            except (OSError, ValueError, KeyError, TypeError, ProfileError) as exc:
                log.warning("ignoring unreadable profile %s: %s", f, exc)
                continue
            twin = next((n for n in cache if n.casefold() == p.name.casefold()), None)
            if twin is not None:
                log.warning("profiles %s and %s differ only in case (enrolled before that was refused): "
                            "forget one of them", twin, p.name)
            cache[p.name] = p
        self._cache, self._stamp = cache, stamp
        self._sides = {}

    def sides(self, scorer: Optional["Scorer"], model: Optional[ModelIdentity] = None) -> dict[str, Prepared]:
        """Every profile prepared for scoring, stamped with its model: stored cohort statistics when they
        match `scorer`'s cohort, else recomputed (and cached until the profiles or the cohort change).
        A profile of a model other than `model` gets no cohort side (the Verifier refuses to score it)."""
        with self._lock:
            self._refresh()
            key = (None if scorer is None else scorer.fingerprint, None if model is None else model.name)
            if key not in self._sides:
                out: dict[str, Prepared] = {}
                for name, p in self._cache.items():
                    side = None
                    if scorer is not None and (model is None or p.model.same_model(model)):
                        stats = p.cohort if p.cohort and p.cohort.get("fingerprint") == scorer.fingerprint else None
                        if stats is None:
                            log.info("profile %s: cohort changed, recomputing its cohort statistics", name)
                        try:
                            side = scorer.side(p.embedding, p.speech_s, p.band, stats["centred"] if stats else None,
                                               clips=p.clip_embeddings)
                        except ValueError as exc:  # another model's embedding size: never scored anyway
                            log.warning("profile %s cannot be scored by this model: %s", name, exc)
                    out[name] = Prepared(p.embedding, side, p.model, name)
                self._sides = {key: out}
            return self._sides[key]

    def reload(self) -> int:
        with self._lock:
            self._stamp = None
            self._refresh()
            return len(self._cache)

    def list(self) -> list[Profile]:
        with self._lock:
            self._refresh()
            return list(self._cache.values())

    def get(self, name: str) -> Profile:
        check_name(name)
        with self._lock:
            self._refresh()
            try:
                return self._cache[name]
            except KeyError:
                raise self._unknown(name) from None

    def identify(
        self, embedding: np.ndarray, threshold: float, model: Optional[ModelIdentity] = None
    ) -> tuple[Optional[str], Optional[float], dict[str, float]]:
        """(best profile or None when below threshold / no profiles, best score, every profile's score).
        Plain cosine, for tests and tools; with `model`, profiles of other models are left out."""
        with self._lock:
            self._refresh()
            cache = {n: p for n, p in self._cache.items() if model is None or p.model.same_model(model)}
        if not cache:
            return None, None, {}
        v = _normalise(embedding)
        scores = {name: float(np.dot(v, p.embedding)) for name, p in cache.items()}
        best = max(scores, key=scores.__getitem__)
        return (best if scores[best] >= threshold else None), scores[best], scores
