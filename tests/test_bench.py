"""Bench figures that are counts, not timings: the MAC count behind the int8 floor, the CPU feature probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeverify.tools.bench import count_macs, cpu_int8_features

FRAME_LEVEL_MATMULS = ("asp.tdnn.conv.conv.weight_t", "asp.conv.conv.weight_t")
UTTERANCE_LEVEL = ("se_block", "asp.tdnn.conv.mean", "asp.tdnn.conv.std", "fc.conv")  # run once per clip


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
