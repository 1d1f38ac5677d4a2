"""Where built models live, and the committed manifest that says what they were built from."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, List

from ..errors import ModelError

MODEL_FILES = {"int8": "ecapa-int8.onnx", "fp32": "ecapa-fp32.onnx"}
REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
SYSTEM_MODELS = (Path("/opt/edgeverify/models"), Path("/usr/share/edgeverify/models"))
MANIFEST_NAME = "manifest.json"


def model_dirs() -> List[Path]:
    """Search order: $EDGEVERIFY_MODEL_DIR, the checkout's models/, then the system install."""
    dirs = [Path(os.environ["EDGEVERIFY_MODEL_DIR"])] if os.environ.get("EDGEVERIFY_MODEL_DIR") else []
    return dirs + [REPO_MODELS, *SYSTEM_MODELS]


def resolve_model(model: str) -> Path:
    """A model name ("int8", "fp32") or a path to an .onnx file -> an existing file."""
    if model in MODEL_FILES:
        for directory in model_dirs():
            candidate = directory / MODEL_FILES[model]
            if candidate.is_file():
                return candidate
        searched = ", ".join(str(d) for d in model_dirs())
        raise ModelError(f"{model} model not found (looked in {searched}); build it with `edgeverify model build`")
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model file {model} does not exist (use int8, fp32 or a path to an .onnx file)")
    return path


@lru_cache(maxsize=1)
def load_manifest() -> Dict:
    """models/manifest.json: from the first model folder holding one (install.sh copies it next to the models)."""
    for directory in (*model_dirs(), Path(__file__).resolve().parents[1]):
        path = directory / MANIFEST_NAME
        if path.is_file():
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
    raise ModelError("models/manifest.json not found")
