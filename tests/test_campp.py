"""CAM++: our torch-free build against the torch reference (../shared/models/campp-zh-en-common-advanced),
its int8 model against its fp32 model, and how models are named, found and fed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeverify.core.audio import read_audio
from edgeverify.core.embedder import Embedder
from edgeverify.core.features import FBANK_KALDI, front_end, normalized_features
from edgeverify.core.metrics import compute_eer
from edgeverify.core.model_store import (DEFAULT_MODEL, MODELS, cohort_path, load_manifest, parse_model,
                                         resolve_model)
from edgeverify.errors import ModelError

SETS = ("dev", "dev8k", "native8k")


@pytest.fixture(scope="module")
def campp_fp32(built_model) -> Embedder:  # noqa: ANN001
    return Embedder(built_model("campp", "fp32"))


@pytest.fixture(scope="module")
def campp_int8(built_model) -> Embedder:  # noqa: ANN001
    return Embedder(built_model("campp", "int8"))


def _reference(speech_dir: Path, name: str):
    path = speech_dir.parent.parent / "models" / "campp-zh-en-common-advanced" / "reference" / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"reference {path} missing")
    return np.load(path)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


# --- naming, lookup, front end (no model needed) ---------------------------------------------------------


def test_model_settings_parse() -> None:
    assert parse_model("campp") == ("campp", "int8")
    assert parse_model("ecapa", "fp32") == ("ecapa", "fp32")
    assert parse_model("campp-fp32") == ("campp", "fp32")
    assert parse_model("int8") == (DEFAULT_MODEL, "int8")  # the 0.1 setting: the default model
    assert parse_model("/some/model.onnx") is None
    for bad in (("campp", "int4"), ("int8", "fp32"), ("campp-fp32", "int8")):
        with pytest.raises(ModelError):
            parse_model(*bad)


def test_resolve_model_finds_each_model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEVERIFY_MODEL_DIR", str(tmp_path))
    for name in MODELS:
        for precision in ("int8", "fp32"):
            (tmp_path / f"{name}-{precision}.onnx").write_bytes(b"x")
    assert resolve_model("campp", "fp32") == tmp_path / "campp-fp32.onnx"
    assert resolve_model("ecapa") == tmp_path / "ecapa-int8.onnx"
    assert resolve_model("fp32") == tmp_path / f"{DEFAULT_MODEL}-fp32.onnx"
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "nope.onnx"))


def test_cohort_belongs_to_its_model(tmp_path: Path) -> None:
    """Never another model's cohort: fp32 borrows its own model's int8 cohort only."""
    (tmp_path / "cohort-ecapa-int8.json").write_text("{}")
    assert cohort_path(tmp_path / "campp-int8.onnx") == tmp_path / "cohort-campp-int8.json"
    assert cohort_path(tmp_path / "campp-fp32.onnx") == tmp_path / "cohort-campp-int8.json"
    (tmp_path / "cohort-campp-fp32.json").write_text("{}")
    assert cohort_path(tmp_path / "campp-fp32.onnx") == tmp_path / "cohort-campp-fp32.json"


def test_front_end_comes_from_model_metadata() -> None:
    kaldi = front_end({"features": '{"type": "%s"}' % FBANK_KALDI})
    assert front_end({}) is normalized_features  # models built before the metadata named a type: ECAPA
    wave = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    assert kaldi(wave).shape == (98, 80)  # Kaldi snip_edges framing, not SpeechBrain's centred frames (101)
    with pytest.raises(ModelError, match="front end"):
        front_end({"features": '{"type": "mfcc"}'})
    with pytest.raises(ModelError):
        front_end({"features": "not json"})


def test_every_model_has_a_complete_manifest() -> None:
    for name in MODELS:
        m = load_manifest(name)
        assert {"license", "source", "calibration", "default_threshold"} <= set(m)
        assert len(m["source"]["sha256"]) == 64
        assert set(m["default_threshold"]) == {"int8", "fp32"}


# --- the graph emitter ----------------------------------------------------------------------------------


def _checkpoint() -> dict:
    from edgeverify.build.checkpoint import load_state_dict

    for directory in (resolve_model("campp", "fp32").parent / ".cache",):
        path = directory / load_manifest("campp")["source"]["checkpoint_name"]
        if path.is_file():
            return load_state_dict(path)
    pytest.skip("CAM++ checkpoint not cached beside the model")


def test_checkpoint_reader_loads_campp(campp_fp32: Embedder) -> None:
    state = _checkpoint()
    assert len(state) == 937
    assert sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked")) == 6_930_720
    assert state["head.conv1.weight"].shape == (32, 1, 3, 3)


def test_emitter_refuses_a_checkpoint_that_is_not_campp(campp_fp32: Embedder) -> None:
    from edgeverify.build.campp_graph import build_campp_model

    state = _checkpoint()
    missing = dict(state)
    del missing["xvector.block2.tdnnd7.cam_layer.linear2.bias"]
    with pytest.raises(ModelError, match="missing tensor 'xvector.block2.tdnnd7"):
        build_campp_model(missing)
    extra = {**state, "xvector.block4.tdnnd1.linear1.weight": np.zeros((128, 512, 1), np.float32)}
    with pytest.raises(ModelError, match="does not use"):
        build_campp_model(extra)


# --- parity with the torch reference ---------------------------------------------------------------------


@pytest.mark.parametrize("subset", SETS)
def test_fp32_equals_torch_on_the_reference_features(speech_dir: Path, campp_fp32: Embedder, subset: str) -> None:
    """The network alone: the reference's own fbank in, its embedding out (every layer, any length)."""
    ref = _reference(speech_dir, subset)
    index = [str(f) for f in ref["files"]].index(str(ref["fbank_file"]))
    ours = campp_fp32.embed_features(ref["fbank"].astype(np.float32))
    assert float(_unit(ours) @ _unit(ref["embeddings"][index])) >= 0.99999
    assert np.allclose(ours, ref["embeddings"][index], atol=1e-3 * float(np.abs(ref["embeddings"][index]).max()))


