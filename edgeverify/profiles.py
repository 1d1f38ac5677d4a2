"""Enrolled speaker profiles on disk: one JSON file per speaker holding the mean normalised embedding.

Plain numpy + files (no MQTT, no model): the daemon, the CLI and tests share it. Writes are atomic
(temp file + rename) so a reader never sees half a profile, and files are private (0600 in a 0700
directory) because a voice print is biometric data.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .config import PROFILE_NAME_RE
from .errors import AudioError, ProfileError, UnknownProfileError

log = logging.getLogger(__name__)

CLIP_LEVEL = 0.99  # |x| at or above this counts as a clipped sample
MAX_CLIPPED_FRACTION = 0.01  # more clipped samples than this: the clip is refused
MIN_CONSISTENCY = 0.2  # cosine of a clip to the mean of the others below this: refused (wrong speaker/clip)
RECOMMENDED_CLIPS = 3


@dataclass(frozen=True)
class Profile:
    name: str
    embedding: np.ndarray  # L2-normalised
    clips: int
    created: str
    model: Optional[str] = None


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0.0:
        raise ProfileError("embedding is zero or not finite")
    return v / n


def check_name(name: str) -> str:
    if not isinstance(name, str) or not PROFILE_NAME_RE.match(name) or name in (".", ".."):
        raise ProfileError(f"invalid profile name {name!r}: use 1-64 characters of A-Z a-z 0-9 _ . -")
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


class ProfileStore:
    """Profiles under <state_dir>/profiles/<name>.json; re-read when the directory changes on disk."""

    def __init__(self, state_dir: str | os.PathLike, min_consistency: float = MIN_CONSISTENCY) -> None:
        self.dir = Path(state_dir) / "profiles"
        self.min_consistency = float(min_consistency)
        self._cache: dict[str, Profile] = {}
        self._stamp: Optional[int] = None

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
        model: Optional[str] = None,
    ) -> Profile:
        """Mean of the normalised clip embeddings, re-normalised; refuses inconsistent clips."""
        check_name(name)
        if len(embeddings) < 1:
            raise ProfileError("enrollment needs at least 1 clip (3 recommended)")
        names = list(clip_names) if clip_names is not None else [f"clip {i + 1}" for i in range(len(embeddings))]
        vecs = np.stack([_normalise(e) for e in embeddings])
        if len(vecs) > 1:
            total = vecs.sum(axis=0)
            scores = [float(np.dot(v, _normalise(total - v))) for v in vecs]
            worst = int(np.argmin(scores))
            if scores[worst] < self.min_consistency:
                which = f"{names[0]} and {names[1]} do not match each other" if len(vecs) == 2 else (
                    f"{names[worst]} does not match the other clips"
                )
                raise ProfileError(
                    f"{which} (cosine {scores[worst]:.3f} < {self.min_consistency:.2f}); "
                    "are they all the same speaker, and mostly speech?"
                )
        if not replace and self.path(name).exists():
            raise ProfileError(f"profile {name!r} already exists (forget it first, or replace it)")
        profile = Profile(
            name=name,
            embedding=_normalise(vecs.mean(axis=0)),
            clips=len(vecs),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            model=model,
        )
        self._write(profile)
        if len(vecs) < RECOMMENDED_CLIPS:
            log.warning("profile %s enrolled from %d clip(s); %d are recommended", name, len(vecs), RECOMMENDED_CLIPS)
        return profile

    def _write(self, p: Profile) -> None:
        self._ensure_dir()
        doc = {
            "name": p.name,
            "clips": p.clips,
            "created": p.created,
            "model": p.model,
            "embedding": [round(float(x), 8) for x in p.embedding],
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
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            raise UnknownProfileError(f"no profile named {name!r}") from None
        self._stamp = None

    # -- reading ---------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.dir / f"{check_name(name)}.json"

    def _refresh(self) -> None:
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
                    model=doc.get("model"),
                )
            except (OSError, ValueError, KeyError, TypeError, ProfileError) as exc:
                log.warning("ignoring unreadable profile %s: %s", f, exc)
                continue
            cache[p.name] = p
        self._cache, self._stamp = cache, stamp

    def reload(self) -> int:
        self._stamp = None
        self._refresh()
        return len(self._cache)

    def list(self) -> list[Profile]:
        self._refresh()
        return list(self._cache.values())

    def get(self, name: str) -> Profile:
        check_name(name)
        self._refresh()
        try:
            return self._cache[name]
        except KeyError:
            raise UnknownProfileError(f"no profile named {name!r}") from None

    def identify(
        self, embedding: np.ndarray, threshold: float
    ) -> tuple[Optional[str], Optional[float], dict[str, float]]:
        """(best profile or None when below threshold / no profiles, best score, every profile's score)."""
        self._refresh()
        if not self._cache:
            return None, None, {}
        v = _normalise(embedding)
        scores = {name: float(np.dot(v, p.embedding)) for name, p in self._cache.items()}
        best = max(scores, key=scores.__getitem__)
        return (best if scores[best] >= threshold else None), scores[best], scores
