#!/usr/bin/env bash
# The one test command: set up the checkout (idempotent, fast when nothing changed), then run the suite.
# Arguments go to pytest, e.g.  tests/run.sh -k microphone -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./install.sh --dev
export EDGEVERIFY_REQUIRE_MODEL=1  # the models were just built: a model test must never skip silently here
exec .venv/bin/python -m pytest -q "$@"
