"""Home Assistant MQTT discovery, states and events as plain data: topics and payload builders, no client.

Device-based discovery (HA >= 2024.11): one retained config on `<discovery_prefix>/device/edgeverify_<d>/config`
holding the device (`dev`), the origin (`o`) and every entity (`cmps`). The per-entity configs that
edgeverify 0.1 published (`<prefix>/{binary_sensor,sensor}/edgeverify_<d>/{match,speaker,score}/config`)
are migrated the way HA documents it: `{"migrate_discovery": true}` to each old topic, then the device
config, then an empty retained payload on each old topic. The unique_ids are 0.1's, so HA keeps the
entities (their entity ids, history and automations). The sequence is harmless when there is nothing to
migrate (HA ignores it), so it is sent on every connect.

Decisions become three things: an `event` entity payload (`event_type` identified / unknown_speaker /
verified / rejected + attributes), a retained per-kind state (identify and verify never overwrite each
other) and the retained "last decision of any kind" state of 0.1.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .. import __version__
from ..app.protocol import now_iso

ORIGIN_NAME = "edgeverify"
SUPPORT_URL = "https://github.com/edgeverify/edgeverify#home-assistant"

EVENT_TYPES = ("identified", "unknown_speaker", "verified", "rejected")
# The "Last speaker" state when identification found nobody: a space makes it impossible as a profile name
# (A-Z a-z 0-9 _ . -), and it is not HA's own "unknown" (= no data yet).
NO_MATCH = "unknown speaker"
PERSON_PREFIX = "identified_"  # + person_slug(name): the per-person event type beside the generic ones
LOG_LEVELS = ("debug", "info", "warning", "error")
# <base>/status: what the service says about itself (retained); a crash leaves "running" behind with
# availability "offline" (the last will), a clean stop says "stopped" before it goes offline
STATUS_RUNNING, STATUS_STOPPED, STATUS_RESTARTING = "running", "stopped", "restarting"
LEGACY_COMPONENTS = (("binary_sensor", "match"), ("sensor", "speaker"), ("sensor", "score"))
MIGRATE_PAYLOAD = b'{"migrate_discovery": true}'


@dataclass(frozen=True)
class Topics:
    """Every topic the HA side uses, derived from the MQTT config (one place, so tests and README agree)."""

    base: str  # <topic_prefix>/<device_id>
    discovery_prefix: Optional[str]
    device_id: str

    @property
    def node_id(self) -> str:
        return f"edgeverify_{self.device_id}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def event(self) -> str:
        return f"{self.base}/event"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    def kind_state(self, kind: str) -> str:
        return f"{self.base}/state/{kind}"

    @property
    def diagnostics(self) -> str:
        return f"{self.base}/diagnostics"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def ha_restart(self) -> str:
        return f"{self.base}/admin/ha/restart"

    @property
    def ha_log_level(self) -> str:
        return f"{self.base}/admin/ha/log_level"

    @property
    def ha_log_level_state(self) -> str:
        return f"{self.base}/admin/ha/log_level/state"

    @property
    def admin(self) -> str:
        return f"{self.base}/admin"

    @property
    def admin_request(self) -> str:
        return f"{self.base}/admin/request"

    @property
    def admin_response(self) -> str:
        return f"{self.base}/admin/response"

    @property
    def ha_enroll_name(self) -> str:
        return f"{self.base}/admin/ha/enroll_name"

    @property
    def ha_enroll_utterances(self) -> str:
        return f"{self.base}/admin/ha/enroll_utterances"

    @property
    def ha_enroll_press(self) -> str:
        return f"{self.base}/admin/ha/enroll"

    @property
    def ha_enroll_state(self) -> str:
        return f"{self.base}/admin/ha/state"

    @property
    def ha_status(self) -> Optional[str]:
        """Where HA announces itself (birth `online` / will `offline`)."""
        return f"{self.discovery_prefix}/status" if self.discovery_prefix else None

    @property
    def device_config(self) -> Optional[str]:
        return f"{self.discovery_prefix}/device/{self.node_id}/config" if self.discovery_prefix else None

    def legacy_configs(self) -> list[str]:
        """The per-entity discovery topics of edgeverify 0.1."""
        if not self.discovery_prefix:
            return []
        return [f"{self.discovery_prefix}/{c}/{self.node_id}/{k}/config" for c, k in LEGACY_COMPONENTS]


# -- discovery ---------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def person_slug(name: str) -> str:
    """A stable, collision-free event-type suffix for a profile name.

    Profile names are [A-Za-z0-9_.-]{1,64}. A name that is already lower-case [a-z0-9_] is its own slug
    (`alice` -> `identified_alice`); any other gets the slug of its letters plus 6 hex digits of its hash
    (`Mary-Ann` -> `mary_ann_1f3a9c`), so `Mary-Ann`, `mary_ann` and `mary.ann` never share an event type
    and a name's type never changes when other profiles come and go (automations keep working).
    """
    if re.fullmatch(r"[a-z0-9_]{1,64}", name):
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:6]
    return f"{_slug(name) or 'x'}_{digest}"


def person_event_type(name: str) -> str:
    return PERSON_PREFIX + person_slug(name)


def _entity(t: Topics, platform: str, key: str, name: str, legacy: bool = False, **options: Any) -> dict[str, Any]:
    """default_entity_id is what HA < 2025.10 derives anyway (device name + entity name; for 0.1's entities
    their object id), so an entity gets the same id on every HA version."""
    uid = f"{t.node_id}_{key}"
    eid = f"{platform}.{_slug(t.node_id)}_{_slug(key if legacy else name)}"
    return {"p": platform, "name": name, "unique_id": uid, "default_entity_id": eid, **options}


def device_discovery(t: Topics, model_name: str, admin_entities: bool, max_utterances: int = 10,
                     person_names: Sequence[str] = (), admin_controls: bool = False,
                     cpu_temperature: bool = False) -> dict[str, Any]:
    """The device-based discovery payload. admin_entities: the enroll-from-HA text/number/button/sensor
    (only when admin requests and the microphone are enabled; otherwise they are listed as removals).
    max_utterances: the enroll-utterances number's maximum, which is admin.max_clips (the limit the
    device enforces), so HA never offers a value the device refuses or refuses one it would take.
    person_names: the profiles that get an `identified_<slug>` event type (already bounded by the caller).
    admin_controls: the restart button and the log-level select (admin.enabled). cpu_temperature: the
    board exposes one (else that sensor is listed as a removal)."""
    diag = {"entity_category": "diagnostic", "state_topic": t.diagnostics}
    health = {"entity_category": "diagnostic", "state_topic": t.health}
    online = {"topic": t.availability, "payload_available": "online", "payload_not_available": "offline"}
    cmps: dict[str, dict[str, Any]] = {
        # unique_ids of 0.1's entities are kept, so HA keeps their entity ids; the component keys differ
        # from 0.1's object ids on purpose: with equal discovery ids, clearing the old topics after the
        # migration makes HA (2025.4) log "Received a conflicting MQTT discovery message" per entity
        "last_speaker": _entity(
            t, "sensor", "speaker", "Last speaker", True, state_topic=t.kind_state("identify"),
            value_template="{{ value_json.speaker }}", json_attributes_topic=t.kind_state("identify"),
            icon="mdi:account-voice",
        ),
        "verify_match": _entity(
            t, "binary_sensor", "match", "Speaker match", True, state_topic=t.kind_state("verify"),
            value_template="{{ 'ON' if value_json.match else 'OFF' }}", json_attributes_topic=t.kind_state("verify"),
            device_class="occupancy",
        ),
        # no state_class on purpose: see README "Home Assistant" (scores of different speakers and kinds
        # averaged per hour mean nothing); numeric (display precision) so HA still graphs its history
        "last_score": _entity(
            t, "sensor", "score", "Last score", True, state_topic=t.state, value_template="{{ value_json.score }}",
            json_attributes_topic=t.state, suggested_display_precision=3, icon="mdi:account-check",
        ),
        "event": _entity(
            t, "event", "event", "Speaker", state_topic=t.event,
            event_types=list(EVENT_TYPES) + [person_event_type(n) for n in person_names], icon="mdi:account-voice",
        ),
        # every request the device handled since it started: MQTT and admin requests, microphone and Wyoming
        # utterances (the split is the sensor's attributes)
        "requests": _entity(
            t, "sensor", "requests", "Requests handled", value_template="{{ value_json.requests }}",
            json_attributes_topic=t.diagnostics, json_attributes_template="{{ value_json.requests_by_source | tojson }}",
            state_class="total_increasing", icon="mdi:counter", **diag,
        ),
        "errors": _entity(
            t, "sensor", "errors", "Errors", value_template="{{ value_json.errors }}",
            state_class="total_increasing", icon="mdi:alert-circle-outline", **diag,
        ),
        "latency": _entity(
            t, "sensor", "latency", "Last latency", value_template="{{ value_json.last_latency_ms }}",
            device_class="duration", unit_of_measurement="ms", state_class="measurement", **diag,
        ),
        "profiles": _entity(
            t, "sensor", "profiles", "Profiles", value_template="{{ value_json.profiles }}",
            icon="mdi:account-multiple", **diag,
        ),
        # health (<base>/health, retained, every HEALTH_INTERVAL_S)
        "started": _entity(t, "sensor", "started", "Started", value_template="{{ value_json.started }}",
                           device_class="timestamp", **health),
        "rss": _entity(t, "sensor", "rss", "Memory", value_template="{{ value_json.rss_mb }}", device_class="data_size",
                       unit_of_measurement="MB", state_class="measurement", suggested_display_precision=0,
                       icon="mdi:memory", **health),
        "latency_p50": _entity(t, "sensor", "latency_p50", "Decision latency p50",
                               value_template="{{ value_json.latency_ms.p50 }}", device_class="duration",
                               unit_of_measurement="ms", state_class="measurement", **health),
        "latency_p95": _entity(t, "sensor", "latency_p95", "Decision latency p95",
                               value_template="{{ value_json.latency_ms.p95 }}", device_class="duration",
                               unit_of_measurement="ms", state_class="measurement", **health),
        "decisions_hour": _entity(t, "sensor", "decisions_hour", "Decisions per hour",
                                  value_template="{{ value_json.decisions_per_hour }}", unit_of_measurement="/h",
                                  state_class="measurement", icon="mdi:account-voice", **health),
        "rejects_hour": _entity(t, "sensor", "rejects_hour", "Rejects per hour",
                                value_template="{{ value_json.rejects_per_hour }}", unit_of_measurement="/h",
                                state_class="measurement", icon="mdi:account-cancel", **health),
        # running / stopped / restarting; available while the device is online OR after a clean stop, so HA
        # shows "stopped" for a clean stop and "unavailable" after a crash (the last will, status still running)
        "status": _entity(
            t, "sensor", "status", "Service status", state_topic=t.status, device_class="enum",
            options=[STATUS_RUNNING, STATUS_STOPPED, STATUS_RESTARTING], entity_category="diagnostic",
            availability_mode="any", availability=[online, {
                "topic": t.status, "value_template":
                    "{{ 'online' if value in ('" + STATUS_STOPPED + "', '" + STATUS_RESTARTING + "') else 'offline' }}",
            }], icon="mdi:power",
        ),
    }
    temp = _entity(t, "sensor", "cpu_temperature", "CPU temperature", value_template="{{ value_json.cpu_temp_c }}",
                   device_class="temperature", unit_of_measurement="°C", state_class="measurement", **health)
    cmps["cpu_temperature"] = temp if cpu_temperature else {"p": "sensor"}
    controls: dict[str, dict[str, Any]] = {
        "restart": _entity(t, "button", "restart", "Restart", command_topic=t.ha_restart, payload_press="PRESS",
                           device_class="restart", entity_category="config"),
        "log_level": _entity(t, "select", "log_level", "Log level", command_topic=t.ha_log_level,
                             state_topic=t.ha_log_level_state, options=list(LOG_LEVELS), entity_category="config",
                             icon="mdi:math-log"),
    }
    for key, cfg in controls.items():
        cmps[key] = cfg if admin_controls else {"p": cfg["p"]}
    admin: dict[str, dict[str, Any]] = {
        "enroll_name": _entity(
            t, "text", "enroll_name", "Enroll name", command_topic=t.ha_enroll_name, state_topic=t.ha_enroll_state,
            value_template="{{ value_json.name }}", min=0, max=64, entity_category="config", icon="mdi:account-plus",
        ),
        "enroll_utterances": _entity(
            t, "number", "enroll_utterances", "Enroll utterances", command_topic=t.ha_enroll_utterances,
            state_topic=t.ha_enroll_state, value_template="{{ value_json.utterances }}", min=1, max=max_utterances, step=1,
            mode="box", entity_category="config",
        ),
        "enroll": _entity(
            t, "button", "enroll", "Enroll from microphone", command_topic=t.ha_enroll_press, payload_press="PRESS",
            icon="mdi:microphone-plus",
        ),
        "enrollment": _entity(
            t, "sensor", "enrollment", "Enrollment", state_topic=t.ha_enroll_state,
            value_template="{{ value_json.status }}", json_attributes_topic=t.ha_enroll_state, icon="mdi:account-plus",
        ),
    }
    for key, cfg in admin.items():
        cmps[key] = cfg if admin_entities else {"p": cfg["p"]}  # platform only = remove it (HA docs)
    return {
        "dev": {
            "ids": [t.node_id],
            "name": f"edgeverify {t.device_id}",
            "mf": "edgeverify",
            "mdl": f"Speaker verification ({model_name})",
            "sw": __version__,
        },
        "o": {"name": ORIGIN_NAME, "sw": __version__, "url": SUPPORT_URL},
        "cmps": cmps,
        # the list form, so the status sensor can have its own (HA refuses availability_topic beside availability)
        "availability": [online],
        "qos": 1,
    }


def discovery_messages(t: Topics, device_payload: dict[str, Any], migrate: bool) -> list[tuple[str, bytes, bool]]:
    """(topic, payload, retain) in the order HA documents; migrate=False gives only the device config."""
    if not t.device_config:
        return []
    config = (t.device_config, json.dumps(device_payload).encode(), True)
    if not migrate:
        return [config]
    old = t.legacy_configs()
    return [(topic, MIGRATE_PAYLOAD, False) for topic in old] + [config] + [(topic, b"", True) for topic in old]


# -- decisions ---------------------------------------------------------------------------------------

def decision_kind(body: dict[str, Any]) -> str:
    """identify (who is it?) or verify (is it this person / the same person?)."""
    return "verify" if body.get("profile") is not None or body.get("type") == "verify" else "identify"


def event_type(body: dict[str, Any]) -> str:
    if body.get("rejected") is True:  # a Wyoming proxy with reject_unknown: the transcript was withheld
        return "rejected"
    if decision_kind(body) == "verify":
        return "verified" if body.get("same_speaker") else "rejected"
    return "identified" if body.get("speaker") else "unknown_speaker"


def event_payload(body: dict[str, Any], source: str) -> dict[str, Any]:
    """The response body (so 0.1 consumers of <p>/<d>/event keep their fields) + what HA's event entity reads."""
    return {**body, "event_type": event_type(body), "source": source, "kind": decision_kind(body)}


