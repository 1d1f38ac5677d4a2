"""The daemon's YAML configuration: every setting declared once, parsed and validated at start-up.

Each field below carries its default, its check, how a change applies on SIGHUP (live, by loading the model
again, or after a restart) and a one-line doc (`settings.setting`). The parser, `reload_plan`, `check-config`,
config.example.yaml and docs/configuration.md are all derived from these declarations
(`python -m edgeverify.store.config_doc --write` regenerates the two files; a test fails when they are stale).

Every problem is a ConfigError naming the key path ("mqtt.port: must be an integer 1-65535, got 'abc'"),
so a typo in /etc/edgeverify/config.yaml stops the service with a readable journal line instead of a
traceback on the first request.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ConfigError
from ..topic_rules import filter_problem, topic_problem
from ..core.vad import DEFAULT_VAD_MODE, VAD_MODES
from ..core.vad import VadConfig
from ..core.scoring import DEFAULT_SCORE_MODE, FAR_MAX, FAR_MIN, SCORE_MODES
from .settings import (LIVE, MODEL, RESTART, Bool, Choice, Custom, Int, Num, ReloadPlan, Text, as_dict, fail,
                       parse_section, plan_reload, section, setting)

DEFAULT_CONFIG_PATH = "/etc/edgeverify/config.yaml"
DEFAULT_STATE_DIR = "/var/lib/edgeverify"
CONFIG_ENV = "EDGEVERIFY_CONFIG"

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # safe as one MQTT topic level and an HA unique_id part
_TOPIC_RE = re.compile(r"^[^#+\x00]+$")
PROFILE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # use with fullmatch (re.match + $ lets "alice\n" in)

MODEL_NAMES = ("ecapa", "campp")  # speaker models by name (the model store resolves name + precision to a file)
PRECISIONS = ("int8", "fp32")  # also accepted as `model:` (before `precision:` existed): ECAPA at that precision
AUTO_MODEL = "auto"  # the profiles' model when they all agree, else the default (app.model.choose_model)
DEFAULT_MODEL = AUTO_MODEL
DEFAULT_PRECISION = "int8"

MAX_CLIPS = Int(1, 50)  # admin.max_clips: clips / microphone utterances per enroll request
MAX_CLIPS_LIMIT = MAX_CLIPS.hi  # the most any config allows (HA's enroll-utterances number must not offer more)


def _default_device_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "edgeverify"
    return host[:64]


def operating_point_problem(threshold: Optional[float], target_far: Optional[float], score: str = DEFAULT_SCORE_MODE,
                            names: tuple[str, str] = ("threshold", "target_far")) -> Optional[str]:
    """Why (threshold, target_far) cannot decide under this score mode, or None when they can.

    The one statement of the rule, for the config, MQTT requests and the command line: a raw cosine
    threshold and a target false-accept rate exclude each other; target_far lies in FAR_MIN..FAR_MAX and
    needs calibrated scores. `names` are what the caller calls the two (e.g. "--threshold", "--target-far");
    the problem is phrased to follow the target_far name: f"{names[1]} {problem}" or f"target_far: {problem}".
    """
    if target_far is None:
        return None
    if threshold is not None:
        return f"cannot be combined with {names[0]} (a raw cosine threshold)"
    if isinstance(target_far, bool) or not isinstance(target_far, (int, float)) or not FAR_MIN <= target_far <= FAR_MAX:
        return f"must be a number in {FAR_MIN:g}..{FAR_MAX:g}"
    if score == "cosine":
        return "needs calibrated scores (score: calibrated), not score: cosine"
    return None


# -- checks that no simple rule states ---------------------------------------------------------------

def _password(path: str, v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)  # an unquoted numeric password in YAML
    return Text()(path, v)


def _readable_file(path: str, v: Any) -> str:
    v = Text()(path, v)
    if not os.access(v, os.R_OK):
        raise fail(path, "must be a readable file", v)
    return v


def _ca_file(path: str, v: Any) -> str:
    v = Text()(path, v)
    if not os.path.isfile(v):
        raise fail(path, "must be an existing CA certificate file", v)
    return v


def _client_id(path: str, v: Any) -> str:
    v = Text()(path, v)
    problem = topic_problem(v)
    if problem is not None:
        raise fail(path, f"must be a valid MQTT string ({problem})", v)
    return v


def _topic_prefix(path: str, v: Any) -> str:
    prefix = Text(_TOPIC_RE.pattern, "a topic without + # or NUL")(path, v).strip("/")
    if not prefix or prefix.startswith("$") or topic_problem(prefix):
        raise fail(path, "must be a valid topic not starting with $", v)
    return prefix


def _discovery_prefix(path: str, v: Any) -> str:
    v = Text(_TOPIC_RE.pattern, "a topic or null")(path, v)
    if topic_problem(v) or v.startswith("$"):
        raise fail(path, "must be a valid topic not starting with $, or null", v)
    return v


def _reply_topics(path: str, v: Any) -> list[str]:
    if not isinstance(v, list):
        raise fail(path, "must be a list of topic filters", v)
    for i, t in enumerate(v):
        problem = filter_problem(t)
        if problem is not None:
            raise fail(f"{path}[{i}]", f"must be an MQTT topic filter ({problem})", t)
    return list(v)


def _threads(path: str, v: Any) -> Union[int, str]:
    if v == "auto":
        return "auto"
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64:
        raise fail(path, "must be auto or an integer 1-64", v)
    return v


def _model(path: str, v: Any) -> str:
    what = "auto, ecapa, campp or a path to an .onnx file (int8 and fp32 still mean ecapa at that precision)"
    m = Text(what=what)(path, v)
    if m != AUTO_MODEL and m not in MODEL_NAMES and m not in PRECISIONS and not m.endswith(".onnx"):
        raise fail(path, f"must be {what}", v)
    return m


def _mic_device(path: str, v: Any) -> Union[str, int]:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise fail(path, "must be a device index, a device name or null", v)
    return v


def mode_profile(mode: str) -> Optional[str]:
    """The profile of a microphone mode "verify:<profile>", or None for "identify" (the one parser of the mode)."""
    return mode.split(":", 1)[1] if mode.startswith("verify:") else None


def _mic_mode(path: str, v: Any) -> str:
    profile = v[7:] if isinstance(v, str) and v.startswith("verify:") else None
    ok = v == "identify" or (profile is not None and PROFILE_NAME_RE.fullmatch(profile) is not None)
    if not ok:
        raise fail(path, "must be 'identify' or 'verify:<profile>'", v)
    return v


def wyoming_uri(path: str, v: Any) -> str:
    """tcp://host:port or unix:///path (what the wyoming library's servers and clients accept)."""
    from urllib.parse import urlparse

    what = "tcp://host:port or unix:///path"
    uri = Text(what=what)(path, v)
    try:
        u = urlparse(uri)
        ok = (u.scheme == "tcp" and bool(u.hostname) and u.port is not None and u.port > 0) or (
            u.scheme == "unix" and bool(u.path)
        )
    except ValueError:  # bad port
        ok = False
    if not ok:
        raise fail(path, f"must be {what}", v)
    return uri


