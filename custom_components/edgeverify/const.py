"""Names and the settings of the edgeverify companion integration (each declared once, with its bounds)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .decisions import DEVICE_ID_RE

DOMAIN = "edgeverify"
DEFAULT_BASE = "edgeverify"  # the device's default mqtt.topic_prefix

CONF_DEVICES = "devices"  # base topics `<topic_prefix>/<device_id>` of the devices whose decisions count
CONF_AGENT = "agent_id"  # the conversation agent that answers (wrapped)
CONF_UNKNOWN = "unknown_voice"  # pass_through | refuse
CONF_WINDOW = "window_s"  # how old a decision may be and still attribute a request
CONF_WAIT = "wait_s"  # how long a request waits for its decision to arrive over MQTT
CONF_HEARD_FOR = "heard_for_s"  # how long a person's "heard" sensor stays on
CONF_VOICES = "voices"  # {voice name on the device: person entity id}

UNKNOWN_PASS = "pass_through"
UNKNOWN_REFUSE = "refuse"
REFUSAL = "Sorry, I don't know your voice."


@dataclass(frozen=True)
class Setting:
    default: Any
    low: float
    high: float


# numeric settings: default and inclusive bounds (the forms and Settings.from_options both use these)
NUMBERS: dict[str, Setting] = {
    CONF_WINDOW: Setting(15.0, 1.0, 120.0),
    CONF_WAIT: Setting(1.0, 0.0, 5.0),
    CONF_HEARD_FOR: Setting(300.0, 10.0, 86400.0),
}
MAX_DEVICES = 32
MAX_VOICES = 100
MAX_TOPIC = 200
_TOPIC_RE = re.compile(r"^[^#+\x00]+$")


def valid_base(base: Any) -> Optional[str]:
    """A device base topic `<topic_prefix>/<device_id>` as typed or found (no wildcards; the last level
    a valid device id), or None."""
    if not isinstance(base, str):
        return None
    base = base.strip().rstrip("/")
    if not base or len(base) > MAX_TOPIC or not _TOPIC_RE.match(base) or base.startswith("/"):
        return None
    return base if DEVICE_ID_RE.match(base.rsplit("/", 1)[-1]) else None


@dataclass(frozen=True)
class Settings:
    """The config entry's options, checked (a hand-edited storage file cannot make them unbounded)."""

    devices: tuple[str, ...]
    agent_id: str
    unknown_voice: str
    window_s: float
    wait_s: float
    heard_for_s: float
    voices: dict[str, str]

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "Settings":
        def number(key: str) -> float:
            s = NUMBERS[key]
            try:
                value = float(options.get(key, s.default))
            except (TypeError, ValueError):
                value = s.default
            return min(max(value, s.low), s.high) if value == value else s.default

        devices = options.get(CONF_DEVICES) or []
        voices = options.get(CONF_VOICES) or {}
        return cls(
            devices=tuple(dict.fromkeys(b for b in map(valid_base, devices) if b))[:MAX_DEVICES]
            if isinstance(devices, list) else (),
            agent_id=str(options.get(CONF_AGENT) or "conversation.home_assistant"),
            unknown_voice=UNKNOWN_REFUSE if options.get(CONF_UNKNOWN) == UNKNOWN_REFUSE else UNKNOWN_PASS,
            window_s=number(CONF_WINDOW),
            wait_s=number(CONF_WAIT),
            heard_for_s=number(CONF_HEARD_FOR),
            voices=dict(list((k, v) for k, v in voices.items() if isinstance(k, str) and isinstance(v, str))[:MAX_VOICES])
            if isinstance(voices, dict) else {},
        )