def _common(body: dict[str, Any], source: str) -> dict[str, Any]:
    out = {
        "score": body.get("score"),
        "threshold": body.get("threshold"),
        "source": source,
        "type": body.get("type"),
        "request_id": body.get("request_id"),
        "timestamp": body.get("timestamp") or now_iso(),
    }
    if "llr" in body:
        out["llr"] = body["llr"]
    return out


def kind_state(body: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    """(kind, retained state for <p>/<d>/state/<kind>)."""
    kind = decision_kind(body)
    if kind == "verify":
        return kind, {"match": bool(body.get("same_speaker")), "profile": body.get("profile"), **_common(body, source)}
    speaker = body.get("speaker")
    return kind, {"speaker": speaker or NO_MATCH, "identified": bool(speaker), **_common(body, source)}


def last_state(body: dict[str, Any], source: str) -> dict[str, Any]:
    """<p>/<d>/state: the last decision of any kind (the 0.1 topic; a non-match is NO_MATCH, not "unknown")."""
    same = bool(body.get("same_speaker"))
    speaker = body.get("speaker") or (body.get("profile") if same else None)
    return {
        "type": body.get("type"),
        "kind": decision_kind(body),
        "event_type": event_type(body),
        "source": source,
        "same_speaker": same,
        "speaker": speaker or NO_MATCH,
        **{k: v for k, v in _common(body, source).items() if k not in ("type", "source")},
    }


def diagnostics(requests: int, errors: int, decisions: int, last_latency_ms: Optional[float], profiles: int,
                profiles_other_model: int = 0, requests_by_source: Optional[dict[str, int]] = None) -> dict[str, Any]:
    """The retained diagnostics document. requests: every request handled (MQTT and admin requests answered,
    microphone and Wyoming utterances decided), requests_by_source: that count per source;
    profiles_other_model: enrolled with another model than the running one, so not scored until re-enrolled."""
    return {
        "requests": requests,
        "requests_by_source": dict(requests_by_source or {}),
        "errors": errors,
        "decisions": decisions,
        "last_latency_ms": None if last_latency_ms is None else round(float(last_latency_ms), 1),
        "profiles": profiles,
        "profiles_other_model": profiles_other_model,
    }
