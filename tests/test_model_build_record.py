"""A checkout updated by `git pull` must rebuild stale models: the build record and its fingerprint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgeverify.build.model_build import BUILD_RECORD, build_fingerprint, built_models_current
from edgeverify.core.model_store import MODEL_FILES, REPO_MODELS


def _fake_build(tmp_path: Path) -> Path:
    shutil.copyfile(REPO_MODELS / "calibration.json", tmp_path / "calibration.json")
    for name in MODEL_FILES.values():
        (tmp_path / name).write_bytes(b"onnx")
    record = {"fingerprint": build_fingerprint(tmp_path), "bytes": {n: 4 for n in MODEL_FILES.values()}}
    (tmp_path / BUILD_RECORD).write_text(json.dumps(record))
    return tmp_path


def test_current_build_is_kept(tmp_path: Path) -> None:
    assert built_models_current(_fake_build(tmp_path)) is None


def test_changed_calibration_or_files_make_the_build_stale(tmp_path: Path) -> None:
    out = _fake_build(tmp_path)
    calibration = out / "calibration.json"
    calibration.write_text(calibration.read_text().replace("}", ', "extra": 1}', 1))
    assert "changed" in built_models_current(out)

    out = _fake_build(tmp_path)
    (out / MODEL_FILES["int8"]).write_bytes(b"other onnx")
    assert "differ" in built_models_current(out)

    (out / BUILD_RECORD).unlink()
    assert "older edgeverify" in built_models_current(out)
    (out / MODEL_FILES["fp32"]).unlink()
    assert built_models_current(out) == "models missing"
