"""Which speaker models exist, where their built files live, and the committed manifests they are built from.

Two models, each built in two precisions by `edgeverify model build`:

    campp  3D-Speaker CAM++ (zh-en common_advanced, ~200k speakers): campp-int8.onnx, campp-fp32.onnx
    ecapa  SpeechBrain ECAPA-TDNN (VoxCeleb):                         ecapa-int8.onnx, ecapa-fp32.onnx

Each model has its own manifest in models/ (where its checkpoint comes from, its licence, its
thresholds, its calibration ranges) and its own scoring cohort (cohort-<model>-<precision>.json). An
embedding of one model means nothing to the other, so nothing here ever substitutes one for the other.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import ModelError

PRECISIONS = ("int8", "fp32")
DEFAULT_PRECISION = "int8"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    manifest: str  # file name in models/
    summary: str

    def file(self, precision: str) -> str:
        return f"{self.name}-{precision}.onnx"

    def files(self) -> Dict[str, str]:
        return {p: self.file(p) for p in PRECISIONS}


MODELS: Dict[str, ModelSpec] = {
    "campp": ModelSpec("campp", "manifest-campp.json", "3D-Speaker CAM++, 7.2 M parameters, trained on ~200k speakers"),
    # manifest.json: ECAPA's since 0.1 (installers and the ARM check copy it by that name)
    "ecapa": ModelSpec("ecapa", "manifest.json", "SpeechBrain ECAPA-TDNN, 20.8 M parameters, trained on VoxCeleb"),
}
# Chosen by measurement (docs/models.md): speaker-disjoint default EER of the int8 models, CAM++ against
# ECAPA: dev 1.59 vs 2.69 %, dev8k 5.27 vs 5.88 %, and lower in every degraded condition.
DEFAULT_MODEL = "campp"
# ECAPA's files, by precision (kept for callers from before there were two models)
MODEL_FILES = MODELS["ecapa"].files()
REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
SYSTEM_MODELS = (Path("/opt/edgeverify/models"), Path("/usr/share/edgeverify/models"))
MANIFEST_NAME = MODELS["ecapa"].manifest


def model_dirs() -> List[Path]:
    """Search order: $EDGEVERIFY_MODEL_DIR, the checkout's models/, then the system install."""
    dirs = [Path(os.environ["EDGEVERIFY_MODEL_DIR"])] if os.environ.get("EDGEVERIFY_MODEL_DIR") else []
    return dirs + [REPO_MODELS, *SYSTEM_MODELS]


def parse_model(model: str, precision: Optional[str] = None) -> Optional[Tuple[str, str]]:
    """(name, precision) for a model setting, or None when it is not a model name (then it is a path).

    Accepted: a name ("campp", "ecapa"; precision from ``precision``, default int8), a precision alone
    ("int8", "fp32": the default model, as the setting meant before there were two models), or both in
    one word ("campp-fp32")."""
    if precision is not None and precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if model in MODELS:
        return model, precision or DEFAULT_PRECISION
    if model in PRECISIONS:
        if precision is not None and precision != model:
            raise ModelError(f"model {model!r} contradicts precision {precision!r}")
        return DEFAULT_MODEL, model
    name, _, prec = model.rpartition("-")
    if name in MODELS and prec in PRECISIONS:
        if precision is not None and precision != prec:
            raise ModelError(f"model {model!r} contradicts precision {precision!r}")
        return name, prec
    return None


def resolve_model(model: str = DEFAULT_MODEL, precision: Optional[str] = None) -> Path:
    """A model setting -> an existing .onnx file.

    ``model``: "campp" or "ecapa" (with ``precision`` "int8" or "fp32", default int8), "int8"/"fp32" alone
    (the default model), "campp-fp32" style, or a path to an .onnx file."""
    parsed = parse_model(model, precision)
    if parsed is not None:
        name, prec = parsed
        filename = MODELS[name].file(prec)
        for directory in model_dirs():
            candidate = directory / filename
            if candidate.is_file():
                return candidate
        searched = ", ".join(str(d) for d in model_dirs())
        raise ModelError(f"{name} {prec} model ({filename}) not found (looked in {searched}); "
                         "build it with `edgeverify model build`")
    path = Path(model)
    if not path.is_file():
        names = ", ".join(MODELS)
        raise ModelError(f"model file {model} does not exist (use {names}, int8, fp32 or a path to an .onnx file)")
    return path


def cohort_path(model_path: Path) -> Path:
    """The scoring cohort of a built model file: cohort-<file stem>.json beside it (cohort-campp-int8.json);
    an fp32 model without its own uses its int8 sibling's (their embeddings agree to ~0.997)."""
    model_path = Path(model_path)
    own = model_path.parent / f"cohort-{model_path.stem}.json"
    name, _, prec = model_path.stem.rpartition("-")
    if own.is_file() or name not in MODELS or prec == "int8":
        return own
    return model_path.parent / f"cohort-{name}-int8.json"


def _read_json(name: str) -> Dict:
    for directory in (*model_dirs(), Path(__file__).resolve().parents[1]):
        path = directory / name
        if path.is_file():
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
    raise ModelError(f"models/{name} not found")


@lru_cache(maxsize=4)
def load_manifest(name: str = "ecapa") -> Dict:
    """A model's manifest (models/manifest-<name>.json; ECAPA's is models/manifest.json), from the first
    model folder holding it (install.sh copies them next to the models)."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    return _read_json(MODELS[name].manifest)
