"""Start Home Assistant Core, past its start-up Python version gate (run with the HA venv's python).

HA >= 2025.5 asks for Python 3.13.2 at start (homeassistant/__main__.py validate_python, reading
homeassistant.const.REQUIRED_PYTHON_VER). Where only an older 3.13 is available (setup_ha.sh installed
HA with --ignore-requires-python), this lowers the gate to the running version; nothing else changes.
Arguments are HA's own: `hass.py -c <config dir> ...`.
"""

import sys

import homeassistant.__main__ as ha_main

if tuple(ha_main.REQUIRED_PYTHON_VER) > sys.version_info[:3]:
    ha_main.REQUIRED_PYTHON_VER = tuple(sys.version_info[:3])
sys.argv[0] = "hass"
sys.exit(ha_main.main())
