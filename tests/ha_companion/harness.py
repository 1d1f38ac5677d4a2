"""A real Home Assistant Core with the companion integration, HA's MQTT integration and a private mosquitto.

The config dir gets: the MQTT config entry (tests/ha/ha_config.write_config), configuration.yaml (below),
custom_components/edgeverify linked to this checkout, and `.storage/auth` with three users (alice, bob:
persons with an HA user; tester: an admin with a long-lived token for the REST API, the way HA's UI calls
config flows). Carol is a person without a user. Two automations stand in for a voice satellite and for
what a wrapped agent sees:

- `hatest/converse` (MQTT) -> `conversation.process` with no logged-in user (a satellite's request has
  none) -> `<id>|<response type>|<speech>` is published on `hatest/answer`;
- a `conversation` trigger "who am i" (handled by HA's own agent behind ours) answers with the user id and
  extra system prompt the agent received (`trigger.user_input`).

mqtt_statestream republishes every entity state on `hastate/...` so the test sees what HA shows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for p in (REPO / "tests", REPO / "tests" / "ha"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from ha_config import wait_for, write_config  # noqa: E402,F401 -- wait_for: the tests' import point

HA_VENV = Path(os.environ.get("HA_VENV", REPO / ".venv-ha"))
HA_PYTHON = HA_VENV / "bin" / "python"

CONFIGURATION_YAML = """\
homeassistant:
  name: edgeverify-companion-test
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: GB
  currency: GBP
  language: en
http:
  server_host: 127.0.0.1
  server_port: {http_port}
api:
conversation:
assist_pipeline:
person:
{persons}
mqtt_statestream:
  base_topic: hastate
  publish_attributes: true
  exclude:  # what people said (the inbox entities' unrecorded attributes) stays in HA's memory, off MQTT
    entity_globs:
      - select.edgeverify_inbox_*
      - sensor.edgeverify_voice_inbox
automation:
  - alias: a satellite asks (no logged-in user)
    mode: parallel
    triggers:
      - trigger: mqtt
        topic: hatest/converse
    actions:
      - action: conversation.process
        data:
          text: "{{{{ trigger.payload_json.text }}}}"
          agent_id: "{{{{ trigger.payload_json.agent }}}}"
          conversation_id: "{{{{ trigger.payload_json.conversation_id }}}}"
        response_variable: result
      - action: mqtt.publish
        data:
          topic: hatest/answer
          payload: "{{{{ trigger.payload_json.id }}}}|{{{{ result.response.response_type }}}}|{{{{ result.response.speech.plain.speech | default('') }}}}"
  - alias: what the wrapped agent saw
    mode: parallel
    triggers:
      - trigger: conversation
        command:
          - "who am i"
    actions:
      - set_conversation_response: "user={{{{ trigger.user_input.context.user_id or '' }}}}|prompt={{{{ trigger.user_input.extra_system_prompt or '' }}}}"
logger:
  default: info
  logs:
    homeassistant.components.mqtt: debug
    custom_components.edgeverify: debug