def address_list(path: str, v: Any) -> list[str]:
    """Addresses or CIDR networks (IPv4/IPv6), at most 256; returned normalised ("10.1.2.3/32")."""
    import ipaddress

    if not isinstance(v, list) or len(v) > 256:
        raise fail(path, "must be a list of at most 256 addresses or networks (CIDR)", v)
    out = []
    for item in v:
        try:
            if not isinstance(item, str):
                raise ValueError
            out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise fail(path, "must be a list of addresses or networks such as 192.168.1.20 or 10.0.0.0/24",
                       item) from None
    return out


def tag_format(path: str, v: Any) -> Optional[str]:
    """A str.format template using {text} and optionally {speaker} / {score}; None or "off" disables tagging."""
    import string

    if v is None or v is False or v == "off":
        return None
    fmt = Text(what='a format such as "{speaker}: {text}", or off')(path, v)
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None}
        if fields <= {"text", "speaker", "score"}:
            fmt.format(text="", speaker="s", score=0.5)  # bad format specs
    except (KeyError, IndexError, ValueError):
        fields = {"?"}
    if not fields <= {"text", "speaker", "score"}:
        raise fail(path, "may only use the fields {text}, {speaker} and {score}", v)
    if "text" not in fields:
        raise fail(path, "must contain {text}", v)
    return fmt


