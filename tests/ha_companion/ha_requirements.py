"""Print the pip requirements of every integration the companion test makes Home Assistant load.

Run with the HA venv's python (setup_ha.sh does). The set: what HA's bootstrap always sets up, the
integrations the test config names, custom_components/edgeverify's dependencies, and recursively their
dependencies and after_dependencies (HA installs requirements for both), read from the manifests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import homeassistant.bootstrap as bootstrap
import homeassistant.components as components

REPO = Path(__file__).resolve().parents[2]
# what tests/ha_companion/harness.py's configuration.yaml names
CONFIGURED = {"http", "api", "mqtt", "conversation", "assist_pipeline", "person", "logger", "mqtt_statestream",
              "automation", "homeassistant"}


def main() -> int:
    ours = json.loads((REPO / "custom_components" / "edgeverify" / "manifest.json").read_text())
    todo = set(CONFIGURED) | set(ours.get("dependencies", [])) | set(ours.get("after_dependencies", []))
    for name in ("CORE_INTEGRATIONS", "DEFAULT_INTEGRATIONS", "FRONTEND_INTEGRATIONS"):
        todo |= set(getattr(bootstrap, name, ()))
    todo |= {"logger", "network", "system_log"}
    root = Path(components.__file__).parent
    seen: set[str] = set()
    reqs: set[str] = set(ours.get("requirements", []))
    while todo:
        domain = todo.pop()
        if domain in seen:
            continue
        seen.add(domain)
        manifest = root / domain / "manifest.json"
        if not manifest.is_file():
            continue
        m = json.loads(manifest.read_text())
        reqs.update(m.get("requirements", []))
        todo |= set(m.get("dependencies", [])) | set(m.get("after_dependencies", []))
    print("\n".join(sorted(reqs)))
    print(f"{len(seen)} integrations, {len(reqs)} requirements", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