@pytest.mark.slow
def test_fp32_embeddings_equal_torch(speech_dir: Path, campp_fp32: Embedder) -> None:
    """Audio to embedding (our decoder, resampler, Kaldi fbank and graph) on a spread of files of each set."""
    cosines = []
    for subset, step in (("dev", 40), ("dev8k", 45), ("native8k", 40)):
        ref = _reference(speech_dir, subset)
        for i in range(0, len(ref["files"]), step):
            ours = campp_fp32.embed(read_audio(speech_dir / subset / str(ref["files"][i])).samples)
            cosines.append(float(ours @ _unit(ref["embeddings"][i])))
    assert len(cosines) >= 27
    assert min(cosines) >= 0.9999, cosines


@pytest.mark.slow
def test_int8_tracks_fp32(speech_dir: Path, campp_int8: Embedder) -> None:
    """int8 on a sample of dev: close to fp32 per clip (the torch reference stands in for our fp32, which
    equals it to 1e-5), and EER on the trials among them near the reference's (the full sets are measured
    with `edgeverify eval`; docs/models.md)."""
    ref = _reference(speech_dir, "dev")
    files = [str(f) for f in ref["files"]]
    emb, cosines = {}, []
    for i in range(0, len(files), 4):
        emb[files[i]] = campp_int8.embed(read_audio(speech_dir / "dev" / files[i]).samples)
        cosines.append(float(emb[files[i]] @ _unit(ref["embeddings"][i])))
    ours, theirs, labels = [], [], []
    for line, score, label in zip(open(speech_dir / "dev" / "trials.txt"), ref["scores"], ref["labels"]):
        _, a, b = line.split()
        if a in emb and b in emb:
            ours.append(float(emb[a] @ emb[b]))
            theirs.append(float(score))
            labels.append(int(label))
    assert float(np.mean(cosines)) >= 0.99 and min(cosines) >= 0.9, (np.mean(cosines), min(cosines))
    labels_a = np.array(labels)
    assert len(ours) > 200 and labels_a.sum() > 40
    eer_ours, eer_ref = compute_eer(np.array(ours), labels_a)[0], compute_eer(np.array(theirs), labels_a)[0]
    assert eer_ours * 100 <= eer_ref * 100 + 1.5, (eer_ours, eer_ref)


def test_short_input_gives_a_finite_embedding(campp_int8: Embedder) -> None:
    """One frame after the stride-2 layer (the std over time has no spread) must not give NaN."""
    wave = (0.1 * np.random.default_rng(2).standard_normal(560)).astype(np.float32)  # 2 fbank frames
    try:
        vector = campp_int8.embed(wave)
    except ModelError:  # an all-zero ReLU output is refused, never returned
        return
    assert np.all(np.isfinite(vector))
