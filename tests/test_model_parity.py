"""The built ECAPA models against SpeechBrain's own reference embeddings, features and scores (../shared).
CAM++ has its own: tests/test_campp.py."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeverify.core.audio import read_audio
from edgeverify.build.checkpoint import load_state_dict
from edgeverify.core.embedder import Embedder
from edgeverify.errors import ModelError
from edgeverify.core.features import normalized_features
from edgeverify.core.metrics import compute_eer

SETS = ("dev", "dev8k", "native8k")


@pytest.fixture(scope="module")
def fp32_model(built_model) -> Path:  # noqa: ANN001 -- ECAPA's, whatever the default model is
    return built_model("ecapa", "fp32")


@pytest.fixture(scope="module")
def int8_model(built_model) -> Path:  # noqa: ANN001
    return built_model("ecapa", "int8")


def _reference(speech_dir: Path, name: str):
    path = speech_dir.parent.parent / "models" / "spkrec-ecapa-voxceleb" / "reference" / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"reference {path} missing")
    return np.load(path)


@pytest.mark.parametrize("subset", SETS)
def test_features_match_speechbrain_fbank(speech_dir: Path, subset: str) -> None:
    ref = _reference(speech_dir, subset)
    audio = read_audio(speech_dir / subset / str(ref["fbank_file"]))
    ours = normalized_features(audio.samples)
    assert ours.shape == ref["fbank"].shape
    assert float(np.abs(ours - ref["fbank"]).max()) <= 0.01


def test_fp32_embeddings_match_speechbrain(speech_dir: Path, fp32_model: Path) -> None:
    ref = _reference(speech_dir, "dev")
    embedder = Embedder(fp32_model)
    cosines = []
    for i in range(0, len(ref["files"]), 40):  # 17 files over all sources of dev
        audio = read_audio(speech_dir / "dev" / str(ref["files"][i]))
        ours = embedder.embed(audio.samples)
        theirs = ref["embeddings"][i] / np.linalg.norm(ref["embeddings"][i])
        cosines.append(float(ours @ theirs))
    assert min(cosines) >= 0.999, cosines


def test_int8_scores_track_speechbrain(speech_dir: Path, int8_model: Path) -> None:
    """int8 on trials among a sample of dev files: scores close to SpeechBrain's, and EER on the same trials
    within a small margin of SpeechBrain's (the full sets run in `edgeverify eval`)."""
    ref = _reference(speech_dir, "dev")
    files = [str(f) for f in ref["files"]]
    sample = set(files[::4])
    embedder = Embedder(int8_model)
    emb = {f: embedder.embed(read_audio(speech_dir / "dev" / f).samples) for f in sorted(sample)}
    ours, theirs, labels = [], [], []
    for line, score, label in zip(open(speech_dir / "dev" / "trials.txt"), ref["scores"], ref["labels"]):
        _, a, b = line.split()
        if a in emb and b in emb:
            ours.append(float(emb[a] @ emb[b]))
            theirs.append(float(score))
            labels.append(int(label))
    ours_a, theirs_a, labels_a = np.array(ours), np.array(theirs), np.array(labels)
    assert len(ours) > 300 and labels_a.sum() > 50
    assert float(np.abs(ours_a - theirs_a).mean()) < 0.02
    eer_ours, _ = compute_eer(ours_a, labels_a)
    eer_ref, _ = compute_eer(theirs_a, labels_a)
    assert abs(eer_ours - eer_ref) * 100 < 1.5, (eer_ours, eer_ref)


def test_checkpoint_reader_loads_real_checkpoint(int8_model: Path) -> None:
    ckpt = int8_model.parent / ".cache" / "embedding_model.ckpt"
    if not ckpt.is_file():
        pytest.skip("downloaded checkpoint not cached beside the model")
    state = load_state_dict(ckpt)
    assert len(state) == 231
    assert sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked")) == 20_805_952
    assert state["blocks.0.conv.conv.weight"].shape == (1024, 80, 5)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_checkpoint_reader_refuses_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"x": _Evil()}, protocol=2))
    with pytest.raises(ModelError, match="not a plain tensor state_dict"):
        load_state_dict(path)


def test_checkpoint_reader_refuses_non_zip(tmp_path: Path) -> None:
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"not a zip")
    with pytest.raises(ModelError):
        load_state_dict(path)
