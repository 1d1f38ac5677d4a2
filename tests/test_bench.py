"""Bench figures that are counts, not timings: the MAC count behind the int8 floor, the CPU feature probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeverify.tools.bench import count_macs, cpu_int8_features

FRAME_LEVEL_MATMULS = ("asp.tdnn.conv.conv.weight_t", "asp.conv.conv.weight_t")
UTTERANCE_LEVEL = ("se_block", "asp.tdnn.conv.mean", "asp.tdnn.conv.std", "fc.conv")  # run once per clip


@pytest.fixture(scope="module")
def fp32_model() -> Path:
    """ECAPA fp32 whatever the default model is (the layer names below are ECAPA's)."""
    import os

    from edgeverify.core.model_store import resolve_model
    from edgeverify.errors import ModelError

    try:
        return resolve_model("ecapa-fp32")
    except ModelError as exc:
        if os.environ.get("EDGEVERIFY_REQUIRE_MODEL") == "1":
            pytest.fail(f"ecapa fp32 model required but missing: {exc.message}")
        pytest.skip(exc.message)


def test_count_macs_matches_layer_weights(fp32_model: Path) -> None:
    """Frame-level layers (the convs, the attention's two 1x1 layers) cost their weight count per frame;
    the per-utterance rest (SE gates, attention context, final layer, sums over time) is under 1 %."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_model))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv" and not any(u in n.name for u in UTTERANCE_LEVEL)}
    per_frame = sum(weights[name].size for name in conv_weights) + sum(weights[name].size for name in FRAME_LEVEL_MATMULS)
    for frames in (300, 1000):
        assert count_macs(fp32_model, frames) == pytest.approx(per_frame * frames, rel=0.01)


def test_cpu_features_name_a_kernel_path() -> None:
    info = cpu_int8_features()
    assert info["int8_path"] != "unknown"
    assert all(isinstance(v, bool) for v in info["flags"].values())
    assert isinstance(info["cores"], int)


def test_count_macs_resolves_shapes_computed_at_run_time(tmp_path: Path) -> None:
    """A MatMul whose operand is built from the input's length (as CAM++'s segment pooling is) has no static
    shape; its MACs come from a real run. Here: (1,T,4)x(4,6) plus a (1,1,T)x(1,T,6) sum over time."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["frames"], axis=0),
        helper.make_node("Range", ["zero", "frames", "one"], ["steps"]),
        helper.make_node("Cast", ["steps"], ["ramp"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["ramp", "row"], ["weights"]),
        helper.make_node("MatMul", ["weights", "y"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "frames", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(np.ones((4, 6), np.float32), "w"),
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array([1, 1, -1], np.int64), "row"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, str(path))
    for frames in (300, 1000):
        assert count_macs(path, frames) == frames * 4 * 6 + frames * 6