_FILE = "path"
_TOPIC = "topic"

# -- the declarations -------------------------------------------------------------------------------


@dataclass
class MqttConfig:
    """The MQTT broker connection, topics and delivery (README "MQTT API")."""

    host: str = setting("localhost", doc="broker host name or address", check=Text(), reload=RESTART)
    port: int = setting(1883, doc="broker port (8883 is the usual TLS port)", check=Int(1, 65535), reload=RESTART)
    username: Optional[str] = setting(None, doc="broker user name; null = anonymous", check=Text(), nullable=True,
                                      reload=RESTART)
    password: Optional[str] = setting(None, doc="broker password; prefer password_file", check=Custom(_password),
                                      nullable=True, secret=True, reload=RESTART)
    password_file: Optional[str] = setting(
        None, doc="a file readable only by the service holding the password (keeps the secret out of this file)",
        check=Custom(_readable_file, _FILE, "a readable file"), nullable=True, reload=RESTART)
    tls: bool = setting(False, doc="connect with TLS (ca_file or certfile imply it)", check=Bool(), reload=RESTART)
    ca_file: Optional[str] = setting(
        None, doc="CA certificate for TLS (implies tls: true); null with tls: true = the system CA store",
        check=Custom(_ca_file, _FILE, "an existing file"), nullable=True, reload=RESTART)
    certfile: Optional[str] = setting(
        None, doc="client certificate (PEM) for brokers with require_certificate (mTLS; implies tls)",
        check=Custom(Text(), _FILE, "a readable PEM file"), nullable=True, reload=RESTART)
    keyfile: Optional[str] = setting(
        None, doc="its private key (PEM, unencrypted); null = the key is inside certfile",
        check=Custom(Text(), _FILE, "a readable PEM file; needs certfile"), nullable=True, reload=RESTART)
    client_id: Optional[str] = setting(None, doc="MQTT client id; null = edgeverify-<device_id>",
                                       check=Custom(_client_id, "string", "a valid MQTT string"), nullable=True,
                                       reload=RESTART)
    topic_prefix: str = setting("edgeverify", doc="first topic level(s) of every edgeverify topic",
                                check=Custom(_topic_prefix, _TOPIC, "a topic without + # NUL, not starting with $"),
                                reload=RESTART)
    qos: int = setting(1, doc="QoS of subscriptions and replies", check=Int(0, 2), reload=RESTART)
    keepalive: int = setting(30, doc="seconds between MQTT keep-alive pings", check=Int(5, 3600), reload=RESTART)
    shared_group: Optional[str] = setting(
        None, doc="e.g. verifiers: also take requests from $share/<group>/<prefix>/request/# (scale-out)",
        check=Text(_ID_RE.pattern, "a name of [A-Za-z0-9_-]"), nullable=True, reload=RESTART)
    discovery_prefix: Optional[str] = setting(
        "homeassistant", doc="Home Assistant MQTT discovery prefix; null disables discovery",
        check=Custom(_discovery_prefix, _TOPIC, "a topic not starting with $, or null"), nullable=True, reload=RESTART)
    reconnect_min_s: float = setting(1.0, doc="first wait before reconnecting to the broker", check=Num(0.1, 600),
                                     reload=RESTART)
    reconnect_max_s: float = setting(60.0, doc="longest wait between reconnects (>= reconnect_min_s)",
                                     check=Num(0.1, 3600), reload=RESTART)
    session_expiry_s: int = setting(
        3600, doc="the broker keeps our subscriptions and unanswered requests this long while the daemon is down "
                  "(at-least-once); 0 = clean session",
        check=Int(0, 0xFFFFFFFF), reload=RESTART)
    reply_topics: list[str] = setting(
        doc='topic filters replies may go to, e.g. ["hub/answers/#"]; [] = any topic the reply-topic policy allows',
        check=Custom(_reply_topics, "list", "MQTT topic filters"), default_factory=list, reload=RESTART)
    allow_capture: bool = setting(
        False, doc="capture requests may record from the room microphone for any requester; off: capture_disabled "
                   "error", check=Bool(), reload=LIVE)
    identify_scores: bool = setting(
        False, doc="identify answers and events list every enrolled name's score (tells any requester who is "
                   "enrolled); off: the decision and the best candidate's score only", check=Bool(), reload=LIVE)

    def secret(self) -> Optional[str]:
        """The password, read from password_file when given (file content, trailing newline stripped)."""
        if self.password_file:
            try:
                return Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"mqtt.password_file: cannot read {self.password_file}: {exc.strerror}") from None
        return self.password

    def _validate(self, path: str, data: dict[str, Any]) -> None:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise fail(path + "reconnect_max_s", f"must be a number {self.reconnect_min_s:g}-3600",
                       self.reconnect_max_s)
        if self.ca_file:
            self.tls = True
        self._check_client_cert(path)

    def _check_client_cert(self, p: str) -> None:
        """certfile/keyfile: readable, and a matching unencrypted pair -- checked now, not at the first connect."""
        if self.keyfile and not self.certfile:
            raise fail(p + "keyfile", "needs mqtt.certfile (the client certificate) as well", self.keyfile)
        if not self.certfile:
            return
        for key in ("certfile", "keyfile"):
            file = getattr(self, key)
            if file and not (os.path.isfile(file) and os.access(file, os.R_OK)):
                raise fail(p + key, "must be a readable PEM file", file)
        import ssl

        def no_passphrase() -> str:
            raise ConfigError(f"{p}keyfile: the private key is encrypted; the service cannot prompt for a passphrase")

        try:
            ssl.create_default_context().load_cert_chain(self.certfile, self.keyfile, password=no_passphrase)
        except ConfigError:
            raise
        except (ssl.SSLError, OSError, ValueError) as exc:
            key = "keyfile" if self.keyfile else "certfile"
            raise fail(p + key, f"certificate/key pair not usable ({getattr(exc, 'reason', None) or exc})",
                       getattr(self, key)) from None
        self.tls = True


