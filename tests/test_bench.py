"""Bench figures that are counts, not timings: the MAC count behind the int8 floor, the CPU feature probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeverify.bench import count_macs, cpu_int8_features

FRAME_LEVEL_MATMULS = ("asp.tdnn.conv.conv.weight_t", "asp.conv.conv.weight_t")


def test_count_macs_matches_layer_weights(fp32_model: Path) -> None:
    """Frame-level layers (every Conv, the attention's two 1x1 layers) cost their weight count per frame;
    the per-utterance rest (SE gates, context, final layer, time sums) is under 1 %."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_model))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    per_frame = sum(weights[name].size for name in conv_weights) + sum(weights[name].size for name in FRAME_LEVEL_MATMULS)
    for frames in (300, 1000):
        assert count_macs(fp32_model, frames) == pytest.approx(per_frame * frames, rel=0.01)


def test_cpu_features_name_a_kernel_path() -> None:
    info = cpu_int8_features()
    assert info["int8_path"] != "unknown"
    assert all(isinstance(v, bool) for v in info["flags"].values())
    assert isinstance(info["cores"], int)
