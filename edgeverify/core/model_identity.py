"""Which model an embedding came from: name, precision and the sha256 of the .onnx file.

An embedding of one speaker model means nothing to another (both CAM++ and ECAPA give 192 numbers, so a
mismatch would not even fail loudly: it would just score nonsense). Every profile records the identity of
the model it was enrolled with, and the Verifier refuses to score a profile of another model.

What counts as "the same model" is the *name*: int8 and fp32 of one model, or a rebuild of it (the int8
file changes whenever the quantisation or the build's metadata changes, so the sha256 changes), compute
the same function to within rounding (ECAPA int8 vs fp32 on 40 dev clips: mean cosine 0.997 per clip, a
trial's cosine moves by 0.005 on average), far less than separates one speaker from another. The sha256
is recorded and shown so a rebuild is visible, never used to refuse. Deliberately not used to identify a
model: the build's `producer` metadata, which carries the package version and changes on every release.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

KNOWN_MODELS = ("ecapa", "campp")  # names a profile or a built model file can carry
LEGACY_MODEL = "ecapa"  # every profile written before models were recorded by name is an ECAPA profile
LEGACY_PRECISION = "int8"  # ... and, unless its record says fp32, an int8 one (the only default there was)
PRECISIONS = ("int8", "fp32")


@dataclass(frozen=True)
class ModelIdentity:
    name: str  # "ecapa", "campp", or the stem of a custom .onnx file
    precision: str = ""  # "int8", "fp32", or "" when unknown
    sha256: Optional[str] = None  # of the .onnx file; None for profiles enrolled before it was recorded

    @property
    def label(self) -> str:
        """"ecapa int8" -- how logs, the CLI and diagnostics name it."""
        return f"{self.name} {self.precision}".strip()

    @property
    def key(self) -> str:
        """"campp-int8" -- how answers and `edgeverify bench` name it (the built file's stem); a custom
        file of unknown precision is its stem alone."""
        return f"{self.name}-{self.precision}" if self.precision else self.name

    def same_model(self, other: "ModelIdentity") -> bool:
        """Embeddings of the two can be scored against each other (same name; see the module doc)."""
        return self.name == other.name

    def same_build(self, other: "ModelIdentity") -> bool:
        """Bit-for-bit the same file (False when either sha256 is unknown)."""
        return self.sha256 is not None and self.sha256 == other.sha256

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, "sha256": self.sha256}


def _split_stem(stem: str) -> tuple[Optional[str], Optional[str]]:
    """"campp-fp32" -> ("campp", "fp32"); ("ecapa", None) for "ecapa"; (None, None) for anything else."""
    if stem in KNOWN_MODELS:
        return stem, None
    name, _, precision = stem.rpartition("-")
    if name in KNOWN_MODELS and precision in PRECISIONS:
        return name, precision
    return None, None


def from_record(value: Any) -> ModelIdentity:
    """The model of a stored profile: the {"name", "precision", "sha256"} record written since models are
    recorded, or what earlier releases wrote there -- the `model:` setting at enrollment ("int8", "fp32",
    a path to an .onnx file) or nothing. Earlier profiles are ECAPA profiles (there was no other model);
    their precision is the setting's ("int8"/"fp32"), a path's file name ("…-fp32.onnx"), else int8."""
    if isinstance(value, Mapping) and isinstance(value.get("name"), str) and value["name"]:
        precision = value.get("precision")
        sha = value.get("sha256")
        return ModelIdentity(str(value["name"])[:64], precision if precision in PRECISIONS else "",
                             sha if isinstance(sha, str) and len(sha) == 64 else None)
    if isinstance(value, str) and value:
        if value in PRECISIONS:
            return ModelIdentity(LEGACY_MODEL, value)
        if value in KNOWN_MODELS:
            return ModelIdentity(value, LEGACY_PRECISION)
        name, precision = _split_stem(Path(value).stem)
        if name is not None:
            return ModelIdentity(name, precision or LEGACY_PRECISION)
        return ModelIdentity(LEGACY_MODEL, "fp32" if "fp32" in Path(value).name else LEGACY_PRECISION)
    return ModelIdentity(LEGACY_MODEL, LEGACY_PRECISION)


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a model file, computed once per (path, size, mtime) -- a reload of the same file is free."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def of_model_file(path: Path, metadata: Mapping[str, str], name: Optional[str] = None,
                  precision: Optional[str] = None) -> ModelIdentity:
    """The identity of a loaded .onnx file. The name is the one asked for (a model chosen by name), else
    the file's `model` metadata (builds since CAM++ stamp it), else its file name ("ecapa-int8.onnx"), else
    "ecapa" for our own earlier builds (they carry ECAPA's `architecture`), else the file's stem."""
    path = Path(path)
    stem_name, stem_precision = _split_stem(path.stem)
    meta_name = metadata.get("model")
    if name is None or name not in KNOWN_MODELS:
        if meta_name:
            name = str(meta_name)
        elif stem_name is not None:
            name = stem_name
        elif "ECAPA" in str(metadata.get("architecture", "")):
            name = LEGACY_MODEL
        else:
            name = path.stem
    variant = metadata.get("variant")
    precision = precision or (variant if variant in PRECISIONS else None) or stem_precision or ""
    return ModelIdentity(name, precision, file_sha256(path))