@dataclass
class LimitsConfig:
    """What one request may make the device hold or do."""

    max_payload_bytes: int = setting(8_000_000, doc="larger requests get an immediate payload_too_large error",
                                     check=Int(1024, 256_000_000), reload=LIVE)
    max_audio_seconds: float = setting(60.0, doc="longer clips get a too_long error", check=Num(1, 600), reload=LIVE)
    queue_size: int = setting(8, doc='requests waiting beyond this get an immediate "busy" error',
                              check=Int(1, 1000), reload=RESTART)
    queue_per_requester: Optional[int] = setting(
        None, doc='places one requester may hold in the queue (more: "busy"); null = all of them while nobody '
                  'else waits (a full queue always makes room for a requester with fewer)',
        check=Int(1, 1000), nullable=True, reload=RESTART)


_VAD = VadConfig()  # the microphone's VAD keeps the core's defaults unless the config says otherwise
_VAD_RANGE = Num(-120, 10_000)


@dataclass
class MicVadConfig:
    """The microphone's utterance detector (energy VAD); its other parameters keep their built-in defaults."""

    margin_db: float = setting(_VAD.margin_db, doc="speech starts this many dB above the noise floor",
                               check=_VAD_RANGE, reload=RESTART)
    release_db: float = setting(_VAD.release_db, doc="speech continues while this many dB above the floor "
                                "(<= margin_db)", check=_VAD_RANGE, reload=RESTART)
    abs_floor_db: float = setting(_VAD.abs_floor_db, doc="frames quieter than this (dBFS) are never speech",
                                  check=_VAD_RANGE, reload=RESTART)
    hangover_ms: float = setting(_VAD.hangover_ms, doc='keep deciding "speech" this long after the energy drops',
                                 check=_VAD_RANGE, reload=RESTART)
    min_speech_ms: float = setting(_VAD.min_speech_ms, doc="shorter bursts are dropped", check=_VAD_RANGE,
                                   reload=RESTART)
    min_gap_ms: float = setting(_VAD.min_gap_ms, doc="shorter pauses are bridged", check=_VAD_RANGE, reload=RESTART)

    def _validate(self, path: str, data: dict[str, Any]) -> None:
        try:
            VadConfig(**dataclasses.asdict(self))
        except ConfigError as exc:
            raise ConfigError(f"{path.rstrip('.')}: {exc.message}") from None


