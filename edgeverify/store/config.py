"""The daemon's YAML configuration: parsed into dataclasses and validated once, at start-up.

Every problem is a ConfigError naming the key path ("mqtt.port: must be an integer 1-65535, got 'abc'"),
so a typo in /etc/edgeverify/config.yaml stops the service with a readable journal line instead of a
traceback on the first request.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ConfigError
from ..topic_rules import filter_problem, topic_problem
from ..core.vad import DEFAULT_VAD_MODE, VAD_MODES

DEFAULT_CONFIG_PATH = "/etc/edgeverify/config.yaml"
DEFAULT_STATE_DIR = "/var/lib/edgeverify"
CONFIG_ENV = "EDGEVERIFY_CONFIG"

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # safe as one MQTT topic level and an HA unique_id part
_TOPIC_RE = re.compile(r"^[^#+\x00]+$")
PROFILE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _default_device_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "edgeverify"
    return host[:64]


@dataclass
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    username: Optional[str] = None
    password: Optional[str] = None
    password_file: Optional[str] = None  # preferred over password: keeps the secret out of the config
    tls: bool = False
    ca_file: Optional[str] = None  # implies tls; None with tls=true uses the system CA store
    client_id: Optional[str] = None  # default "edgeverify-<device_id>"
    topic_prefix: str = "edgeverify"
    qos: int = 1
    keepalive: int = 30
    shared_group: Optional[str] = None  # also subscribe $share/<group>/<prefix>/request/# (scale-out)
    discovery_prefix: Optional[str] = "homeassistant"  # null disables Home Assistant discovery
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    certfile: Optional[str] = None  # client certificate (PEM) for brokers that require one (mTLS)
    keyfile: Optional[str] = None  # its private key (PEM, unencrypted); default: inside certfile
    session_expiry_s: int = 3600  # broker keeps our subscriptions + unanswered requests this long; 0 = none
    reply_topics: list[str] = field(default_factory=list)  # topic filters replies may go to; [] = any allowed

    def secret(self) -> Optional[str]:
        """The password, read from password_file when given (file content, trailing newline stripped)."""
        if self.password_file:
            try:
                return Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"mqtt.password_file: cannot read {self.password_file}: {exc.strerror}") from None
        return self.password


@dataclass
class LimitsConfig:
    max_payload_bytes: int = 8_000_000
    max_audio_seconds: float = 60.0
    queue_size: int = 8


@dataclass
class MicVadConfig:
    """Subset of vad.VadConfig exposed in the config file (the rest keep their defaults)."""

    margin_db: float = 9.0
    release_db: float = 6.0
    abs_floor_db: float = -60.0
    hangover_ms: float = 150.0
    min_speech_ms: float = 100.0
    min_gap_ms: float = 300.0


@dataclass
class MicrophoneConfig:
    enabled: bool = False
    device: Union[str, int, None] = None  # PortAudio index or (part of) a name; None = system default
    sample_rate: int = 16000
    mode: str = "identify"  # "identify" or "verify:<profile>"
    pre_roll_s: float = 0.3
    min_utterance_s: float = 1.0
    max_utterance_s: float = 8.0
    vad: MicVadConfig = field(default_factory=MicVadConfig)

    @property
    def verify_profile(self) -> Optional[str]:
        return self.mode.split(":", 1)[1] if self.mode.startswith("verify:") else None


@dataclass
class AdminConfig:
    """Profile management over MQTT (<prefix>/<device>/admin/...) and Home Assistant's enroll entities."""

    enabled: bool = False  # off: admin requests are refused with an error response, logged
    max_clips: int = 10  # clips (or microphone utterances) per enroll request
    utterance_timeout_s: float = 20.0  # microphone enrollment: wait at most this long for each utterance


