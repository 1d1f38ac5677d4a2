"""VoxCeleb-style trial lists (`<0|1> <file> <file>` per line): what `edgeverify eval`, the cohort build and
the benchmarks all read. Plain parsing, no model."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from ..errors import EdgeVerifyError

Trial = Tuple[int, str, str]


def read_trials(path: Path) -> List[Trial]:
    """(label, file a, file b) per non-empty line; a clear error on anything else."""
    trials = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[0] not in ("0", "1"):
                raise EdgeVerifyError(f"{path}:{number}: expected '<0|1> <file> <file>', got {line.strip()!r}")
            trials.append((int(parts[0]), parts[1], parts[2]))
    if not trials:
        raise EdgeVerifyError(f"{path}: no trials")
    return trials


def speaker_of(name: str) -> str:
    """Trial paths are <speaker>/<file>, or <condition>/<speaker>/<file> for derived (degraded) sets."""
    parts = name.split("/")
    return parts[-2] if len(parts) > 1 else name