@dataclass
class MicrophoneConfig:
    """A local microphone: each utterance is identified (or verified) and published as an event."""

    enabled: bool = setting(False, doc="listen to the microphone", check=Bool(), reload=RESTART)
    device: Union[str, int, None] = setting(
        None, doc="PortAudio index or part of a device name; null = system default",
        check=Custom(_mic_device, "integer | string", "a device index or name"), nullable=True, reload=RESTART)
    sample_rate: int = setting(16000, doc="capture rate", check=Choice((16000, 8000), message="must be 16000 or 8000"),
                               reload=RESTART)
    mode: str = setting("identify", doc="identify: name the speaker; verify:<profile>: accept or reject one profile",
                        check=Custom(_mic_mode, "string", "identify | verify:<profile>"), reload=LIVE)
    pre_roll_s: float = setting(0.3, doc="audio kept from before the detected onset", check=Num(0, 5), reload=RESTART)
    min_utterance_s: float = setting(1.0, doc="shorter utterances are ignored (<= max_utterance_s)",
                                     check=Num(0.5, 30), reload=RESTART)
    max_utterance_s: float = setting(8.0, doc="longer utterances are cut here and decided", check=Num(1, 60),
                                     reload=RESTART)
    vad: MicVadConfig = section(MicVadConfig, MicVadConfig.__doc__ or "")

    @property
    def verify_profile(self) -> Optional[str]:
        return mode_profile(self.mode)

    def _validate(self, path: str, data: dict[str, Any]) -> None:
        if self.min_utterance_s > self.max_utterance_s:
            raise fail(path + "min_utterance_s", f"must be <= max_utterance_s ({self.max_utterance_s:g})",
                       self.min_utterance_s)


@dataclass
class AdminConfig:
    """Profile management over MQTT (<prefix>/<device>/admin/...) and Home Assistant's enroll entities.

    Off by default; restrict who may publish to <prefix>/+/admin/# with a broker ACL. Every admin request is logged.
    """

    enabled: bool = setting(False, doc="off: admin requests are refused with an error response, logged",
                            check=Bool(), reload=RESTART)
    max_clips: int = setting(10, doc="clips (or microphone utterances) per enroll request", check=MAX_CLIPS,
                             reload=RESTART)
    utterance_timeout_s: float = setting(20.0, doc="microphone enrollment: wait at most this long for each utterance",
                                         check=Num(1, 120), reload=RESTART)


@dataclass
class InboxConfig:
    """Recent utterances nobody was recognised in (microphone, admitted Wyoming clients), kept in memory as
    embeddings, never audio, so an admin can assign one to a person (docs/security-trust-model.md, "Privacy").
    """

    enabled: bool = setting(False, doc="keep unrecognised utterances (embedding, time, source, margin, Wyoming "
                                       "transcript) in memory for assigning; off: nothing is kept", check=Bool(),
                            reload=LIVE)
    max_items: int = setting(20, doc="entries kept; the oldest is dropped for a new one", check=Int(1, 200),
                             reload=LIVE)
    max_age_h: float = setting(24.0, doc="entries older than this many hours are dropped", check=Num(0.01, 720),
                               reload=LIVE)


@dataclass
class HomeAssistantConfig:
    """What Home Assistant is shown (MQTT discovery; docs/home-assistant.md, docs/security-trust-model.md)."""

    trust_mqtt_requests: bool = setting(
        False, doc="MQTT request decisions also drive HA's event entity and retained speaker state like the "
                   "microphone's; off: they answer their requester only (only turn on with a broker ACL that "
                   "limits who may send requests)", check=Bool(), reload=RESTART)
    person_events: int = setting(
        32, doc="profiles (oldest first) that get their own identified_<name> event type; 0 = generic types only",
        check=Int(0, 100), reload=RESTART)


