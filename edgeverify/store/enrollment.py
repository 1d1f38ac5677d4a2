"""Enrollment as one core step shared by `edgeverify enroll` and MQTT/Home Assistant admin requests.

Every clip is checked on its own (readable, not clipped, enough speech) and reported, so a caller learns
about all bad clips at once; the profile is written only when every clip passed and they agree with each
other (ProfileStore.enroll). No MQTT, no CLI here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from ..core.audio import Audio, read_audio
from ..errors import AudioError, EdgeVerifyError
from ..core.scoring import band_for_rate
from .profiles import RECOMMENDED_CLIPS, Profile, ProfileStore, check_clipping, check_name

ClipSource = Union[str, "os.PathLike[str]", bytes, Audio]


@dataclass
class ClipReport:
    name: str
    ok: bool
    duration_s: Optional[float] = None
    code: Optional[str] = None
    message: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "ok": self.ok, "duration_s": self.duration_s}
        if not self.ok:
            d["error"] = {"code": self.code, "message": self.message}
        return d

    def line(self) -> str:
        """One line as the CLI prints it."""
        if self.ok:
            return f"{self.name}: ok ({self.duration_s:.1f} s)"
        return f"{self.name}: {self.code}: {self.message}"


@dataclass
class EnrollmentReport:
    name: str
    clips: list[ClipReport] = field(default_factory=list)
    profile: Optional[Profile] = None
    error: Optional[EdgeVerifyError] = None  # the first problem (a clip's, or the profile's)
    replaced: Optional[Profile] = None  # the voiceprint of that name it replaced (replace=True)

    @property
    def ok(self) -> bool:
        return self.profile is not None

    @property
    def notes(self) -> list[str]:
        if self.profile is not None and self.profile.clips < RECOMMENDED_CLIPS:
            return [f"{RECOMMENDED_CLIPS} clips are recommended for a reliable profile"]
        return []

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "clips": [c.to_dict() for c in self.clips]}
        if self.profile is not None:
            d["profile"] = {"name": self.profile.name, "clips": self.profile.clips, "created": self.profile.created,
                            "model": self.profile.model.to_dict()}
            d["replaced"] = self.replaced is not None
        if self.notes:
            d["notes"] = self.notes
        return d


def enroll(
    verifier: Any,
    store: ProfileStore,
    name: str,
    clips: Sequence[ClipSource],
    clip_names: Optional[Sequence[str]] = None,
    replace: bool = False,
    max_seconds: float = 60.0,
) -> EnrollmentReport:
    """Check and embed every clip, then enroll. Never raises for a bad clip or profile: see report.error.
    ProfileError for an invalid name is raised at once (nothing to report per clip)."""
    check_name(name)
    names = list(clip_names) if clip_names is not None else [
        c.name if isinstance(c, Audio) else (str(c) if not isinstance(c, bytes) else f"clip {i + 1}")
        for i, c in enumerate(clips)
    ]
    report = EnrollmentReport(name=name)
    embeddings, seconds, rates = [], [], []
    for clip, clip_name in zip(clips, names):
        try:
            audio = clip if isinstance(clip, Audio) else read_audio(clip, name=clip_name, max_seconds=max_seconds)
            check_clipping(audio.samples, clip_name)
            embedding, speech_s = verifier.embed_with_speech(audio)  # NoSpeechError/TooShortError name the clip
            embeddings.append(embedding)
            seconds.append(speech_s)
            rates.append(audio.source_rate)
            report.clips.append(ClipReport(clip_name, True, round(audio.duration_s, 2)))
        except AudioError as exc:
            report.clips.append(ClipReport(clip_name, False, None, exc.code, exc.message))
            report.error = report.error or exc
    if report.error is not None:
        return report
    try:
        report.profile, report.replaced = store.enroll_replacing(
            name, embeddings, clip_names=names, replace=replace, model=verifier.model, speech_s=seconds,
            scorer=verifier.scorer, band=band_for_rate(max(rates)))
    except EdgeVerifyError as exc:
        report.error = exc
    return report
