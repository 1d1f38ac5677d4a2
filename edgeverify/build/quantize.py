"""Static int8 quantisation (QDQ) of the fp32 graphs with onnxruntime's quantiser, one plan per model.

Scheme (chosen by measurement, see README "Model"): uint8 activations with ranges at the 99.999th
percentile of calibration activations (mean cosine to fp32 0.9972, against 0.9946 for MinMax ranges),
int8 per-channel weights with ``reduce_range`` (7-bit weights). The 7-bit weights keep every u8 x s8 pair sum inside
int16, so the result is the same on CPUs whose int8 kernels saturate (x86 AVX2 without VNNI: vpmaddubsw) and
on those that do not (VNNI, ARM dot product, ARM without dot product).

Calibration needs activation ranges. They come either from audio the user has (``calibration_audio``) or
from the ranges we ship in ``models/calibration.json`` (numbers computed from the shared dev recordings;
no audio ever goes into git).
"""

from __future__ import annotations

import logging
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from ..errors import ModelError

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
# Quantised: every conv but the first (~96 % of the MACs), each with the ReLU after it (the quantiser folds a
# ReLU into its conv's output range: one pass less, and a [0, max] uint8 grid twice as fine as [min, max]),
# and the attention's frame-level 3072 -> 128 MatMul (INT8_MATMULS: 2 % of the MACs, 5 % of the time in
# float, 6x faster int8). It reads the int8 mfa conv's own ReLU output, with that layer's BatchNorm folded into
# its weights (ecapa_graph.attentive_pooling): the normed frames themselves have channels of very different
# scale that per-tensor uint8 cannot hold (cosine to fp32 drops to 0.80). The 128 -> 3072 logits MatMul stays
# float: int8 ran no faster (its uint8 output must be dequantised again). Every other MatMul is a GEMV (sums over
# time) or a per-utterance row and stays float, as do the squeeze-excitation gates and the pooling statistics.
# Also float: the first conv, whose 80-dim dB input loses the most to uint8 (mean cosine to fp32 0.9941 with
# it int8 against 0.9974, on 60 dev clips) and which runs no faster in int8 (80 input channels).
QUANTIZED_OPS = ["Conv", "Relu", "MatMul"]
FLOAT_NODES = ["blocks.0.conv.conv"]
INT8_MATMULS = ("asp.tdnn.conv.conv",)


CALIBRATION_FRAMES = 301  # 3 s windows: the histogram calibrator needs equal shapes
CALIBRATION_PERCENTILE = 99.999


def iter_calibration_features(files: Sequence[Path], windows_per_file: int = 2,
                              front_end: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> Iterator[np.ndarray]:
    """(1, 301, 80) feature windows (3 s, the typical request) from each readable file."""
    from ..core.audio import read_audio
    from ..errors import AudioError
    from ..core.features import normalized_features

    features = front_end or normalized_features
    for path in files:
        try:
            audio = read_audio(path, max_seconds=3600)
        except AudioError as exc:
            log.warning("calibration: skipping %s: %s", path, exc.message)
            continue
        feats = features(audio.samples)
        for start in range(0, feats.shape[0] - CALIBRATION_FRAMES + 1, CALIBRATION_FRAMES)[:windows_per_file]:
            yield feats[None, start : start + CALIBRATION_FRAMES]


def pick_calibration_files(root: Path, limit: int = 48) -> List[Path]:
    """Up to ``limit`` audio files spread over the speakers (sub-folders) under ``root``."""
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ModelError(f"no .wav or .flac files under {root} for calibration")
    by_dir: dict = {}
    for path in files:
        by_dir.setdefault(path.parent, []).append(path)
    picked: List[Path] = []
    while len(picked) < limit and any(by_dir.values()):
        for key in sorted(by_dir, key=str):
            if by_dir[key] and len(picked) < limit:
                picked.append(by_dir[key].pop(0))
    return picked


class _FeatureReader:
    """onnxruntime CalibrationDataReader over precomputed feature arrays."""

    def __init__(self, features: Iterable[np.ndarray], progress: Optional[Callable[[int], None]] = None) -> None:
        self._iter = iter(features)
        self._count = 0
        self._progress = progress

    def get_next(self) -> Optional[dict]:
        feats = next(self._iter, None)
        if feats is None:
            return None
        self._count += 1
        if self._progress:
            self._progress(self._count)
        return {"features": feats.astype(np.float32)}

    def rewind(self) -> None:  # part of the reader protocol; one pass is all the calibrator needs
        pass


@dataclass(frozen=True)
class Plan:
    """How one model is quantised: which nodes run int8 (chosen per layer by measurement)."""

    description: str
    op_types: Sequence[str]
    # (fp32 graph) -> (nodes_to_quantize or None for "every node of op_types", nodes_to_exclude)
    select: Callable[[object], tuple]
    extra: Dict[str, object] = field(default_factory=dict)
    front_end: str = "fbank"
    # Drop the shapes the quantiser infers (graph.value_info). It names every frame count it cannot
    # relate a fresh symbol ("unk__17", "unk__63", ...), and onnxruntime plans activation memory from
    # those shapes: with CAM++'s 54 growing concatenations it could reuse no buffer, so a 10 s clip held
    # ~80 MB of activations instead of ~20 (8 MB per second of speech against fp32's 2) and every one
    # was a fresh mapping (a third of the run in page faults). Without them onnxruntime infers the shapes
    # itself from the input, as it does for the fp32 graph. Same kernels, bit-identical embeddings.
    # ECAPA's graph has no such chain (measured: no change), so its bytes are left as they are.
    drop_inferred_shapes: bool = False


def _ecapa_select(graph) -> tuple:
    float_matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and n.name not in INT8_MATMULS]
    return None, list(FLOAT_NODES) + float_matmuls