@dataclass
class WyomingConfig:
    """The Wyoming speech-to-text proxy with speaker identification (Home Assistant Assist).

    Needs the wyoming extra (install.sh installs it); Home Assistant's Wyoming integration points at `uri`.
    """

    enabled: bool = setting(False, doc="run the proxy inside the daemon", check=Bool(), reload=RESTART)
    uri: str = setting("tcp://127.0.0.1:10310", doc="where Home Assistant connects; loopback only by default",
                       check=Custom(wyoming_uri, "uri", "tcp://host:port or unix:///path"), reload=RESTART)
    allow: list[str] = setting(
        doc="client addresses or CIDR networks admitted (checked on accept); others are closed unread",
        check=Custom(address_list, "list", "at most 256 IPv4/IPv6 addresses or networks"),
        default_factory=lambda: ["127.0.0.0/8", "::1/128"], reload=RESTART)
    stt_uri: str = setting("tcp://127.0.0.1:10300", doc="the real speech-to-text service (e.g. wyoming-faster-whisper)",
                           check=Custom(wyoming_uri, "uri", "tcp://host:port or unix:///path"), reload=RESTART)
    reject_unknown: bool = setting(False, doc="unknown speaker: empty transcript; the decision event says rejected",
                                   check=Bool(), reload=RESTART)
    tag_transcript: Optional[str] = setting(
        None, doc='e.g. "{speaker}: {text}" (fields text, speaker, score); null or off = untagged',
        check=Custom(tag_format, "string", "a format using {text}, or off"), nullable=True, reload=RESTART)
    max_clients: int = setting(4, doc='concurrent connections; more get a "busy" error', check=Int(1, 64),
                               reload=RESTART)
    stt_timeout_s: float = setting(60.0, doc="longest wait for the speech-to-text service's transcript",
                                   check=Num(1, 600), reload=RESTART)
    max_audio_s: float = setting(30.0, doc='audio per utterance forwarded to the STT (and identified); more: an '
                                           '"audio-too-long" error', check=Num(1, 600), reload=RESTART)
    idle_timeout_s: float = setting(30.0, doc="a client that sends no utterance work this long is disconnected "
                                              "(ping does not count)", check=Num(1, 3600), reload=RESTART)
    max_session_s: float = setting(300.0, doc="a connection is closed after this long whatever it sends",
                                   check=Num(5, 86400), reload=RESTART)
    max_queued: int = setting(4, doc='utterances being identified or waiting, all clients together; more: "busy" '
                                     'error', check=Int(1, 64), reload=RESTART)
    max_queued_per_client: int = setting(2, doc='the same per connection (more: "busy" error)', check=Int(1, 64),
                                         reload=RESTART)
    identify_confidence: bool = setting(False, doc="identified replies carry the score (off: no score oracle)",
                                        check=Bool(), reload=RESTART)