@dataclass
class WyomingConfig:
    """The Wyoming speech-to-text proxy with speaker identification (Home Assistant Assist)."""

    enabled: bool = False
    uri: str = "tcp://0.0.0.0:10310"  # where Home Assistant connects (tcp://host:port or unix:///path)
    stt_uri: str = "tcp://127.0.0.1:10300"  # the real speech-to-text service behind the proxy
    reject_unknown: bool = False  # unknown speaker: empty transcript (the decision event says rejected)
    tag_transcript: Optional[str] = None  # e.g. "{speaker}: {text}"; fields speaker, text, score
    max_clients: int = 4  # concurrent connections; more are answered with an error
    stt_timeout_s: float = 60.0  # longest wait for the speech-to-text service's answer


@dataclass
class Config:
    device_id: str = field(default_factory=_default_device_id)
    model: str = "int8"  # int8 | fp32 | path to an .onnx file
    threads: Union[int, str] = "auto"  # onnxruntime threads, or auto: half the usable CPUs, 1-4 (embedder.resolve_threads)
    threshold: Optional[float] = None  # raw cosine threshold (0.1 meaning); None = calibrated operating point
    target_far: Optional[float] = None  # operating point: false-accept rate on the calibration trials; None = EER
    score: str = "calibrated"  # calibrated | cosine (scoring.py)
    vad_mode: str = DEFAULT_VAD_MODE  # check | trim | off (verifier.py says what each does)
    state_dir: str = DEFAULT_STATE_DIR
    log_level: str = "info"
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    microphone: MicrophoneConfig = field(default_factory=MicrophoneConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    wyoming: WyomingConfig = field(default_factory=WyomingConfig)
    source: Optional[str] = field(default=None, metadata={"internal": True})  # file it was read from

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edgeverify-{self.device_id}"

    def redacted(self) -> dict[str, Any]:
        """As a plain dict for `check-config`, with the password hidden."""
        d = dataclasses.asdict(self)
        d.pop("source", None)
        if d["mqtt"]["password"]:
            d["mqtt"]["password"] = "***"
        return d


# -- validation -------------------------------------------------------------------------------------

def _fail(path: str, message: str, value: Any) -> ConfigError:
    return ConfigError(f"{path}: {message}, got {value!r}")


def _int(path: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _fail(path, f"must be an integer {lo}-{hi}", v)
    return v


def _num(path: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= float(v) <= hi:
        raise _fail(path, f"must be a number {lo:g}-{hi:g}", v)
    return float(v)


def _str(path: str, v: Any, pattern: Optional[re.Pattern] = None, what: str = "a non-empty string") -> str:
    if not isinstance(v, str) or not v or (pattern is not None and not pattern.match(v)):
        raise _fail(path, f"must be {what}", v)
    return v


def _bool(path: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _fail(path, "must be true or false", v)
    return v


def _opt(check, path: str, v: Any, *args: Any) -> Any:
    return None if v is None else check(path, v, *args)


def _section(path: str, data: Any, cls: type) -> dict[str, Any]:
    """A mapping whose keys are all fields of cls (unknown keys are errors: they are usually typos)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _fail(path or "config", "must be a mapping", data)
    known = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(known))})")
    return data


def _mqtt(d: dict[str, Any]) -> MqttConfig:
    c = MqttConfig()
    p = "mqtt."
    if "host" in d:
        c.host = _str(p + "host", d["host"])
    if "port" in d:
        c.port = _int(p + "port", d["port"], 1, 65535)
    c.username = _opt(_str, p + "username", d.get("username"))
    if d.get("password") is not None:
        c.password = str(d["password"]) if isinstance(d["password"], (int, float)) else _str(p + "password", d["password"])
    c.password_file = _opt(_str, p + "password_file", d.get("password_file"))
    if c.password_file and not os.access(c.password_file, os.R_OK):
        raise _fail(p + "password_file", "must be a readable file", c.password_file)
    if "tls" in d:
        c.tls = _bool(p + "tls", d["tls"])
    c.ca_file = _opt(_str, p + "ca_file", d.get("ca_file"))
    if c.ca_file:
        if not os.path.isfile(c.ca_file):
            raise _fail(p + "ca_file", "must be an existing CA certificate file", c.ca_file)
        c.tls = True
    _tls_files(c, d)
    c.client_id = _opt(_str, p + "client_id", d.get("client_id"))
    if c.client_id is not None and (string_problem := topic_problem(c.client_id)) is not None:
        raise _fail(p + "client_id", f"must be a valid MQTT string ({string_problem})", c.client_id)
    if "topic_prefix" in d:
        c.topic_prefix = _str(p + "topic_prefix", d["topic_prefix"], _TOPIC_RE, "a topic without + # or NUL")
        c.topic_prefix = c.topic_prefix.strip("/")
        if not c.topic_prefix or c.topic_prefix.startswith("$") or topic_problem(c.topic_prefix):
            raise _fail(p + "topic_prefix", "must be a valid topic not starting with $", d["topic_prefix"])
    if "qos" in d:
        c.qos = _int(p + "qos", d["qos"], 0, 2)
    if "keepalive" in d:
        c.keepalive = _int(p + "keepalive", d["keepalive"], 5, 3600)
    c.shared_group = _opt(_str, p + "shared_group", d.get("shared_group"), _ID_RE, "a name of [A-Za-z0-9_-]")
    if "discovery_prefix" in d:
        c.discovery_prefix = _opt(_str, p + "discovery_prefix", d["discovery_prefix"], _TOPIC_RE, "a topic or null")
        if c.discovery_prefix is not None and (topic_problem(c.discovery_prefix) or c.discovery_prefix.startswith("$")):
            raise _fail(p + "discovery_prefix", "must be a valid topic not starting with $, or null", c.discovery_prefix)
    if "reconnect_min_s" in d:
        c.reconnect_min_s = _num(p + "reconnect_min_s", d["reconnect_min_s"], 0.1, 600)
    if "reconnect_max_s" in d:
        c.reconnect_max_s = _num(p + "reconnect_max_s", d["reconnect_max_s"], c.reconnect_min_s, 3600)
    if "session_expiry_s" in d:
        c.session_expiry_s = _int(p + "session_expiry_s", d["session_expiry_s"], 0, 0xFFFFFFFF)
    topics = d.get("reply_topics")
    if topics is not None:
        if not isinstance(topics, list):
            raise _fail(p + "reply_topics", "must be a list of topic filters", topics)
        for i, t in enumerate(topics):
            problem = filter_problem(t)
            if problem is not None:
                raise _fail(f"{p}reply_topics[{i}]", f"must be an MQTT topic filter ({problem})", t)
        c.reply_topics = list(topics)
    return c


def _tls_files(c: MqttConfig, d: dict[str, Any]) -> None:
    """certfile/keyfile: readable, and a matching unencrypted pair -- checked now, not at the first connect."""
    p = "mqtt."
    c.certfile = _opt(_str, p + "certfile", d.get("certfile"))
    c.keyfile = _opt(_str, p + "keyfile", d.get("keyfile"))
    if c.keyfile and not c.certfile:
        raise _fail(p + "keyfile", "needs mqtt.certfile (the client certificate) as well", c.keyfile)
    if not c.certfile:
        return
    for key in ("certfile", "keyfile"):
        path = getattr(c, key)
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise _fail(p + key, "must be a readable PEM file", path)
    import ssl

    def no_passphrase() -> str:
        raise ConfigError(f"{p}keyfile: the private key is encrypted; the service cannot prompt for a passphrase")

    try:
        ssl.create_default_context().load_cert_chain(c.certfile, c.keyfile, password=no_passphrase)
    except ConfigError:
        raise
    except (ssl.SSLError, OSError, ValueError) as exc:
        key = "keyfile" if c.keyfile else "certfile"
        raise _fail(p + key, f"certificate/key pair not usable ({getattr(exc, 'reason', None) or exc})",
                    getattr(c, key)) from None
    c.tls = True


def _limits(d: dict[str, Any]) -> LimitsConfig:
    c = LimitsConfig()
    if "max_payload_bytes" in d:
        c.max_payload_bytes = _int("limits.max_payload_bytes", d["max_payload_bytes"], 1024, 256_000_000)
    if "max_audio_seconds" in d:
        c.max_audio_seconds = _num("limits.max_audio_seconds", d["max_audio_seconds"], 1, 600)
    if "queue_size" in d:
        c.queue_size = _int("limits.queue_size", d["queue_size"], 1, 1000)
    return c


def _microphone(d: dict[str, Any]) -> MicrophoneConfig:
    c = MicrophoneConfig()
    p = "microphone."
    if "enabled" in d:
        c.enabled = _bool(p + "enabled", d["enabled"])
    dev = d.get("device")
    if dev is not None and (isinstance(dev, bool) or not isinstance(dev, (str, int))):
        raise _fail(p + "device", "must be a device index, a device name or null", dev)
    c.device = dev
    if "sample_rate" in d:
        if d["sample_rate"] not in (16000, 8000) or isinstance(d["sample_rate"], bool):
            raise _fail(p + "sample_rate", "must be 16000 or 8000", d["sample_rate"])
        c.sample_rate = int(d["sample_rate"])
    if "mode" in d:
        mode = d["mode"]
        ok = isinstance(mode, str) and (
            mode == "identify" or (mode.startswith("verify:") and PROFILE_NAME_RE.match(mode[7:]) is not None)
        )
        if not ok:
            raise _fail(p + "mode", "must be 'identify' or 'verify:<profile>'", mode)
        c.mode = mode
    if "pre_roll_s" in d:
        c.pre_roll_s = _num(p + "pre_roll_s", d["pre_roll_s"], 0, 5)
    if "min_utterance_s" in d:
        c.min_utterance_s = _num(p + "min_utterance_s", d["min_utterance_s"], 0.5, 30)
    if "max_utterance_s" in d:
        c.max_utterance_s = _num(p + "max_utterance_s", d["max_utterance_s"], 1, 60)
    if c.min_utterance_s > c.max_utterance_s:
        raise _fail(p + "min_utterance_s", f"must be <= max_utterance_s ({c.max_utterance_s:g})", c.min_utterance_s)
    vad = _section(p + "vad", d.get("vad"), MicVadConfig)
    for key, value in vad.items():
        setattr(c.vad, key, _num(f"{p}vad.{key}", value, -120, 10_000))
    try:
        from ..core.vad import VadConfig

        VadConfig(**dataclasses.asdict(c.vad))
    except ConfigError as exc:
        raise ConfigError(f"{p}vad: {exc.message}") from None
    return c


def _admin(d: dict[str, Any]) -> AdminConfig:
    c = AdminConfig()
    if "enabled" in d:
        c.enabled = _bool("admin.enabled", d["enabled"])
    if "max_clips" in d:
        c.max_clips = _int("admin.max_clips", d["max_clips"], 1, 50)
    if "utterance_timeout_s" in d:
        c.utterance_timeout_s = _num("admin.utterance_timeout_s", d["utterance_timeout_s"], 1, 120)
    return c


def wyoming_uri(path: str, v: Any) -> str:
    """tcp://host:port or unix:///path (what the wyoming library's servers and clients accept)."""
    from urllib.parse import urlparse

    what = "tcp://host:port or unix:///path"
    uri = _str(path, v, what=what)
    try:
        u = urlparse(uri)
        ok = (u.scheme == "tcp" and bool(u.hostname) and u.port is not None and u.port > 0) or (
            u.scheme == "unix" and bool(u.path)
        )
    except ValueError:  # bad port
        ok = False
    if not ok:
        raise _fail(path, f"must be {what}", v)
    return uri


def tag_format(path: str, v: Any) -> Optional[str]:
    """A str.format template using {text} and optionally {speaker} / {score}; None or "off" disables tagging."""
    import string

    if v is None or v is False or v == "off":
        return None
    fmt = _str(path, v, what='a format such as "{speaker}: {text}", or off')
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None}
        if fields <= {"text", "speaker", "score"}:
            fmt.format(text="", speaker="s", score=0.5)  # bad format specs
    except (KeyError, IndexError, ValueError):
        fields = {"?"}
    if not fields <= {"text", "speaker", "score"}:
        raise _fail(path, "may only use the fields {text}, {speaker} and {score}", v)
    if "text" not in fields:
        raise _fail(path, "must contain {text}", v)
    return fmt


def _wyoming(d: dict[str, Any]) -> WyomingConfig:
    c = WyomingConfig()
    p = "wyoming."
    if "enabled" in d:
        c.enabled = _bool(p + "enabled", d["enabled"])
    if "uri" in d:
        c.uri = wyoming_uri(p + "uri", d["uri"])
    if "stt_uri" in d:
        c.stt_uri = wyoming_uri(p + "stt_uri", d["stt_uri"])
    if "reject_unknown" in d:
        c.reject_unknown = _bool(p + "reject_unknown", d["reject_unknown"])
    if "tag_transcript" in d:
        c.tag_transcript = tag_format(p + "tag_transcript", d["tag_transcript"])
    if "max_clients" in d:
        c.max_clients = _int(p + "max_clients", d["max_clients"], 1, 64)
    if "stt_timeout_s" in d:
        c.stt_timeout_s = _num(p + "stt_timeout_s", d["stt_timeout_s"], 1, 600)
    return c


def parse_config(data: Any, source: Optional[str] = None) -> Config:
    """Validate a parsed YAML document (a mapping or None) into a Config."""
    d = _section("", data, Config)
    c = Config(source=source)
    if "device_id" in d:
        c.device_id = _str("device_id", d["device_id"], _ID_RE, "1-64 characters of [A-Za-z0-9_-]")
    if "model" in d:
        c.model = _str("model", d["model"], what="int8, fp32 or a path to an .onnx file")
        if c.model not in ("int8", "fp32") and not c.model.endswith(".onnx"):
            raise _fail("model", "must be int8, fp32 or a path to an .onnx file", c.model)
    if "threads" in d:
        if d["threads"] == "auto":
            c.threads = "auto"
        elif isinstance(d["threads"], bool) or not isinstance(d["threads"], int) or not 1 <= d["threads"] <= 64:
            raise _fail("threads", "must be auto or an integer 1-64", d["threads"])
        else:
            c.threads = d["threads"]
    if d.get("threshold") is not None:
        c.threshold = _num("threshold", d["threshold"], -1, 1)
    if d.get("target_far") is not None:
        from ..core.scoring import FAR_MAX, FAR_MIN

        c.target_far = _num("target_far", d["target_far"], FAR_MIN, FAR_MAX)
    if c.threshold is not None and c.target_far is not None:
        raise _fail("target_far", "cannot be combined with threshold (a raw cosine threshold)", c.target_far)
    if "score" in d:
        from ..core.scoring import SCORE_MODES

        if d["score"] not in SCORE_MODES:
            raise _fail("score", f"must be one of {', '.join(SCORE_MODES)}", d["score"])
        c.score = d["score"]
    if c.target_far is not None and c.score == "cosine":
        raise _fail("target_far", "needs score: calibrated", c.target_far)
    if "vad_mode" in d:
        if d["vad_mode"] not in VAD_MODES:
            raise _fail("vad_mode", f"must be one of {', '.join(VAD_MODES)}", d["vad_mode"])
        c.vad_mode = d["vad_mode"]
    if d.get("state_dir") is not None:
        c.state_dir = _str("state_dir", d["state_dir"])
    if "log_level" in d:
        level = d["log_level"]
        if not isinstance(level, str) or level.lower() not in ("debug", "info", "warning", "error"):
            raise _fail("log_level", "must be debug, info, warning or error", level)
        c.log_level = level.lower()
    c.mqtt = _mqtt(_section("mqtt", d.get("mqtt"), MqttConfig))
    c.limits = _limits(_section("limits", d.get("limits"), LimitsConfig))
    c.microphone = _microphone(_section("microphone", d.get("microphone"), MicrophoneConfig))
    c.admin = _admin(_section("admin", d.get("admin"), AdminConfig))
    c.wyoming = _wyoming(_section("wyoming", d.get("wyoming"), WyomingConfig))
    # systemd's StateDirectory= (a colon-separated list) wins: the unit decides where state lives.
    env_state = os.environ.get("STATE_DIRECTORY")
    if env_state:
        c.state_dir = env_state.split(":")[0]
    return c


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
