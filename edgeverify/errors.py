"""Specific exceptions; each carries a stable machine-readable code for CLI and MQTT error responses."""

from __future__ import annotations


class EdgeVerifyError(Exception):
    """Base class: a user-facing problem with a short code (used in MQTT error responses)."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AudioError(EdgeVerifyError):
    code = "bad_audio"


class UnreadableAudioError(AudioError):
    code = "unreadable_audio"


class EmptyAudioError(AudioError):
    code = "empty_audio"


class NoSpeechError(AudioError):
    code = "no_speech"


class TooShortError(AudioError):
    code = "too_short"


class TooLongError(AudioError):
    code = "too_long"


class ModelError(EdgeVerifyError):
    code = "model_error"


class ConfigError(EdgeVerifyError):
    code = "bad_config"


class ProfileError(EdgeVerifyError):
    code = "profile_error"


class UnknownProfileError(ProfileError):
    code = "unknown_profile"


class ProfileModelMismatchError(ProfileError):
    """The profile was enrolled with another speaker model: its embedding means nothing to this one."""

    code = "profile_model_mismatch"


class RequestError(EdgeVerifyError):
    code = "bad_request"


class MicrophoneError(EdgeVerifyError):
    """Capture device missing/unusable, or PortAudio not installed."""

    code = "microphone_error"


class AdminDisabledError(RequestError):
    """An admin request (enroll/forget/list over MQTT) while admin.enabled is false."""

    code = "admin_disabled"


class WyomingError(EdgeVerifyError):
    """A Wyoming peer (client or speech-to-text service) sent something we cannot use, or went away."""

    code = "wyoming_error"