@dataclass
class Config:
    """The whole file; the top-level keys choose the model and how it decides."""

    device_id: str = setting(doc="one MQTT topic level identifying this device",
                             check=Text(_ID_RE.pattern, "1-64 characters of [A-Za-z0-9_-]"),
                             default_factory=_default_device_id, reload=RESTART, commented=True,
                             example="kitchen-pi", shown_default="the host name")
    model_name: str = setting(
        DEFAULT_MODEL, key="model", doc="speaker model: auto (the model the profiles were enrolled with when they "
                                        "all agree, else the default), ecapa, campp or a path to an .onnx file "
                                        "(int8 / fp32 = ecapa at that precision)",
        check=Custom(_model, "choice | path", "auto | ecapa | campp | <file>.onnx"), reload=MODEL)
    precision: str = setting(DEFAULT_PRECISION, doc="int8 (fastest) or fp32, for a model given by name",
                             check=Choice(PRECISIONS), reload=MODEL)
    threads: Union[int, str] = setting(
        "auto", doc="onnxruntime threads; auto = half the usable CPUs, 1-4 (a Pi 4/5: 2); 1 = least CPU per request",
        check=Custom(_threads, "auto | integer", "auto or 1-64"), reload=MODEL)
    score: str = setting(DEFAULT_SCORE_MODE, doc="calibrated: cohort-centred cosine -> calibrated llr; "
                                                 "cosine: raw cosine", check=Choice(SCORE_MODES), reload=MODEL)
    target_far: Optional[float] = setting(
        None, doc="operating point: the false-accept rate to hold for voices that are not enrolled (e.g. 0.01; thresholds set with a margin across speakers); null = EER point",
        check=Num(FAR_MIN, FAR_MAX), nullable=True, reload=MODEL)
    threshold: Optional[float] = setting(
        None, doc="raw cosine threshold instead of an operating point (not with target_far); null = calibrated",
        check=Num(-1, 1), nullable=True, reload=MODEL)
    vad_mode: str = setting(
        DEFAULT_VAD_MODE, doc="check: refuse clips with < 1 s of speech, embed the whole clip; trim: also cut "
                              "pauses > 0.6 s before embedding; off: no VAD",
        check=Choice(VAD_MODES), reload=MODEL)
    state_dir: str = setting(DEFAULT_STATE_DIR, doc="profiles live in <state_dir>/profiles; systemd's "
                                                    "STATE_DIRECTORY wins", check=Text(), null_is_default=True,
                             commented=True, reload=RESTART)
    log_level: str = setting("info", doc="journal verbosity", reload=LIVE,
                             check=Choice(("debug", "info", "warning", "error"), fold_case=True,
                                          message="must be debug, info, warning or error"))
    mqtt: MqttConfig = section(MqttConfig, "The MQTT broker connection, topics and delivery.")
    limits: LimitsConfig = section(LimitsConfig, LimitsConfig.__doc__ or "")
    microphone: MicrophoneConfig = section(MicrophoneConfig, MicrophoneConfig.__doc__ or "")
    admin: AdminConfig = section(AdminConfig, AdminConfig.__doc__ or "")
    wyoming: WyomingConfig = section(WyomingConfig, WyomingConfig.__doc__ or "")
    homeassistant: HomeAssistantConfig = section(HomeAssistantConfig, HomeAssistantConfig.__doc__ or "")
    inbox: InboxConfig = section(InboxConfig, InboxConfig.__doc__ or "")
    source: Optional[str] = None  # the file it was read from (not a setting)

    @property
    def model(self) -> str:
        """The model as `Verifier.load` / `resolve_model(model)` took it before there were two models: int8 |
        fp32 (ECAPA), a path, or auto / campp.

        New code should pass `model_name` and `precision` to app.model.load_verifier (it resolves auto).
        """
        return self.precision if self.model_name == "ecapa" else self.model_name

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edgeverify-{self.device_id}"

    def redacted(self) -> dict[str, Any]:
        """As a plain dict keyed like the file, for `check-config`, with secrets hidden."""
        return as_dict(self, hide_secrets=True)

    def _validate(self, path: str, data: dict[str, Any]) -> None:
        if self.model_name in PRECISIONS:  # before `precision:` existed, `model: fp32` meant ECAPA in fp32
            given = data.get("precision")
            if given is not None and given != self.model_name:
                raise fail("precision", f"contradicts model: {self.model_name} (ecapa at {self.model_name}); "
                                        f"write model: ecapa and precision: {given}", given)
            self.model_name, self.precision = "ecapa", self.model_name
        problem = operating_point_problem(self.threshold, self.target_far, self.score)
        if problem is not None:
            raise ConfigError(f"target_far: {problem}")


def parse_config(data: Any, source: Optional[str] = None) -> Config:
    """Validate a parsed YAML document (a mapping or None) into a Config."""
    c: Config = parse_section(Config, data)
    c.source = source
    # systemd's StateDirectory= (a colon-separated list) wins: the unit decides where state lives.
    env_state = os.environ.get("STATE_DIRECTORY")
    if env_state:
        c.state_dir = env_state.split(":")[0]
    return c


def reload_plan(old: Config, new: Config) -> ReloadPlan:
    """On SIGHUP: which changed settings apply now (`live`), by loading the model again (`model`,
    `reload_model`), or only after a restart (`restart`); `config` is what to run with now -- `new` with
    each restart-only setting kept at its running value. Read from each setting's declared `reload`."""
    return plan_reload(old, new)


def config_path(explicit: Optional[str] = None) -> str:
    """--config beats $EDGEVERIFY_CONFIG beats /etc/edgeverify/config.yaml."""
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: Optional[str] = None, missing_ok: bool = False) -> Config:
    """Read and validate the config file; missing_ok gives the defaults when it does not exist (CLI)."""
    import yaml

    chosen = config_path(path)
    try:
        text = Path(chosen).read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return parse_config(None)
        raise ConfigError(f"config file {chosen} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {chosen}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{chosen}:{where} invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    try:
        return parse_config(data, source=chosen)
    except ConfigError as exc:
        raise ConfigError(f"{chosen}: {exc.message}") from None