"""


@dataclass
class Users:
    ids: dict[str, str] = field(default_factory=dict)  # name -> HA user id
    token: str = ""  # the tester's access token (REST)
    tokens: dict[str, str] = field(default_factory=dict)  # name -> access token, every user (alice: not an admin)




def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: str, key: str, lifetime_s: int = 86400) -> str:
    """The access token HA itself would mint from a refresh token (HS256, iss = refresh token id)."""
    now = int(time.time())
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps({"iss": issuer, "iat": now, "exp": now + lifetime_s}).encode())
    sig = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def write_auth(storage: Path, more: tuple[str, ...] = ()) -> Users:
    users = Users()
    now = datetime.now(timezone.utc).isoformat()
    records, tokens = [], []
    for name, admin in (("tester", True), ("Alice", False), ("Bob", False), *((m, False) for m in more)):
        uid = secrets.token_hex(16)
        users.ids[name.lower()] = uid
        records.append({"id": uid, "group_ids": ["system-admin" if admin else "system-users"], "is_owner": admin,
                        "is_active": True, "name": name, "system_generated": False, "local_only": False})
    keys: dict[str, tuple[str, str]] = {}
    for name, uid in users.ids.items():
        rt_id, jwt_key = secrets.token_hex(16), secrets.token_hex(64)
        keys[name] = (rt_id, jwt_key)
        tokens.append({"id": rt_id, "user_id": uid, "client_id": None, "client_name": f"edgeverify test ({name})",
                       "client_icon": None, "token_type": "long_lived_access_token", "created_at": now,
                       "access_token_expiration": 864000.0, "token": secrets.token_hex(64), "jwt_key": jwt_key,
                       "last_used_at": None, "last_used_ip": None, "expire_at": None, "credential_id": None, "version": None})
    groups = [{"id": "system-admin", "name": "Administrators"}, {"id": "system-users", "name": "Users"},
              {"id": "system-read-only", "name": "Read Only"}]
    doc = {"version": 1, "minor_version": 1, "key": "auth",
           "data": {"users": records, "groups": groups, "credentials": [], "refresh_tokens": tokens}}
    (storage / "auth").write_text(json.dumps(doc, indent=1))
    onboarding = {"version": 4, "minor_version": 1, "key": "onboarding",
                  "data": {"done": ["user", "core_config", "analytics", "integration"]}}
    (storage / "onboarding").write_text(json.dumps(onboarding))
    users.tokens = {name: _jwt(*key) for name, key in keys.items()}
    users.token = users.tokens["tester"]
    return users


def add_config_entries(config_dir: Path, entries: list[dict[str, Any]]) -> None:
    """More config entries in .storage/core.config_entries, as HA's config flows would store them:
    each {"domain", "title", "data", "options"} (the rest filled in)."""
    path = config_dir / ".storage" / "core.config_entries"
    doc = json.loads(path.read_text())
    now = datetime.now(timezone.utc).isoformat()
    for e in entries:
        doc["data"]["entries"].append({
            "created_at": now, "modified_at": now, "data": e.get("data", {}), "disabled_by": None,
            "discovery_keys": {}, "domain": e["domain"], "entry_id": secrets.token_hex(13).upper(),
            "minor_version": 1, "options": e.get("options", {}), "pref_disable_new_entities": False,
            "pref_disable_polling": False, "source": "user", "subentries": [], "title": e["title"],
            "unique_id": None, "version": 1})
    path.write_text(json.dumps(doc, indent=1))


def write_ha_config(config_dir: Path, broker_port: int, http_port: int, extra_yaml: str = "",
                    more_people: tuple[str, ...] = ()) -> Users:
    """more_people: persons with an HA user each, besides Alice and Bob (and Carol, who has none)."""
    write_config(config_dir, broker_port, http_port)  # the MQTT config entry (and a configuration.yaml we replace)
    users = write_auth(config_dir / ".storage", more_people)
    persons = "\n".join([
        f"  - name: Alice\n    id: alice\n    user_id: {users.ids['alice']}",
        f"  - name: Bob\n    id: bob\n    user_id: {users.ids['bob']}",
        "  - name: Carol\n    id: carol",
        *(f"  - name: {m}\n    id: {m.lower()}\n    user_id: {users.ids[m.lower()]}" for m in more_people),
    ])
    (config_dir / "configuration.yaml").write_text(CONFIGURATION_YAML.format(http_port=http_port, persons=persons) + extra_yaml)
    custom = config_dir / "custom_components"
    custom.mkdir(exist_ok=True)
    (custom / "edgeverify").symlink_to(REPO / "custom_components" / "edgeverify", target_is_directory=True)
    return users


def ha_version() -> str:
    return subprocess.run([str(HA_PYTHON), "-c", "import homeassistant.const as c; print(c.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


class HA:
    """`hass` as a subprocess (tests/ha_companion/hass.py), its REST API, and its log."""

    def __init__(self, config_dir: Path, http_port: int, token: str) -> None:
        self.config_dir = config_dir
        self.url = f"http://127.0.0.1:{http_port}"
        self.token = token
        self.proc: Optional[subprocess.Popen] = None
        self._out: Any = None

    def start(self) -> "HA":
        self._out = open(self.config_dir / "hass.out", "ab")
        # --skip-pip: setup_ha.sh installed every requirement; HA must not reach for the network here
        self.proc = subprocess.Popen([str(HA_PYTHON), str(HERE / "hass.py"), "-c", str(self.config_dir), "--skip-pip"],
                                     stdout=self._out, stderr=subprocess.STDOUT)
        return self

    def wait_running(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"Home Assistant exited ({self.proc.returncode}): see {self.config_dir}/hass.out")
            try:
                if self.get("/api/config").get("state") == "RUNNING":
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"Home Assistant not running after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._out is not None:
            self._out.close()
            self._out = None

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self._call("POST", path, body)

    def ws(self, command: dict[str, Any], raw: bool = False, token: Optional[str] = None) -> Any:
        """A websocket API command (ws_call.py, with the HA venv's aiohttp); raw: the whole result message,
        also a failed one (what HA's UI gets, e.g. for a button press that raised); token: another user's."""
        out = subprocess.run([str(HA_PYTHON), str(HERE / "ws_call.py"), self.url, token or self.token, json.dumps(command),
                              *(["raw"] if raw else [])], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"websocket {command}: {out.stderr.strip()[-500:]}")
        return json.loads(out.stdout)

    def state(self, entity_id: str) -> Optional[dict[str, Any]]:
        try:
            return self.get(f"/api/states/{entity_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def log_lines(self) -> list[str]:
        """This run's log and the one before it (HA keeps the previous run's as home-assistant.log.1)."""
        lines: list[str] = []
        for name in ("home-assistant.log.1", "home-assistant.log"):
            f = self.config_dir / name
            if f.exists():
                lines += f.read_text(errors="replace").splitlines()
        return lines
