"""A checkout updated by `git pull` must rebuild stale models: the build record and its fingerprint, per model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeverify.build.model_build import build_fingerprint, build_record_name, built_models_current
from edgeverify.core.model_store import MODELS, REPO_MODELS, load_manifest


def _fake_build(tmp_path: Path, name: str) -> Path:
    calibration = load_manifest(name)["calibration"]
    shutil.copyfile(REPO_MODELS / calibration, tmp_path / calibration)
    files = MODELS[name].files().values()
    for file in files:
        (tmp_path / file).write_bytes(b"onnx")
    record = {"fingerprint": build_fingerprint(tmp_path, name), "bytes": {n: 4 for n in files}}
    (tmp_path / build_record_name(name)).write_text(json.dumps(record))
    return tmp_path


@pytest.mark.parametrize("name", sorted(MODELS))
def test_current_build_is_kept(tmp_path: Path, name: str) -> None:
    assert built_models_current(_fake_build(tmp_path, name), name) is None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_changed_calibration_or_files_make_the_build_stale(tmp_path: Path, name: str) -> None:
    out = _fake_build(tmp_path, name)
    files = MODELS[name].files()
    calibration = out / load_manifest(name)["calibration"]
    calibration.write_text(calibration.read_text().replace("}", ', "extra": 1}', 1))
    assert "changed" in built_models_current(out, name)

    out = _fake_build(tmp_path, name)
    (out / files["int8"]).write_bytes(b"other onnx")
    assert "differ" in built_models_current(out, name)

    (out / build_record_name(name)).unlink()
    assert "older edgeverify" in built_models_current(out, name)
    (out / files["fp32"]).unlink()
    assert built_models_current(out, name) == "models missing"


def test_models_are_fingerprinted_apart(tmp_path: Path) -> None:
    """A change to one model's graph code or ranges must not rebuild the other (and the records differ)."""
    _fake_build(tmp_path, "campp")
    _fake_build(tmp_path, "ecapa")
    assert build_fingerprint(tmp_path, "campp") != build_fingerprint(tmp_path, "ecapa")
    (tmp_path / load_manifest("campp")["calibration"]).write_text("{}")
    assert built_models_current(tmp_path, "ecapa") is None
    assert "changed" in built_models_current(tmp_path, "campp")