ECAPA_PLAN = Plan(
    "QDQ static; uint8 activations (99.999th percentile ranges), int8 per-channel 7-bit weights; "
    "Conv+ReLU and the attention's frame-level 3072->128 MatMul",
    QUANTIZED_OPS, _ecapa_select,
)


def campp_int8_nodes(graph) -> List[str]:
    """CAM++ nodes that run int8 (see CAMPP_PLAN): every frame-level layer with weights but those in
    CAMPP_FLOAT_NODES, and the ReLU right after an int8 conv (folded into its output range)."""
    picked = []
    for node in graph.node:
        name = node.name
        if name in CAMPP_FLOAT_NODES:
            continue
        if node.op_type == "Conv" and (name.startswith("head.") or name == "xvector.tdnn.linear"):
            picked.append(node)
        elif node.op_type == "MatMul" and (
            (name.endswith(".linear1") and ".cam_layer." not in name)
            or name.endswith(".linear_local")
            or name.startswith("xvector.transit")
        ):
            picked.append(node)
    consumers: Dict[str, List] = {}
    for node in graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    relus = []
    for node in picked:
        after = consumers.get(node.output[0], [])
        if node.op_type == "Conv" and len(after) == 1 and after[0].op_type == "Relu":
            relus.append(after[0].name)
    return [n.name for n in picked] + relus


# CAM++, measured on 216 clips of dev, dev8k and native8k (mean cosine of int8 to fp32 with only that
# group int8; docs/models.md): head layer1 0.9977, head layer2 + last conv 0.9972, TDNN layer 0.9982, the
# 52 bottleneck 1x1 layers 0.9982, the 52 dilated 3-tap layers 0.9994, transition 1/2/3 0.9979/0.9992/0.9983.
# Kept float (CAMPP_FLOAT_NODES), by that measure and the cost of each in float: the head's first conv (1
# input channel: no faster int8, its input is the raw fbank), the head's second stage and last conv (0.85 M
# MACs per frame), the TDNN layer (0.1 M) and transitions 1 and 3 (0.33 M). All int8: mean cosine 0.9898,
# ~17-19 ms per 3 s clip; with these float: 0.9958 (all 1079 clips), ~21-23 ms (without the TDNN layer
# float: 0.9946). Also float: the per-segment masking layers and every sum
# over time (tiny), the embedding layer (once per clip). MatMul outputs stay float (they feed a bias add or
# the shifted sums; onnxruntime runs them as MatMulIntegerToFloat): no requantisation before the bias.
CAMPP_FLOAT_NODES: Sequence[str] = (
    "head.conv1", "head.layer2.0.conv1", "head.layer2.0.conv2", "head.layer2.0.shortcut.0", "head.layer2.1.conv1",
    "head.layer2.1.conv2", "head.conv2", "xvector.tdnn.linear", "xvector.transit1.linear", "xvector.transit3.linear",
)
CAMPP_PLAN = Plan(
    "QDQ static; uint8 activations (99.999th percentile ranges), int8 per-channel 7-bit weights; "
    "the head's first residual stage, every dense layer's 1x1 and 3-tap layers, the second transition; "
    "MatMul outputs float",
    ["Conv", "MatMul", "Relu"],
    lambda graph: (campp_int8_nodes(graph), []),
    {"OpTypesToExcludeOutputQuantization": ["MatMul"]},
    front_end="kaldi_fbank",
    drop_inferred_shapes=True,
)
PLANS = {"ecapa": ECAPA_PLAN, "campp": CAMPP_PLAN}


def plan_for(model: str) -> Plan:
    if model not in PLANS:
        raise ModelError(f"no quantisation plan for model {model!r}")
    return PLANS[model]


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    calibration_cache: Path,
    calibration_files: Optional[Sequence[Path]] = None,
    progress: Optional[Callable[[int], None]] = None,
    model: str = "ecapa",
    plan: Optional[Plan] = None,
) -> None:
    """Write the int8 QDQ model. Ranges come from ``calibration_cache`` when it exists, else are measured
    on ``calibration_files`` and saved there."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    import onnx

    from ..core.features import front_end

    plan = plan or plan_for(model)
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    include, exclude = plan.select(graph)
    reader = None
    if calibration_files is not None:
        features = front_end({"features": '{"type": "%s"}' % plan.front_end})
        reader = _FeatureReader(iter_calibration_features(calibration_files, front_end=features), progress)
    elif not Path(calibration_cache).exists():
        raise ModelError(f"no calibration ranges at {calibration_cache} and no calibration audio given")
    quantize_static(
        str(fp32_path),
        str(int8_path),
        calibration_data_reader=reader,
        calibration_cache_path=str(calibration_cache),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile,
        op_types_to_quantize=list(plan.op_types),
        nodes_to_quantize=include,
        nodes_to_exclude=exclude,
        extra_options={"WeightSymmetric": True, "CalibPercentile": CALIBRATION_PERCENTILE, **plan.extra},
    )
    if plan.drop_inferred_shapes:
        quantized = onnx.load(str(int8_path))
        del quantized.graph.value_info[:]
        onnx.save(quantized, str(int8_path))
