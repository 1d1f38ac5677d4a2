"""Write a minimal Home Assistant Core config dir whose MQTT integration points at a given broker.

The MQTT config entry is written straight into .storage/core.config_entries (the storage format of HA
2024.x-2025.x: version 1, minor 5), so no UI/config flow, onboarding or token is needed; mqtt_statestream
makes HA publish every entity state and attribute it shows to `hastate/<domain>/<object_id>/...`, which is
how ha_check.py sees what HA shows. Used by run_ha_check.sh and tests/ha_companion/harness.py, which also
share wait_for.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """check()'s first truthy value, polled every 0.2 s; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


CONFIGURATION_YAML = """\
homeassistant:
  name: edgeverify-check
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: DE
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {http_port}
api:
mqtt_statestream:  # HA re-publishes what it shows (entity states + attributes): the check reads it over MQTT
  base_topic: hastate
  publish_attributes: true
automation:  # "a user in HA's UI": set the enroll name and count, press the button (entity ids differ by HA version)
  - alias: edgeverify enroll from the UI
    triggers:
      - trigger: mqtt
        topic: hacheck/enroll
    actions:
      - action: text.set_value
        target:
          entity_id: "{{{{ integration_entities('mqtt') | select('match', 'text.edgeverify_.*_enroll_name') | list }}}}"
        data:
          value: "{{{{ trigger.payload }}}}"
      - action: number.set_value
        target:
          entity_id: "{{{{ integration_entities('mqtt') | select('match', 'number.edgeverify_.*_enroll_utterances') | list }}}}"
        data:
          value: 2
      - action: button.press
        target:
          entity_id: "{{{{ integration_entities('mqtt') | select('match', 'button.edgeverify_.*_enroll') | list }}}}"
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: debug
"""


def write_config(config_dir: Path, broker_port: int, http_port: int) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(CONFIGURATION_YAML.format(http_port=http_port))
    storage = config_dir / ".storage"
    storage.mkdir(exist_ok=True)
    now = "2025-01-01T00:00:00.000000+00:00"
    entry = {
        "created_at": now, "modified_at": now, "data": {"broker": "127.0.0.1", "port": broker_port},
        "disabled_by": None, "discovery_keys": {}, "domain": "mqtt", "entry_id": "01JEDGEVERIFYMQTTCHECK0000",
        "minor_version": 2, "options": {"discovery": True, "discovery_prefix": "homeassistant"},
        "pref_disable_new_entities": False, "pref_disable_polling": False, "source": "user",
        "subentries": [], "title": f"127.0.0.1:{broker_port}", "unique_id": None, "version": 1,
    }
    doc = {"version": 1, "minor_version": 5, "key": "core.config_entries", "data": {"entries": [entry]}}
    (storage / "core.config_entries").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    write_config(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
