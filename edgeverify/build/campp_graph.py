"""Emit 3D-Speaker's CAM++ (Wang et al., Interspeech 2023) as an ONNX graph from a numpy state_dict.

Our own definition of the network, written from the paper and the parameter names of the
``campplus_cn_en_common`` checkpoint, which it must load with no missing or unexpected key. Input: the
mean-normalised 80-dim Kaldi fbank (batch, frames, 80); output: the raw 192-dim embedding (batch, 192).

The network:
- a 2-D convolutional head (FCM): a 3x3 conv and four residual blocks of 32 channels that halve the
  frequency axis three times (80 -> 10), flattened to 320 channels per frame;
- a 5-tap TDNN layer with stride 2 (half the frame rate from here on);
- three densely connected blocks (12, 24, 16 layers; 32 new channels each): each layer normalises all
  channels so far (BatchNorm + ReLU), projects them to 128 (1x1), normalises again, and runs a 3-tap
  dilated conv whose output is gated by context-aware masking: a sigmoid gate from the utterance mean
  plus the mean of the 100-frame segment the frame is in;
- transition layers (BatchNorm + ReLU + 1x1 halving the channels), statistics pooling (mean and
  unbiased standard deviation over time) and a dense 1024 -> 192 layer with BatchNorm and ReLU.

Exact rewrites (same function, fewer or cheaper ops; the float rounding differs only):
- every BatchNorm that follows a linear layer is folded into that layer's weights and bias (the head's
  convs, the TDNN layer, each dense layer's 128-channel bottleneck, the last transition with the output
  norm, the embedding layer); a BatchNorm that precedes its ReLU on a concatenation stays a multiply-add;
- the trunk runs time-major (batch, frames, channels) from the TDNN layer on: 1x1 convs are MatMuls, the
  dilated 3-tap conv is one MatMul to 3 x 32 outputs summed at three time shifts, concatenation grows
  the last axis; there is no Transpose between layers;
- BatchNorm + ReLU before a linear layer is rescaled per channel against that layer's weights (an
  exact range equalisation for int8, see EQUALIZE_ALPHA);
- every mean over time is a MatMul: the context of all layers comes from one (segments x frames)
  matrix holding 1/segment length + 1/frames, built once per utterance; the segment gates are
  expanded back to frames by a Gather.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from .onnx_graph import GraphBuilder

BN_EPS = 1e-5
N_MELS = 80
EMBEDDING_DIM = 192
HEAD_CHANNELS = 32
INIT_CHANNELS = 128
GROWTH = 32
BOTTLENECK = 128
SEGMENT = 100  # frames per context segment (after the stride-2 TDNN layer: 2 s)
BLOCKS = ((12, 3, 1), (24, 3, 2), (16, 3, 2))  # (layers, kernel, dilation)
# Data-free range equalisation for int8 (exact in float): a BatchNorm + ReLU feeding a linear layer can
# scale its channel i by any c_i > 0 if the layer's weight column i is divided by c_i. With c_i =
# (max|W[:, i]| / range_i) ** EQUALIZE_ALPHA, where range_i (mean + EQUALIZE_SIGMAS std of the normed
# channel) comes from the BatchNorm's own statistics, weights and activations share the quantisation
# difficulty: mean cosine int8 to fp32 0.9881 -> 0.9898 (docs/models.md).
EQUALIZE_ALPHA = 0.5
EQUALIZE_SIGMAS = 3.0


def bn_affine(g: GraphBuilder, prefix: str, affine: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Inference BatchNorm as (scale, shift) per channel (float64 for folding)."""
    mean = g.param(f"{prefix}.running_mean").astype(np.float64)
    var = g.param(f"{prefix}.running_var").astype(np.float64)
    g.used.add(f"{prefix}.num_batches_tracked")
    gamma = g.param(f"{prefix}.weight").astype(np.float64) if affine else np.ones_like(mean)
    beta = g.param(f"{prefix}.bias").astype(np.float64) if affine else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + BN_EPS)
    return scale, beta - mean * scale


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


class _CamppBuilder(GraphBuilder):
    architecture = "CAM++ (3D-Speaker campplus)"

    # --- the 2-D head ----------------------------------------------------------------------------------

    def conv2d_bn(self, x: str, conv: str, bn: str, stride: Tuple[int, int] = (1, 1), relu: bool = True) -> str:
        weight = self.param(f"{conv}.weight").astype(np.float64)
        scale, shift = bn_affine(self, bn)
        k = weight.shape[-1]
        pad = k // 2
        y = self.op(
            "Conv",
            [x, self.const(f"{conv}.weight", _f32(weight * scale[:, None, None, None])), self.const(f"{conv}.bias", _f32(shift))],
            node=conv, kernel_shape=[k, k], strides=list(stride), pads=[pad, pad, pad, pad],
        )
        return self.op("Relu", [y]) if relu else y

    def res_block(self, x: str, prefix: str, stride: int) -> str:
        y = self.conv2d_bn(x, f"{prefix}.conv1", f"{prefix}.bn1", (stride, 1))
        y = self.conv2d_bn(y, f"{prefix}.conv2", f"{prefix}.bn2", relu=False)
        if f"{prefix}.shortcut.0.weight" in self.state:
            x = self.conv2d_bn(x, f"{prefix}.shortcut.0", f"{prefix}.shortcut.1", (stride, 1), relu=False)
        return self.op("Relu", [self.op("Add", [y, x])])

    def head(self, features: str) -> str:
        """(B, T, 80) -> (B, 320, T): channels x frequency flattened, frames last."""
        x = self.op("Transpose", [features], perm=[0, 2, 1])
        x = self.op("Unsqueeze", [x, self.const("head.unsqueeze_axes", np.array([1], dtype=np.int64))])
        x = self.conv2d_bn(x, "head.conv1", "head.bn1")
        for layer in ("layer1", "layer2"):
            x = self.res_block(x, f"head.{layer}.0", 2)
            x = self.res_block(x, f"head.{layer}.1", 1)
        x = self.conv2d_bn(x, "head.conv2", "head.bn2", (2, 1))
        shape = self.const("head.flat_shape", np.array([0, HEAD_CHANNELS * (N_MELS // 8), -1], dtype=np.int64))
        return self.op("Reshape", [x, shape])

    def tdnn(self, x: str) -> str:
        """The stride-2 5-tap TDNN layer with its BatchNorm folded; returns time-major (B, T', 128)."""
        prefix = "xvector.tdnn"
        weight = self.param(f"{prefix}.linear.weight").astype(np.float64)
        scale, shift = bn_affine(self, f"{prefix}.nonlinear.batchnorm")
        k = weight.shape[-1]
        y = self.op(
            "Conv",
            [x, self.const(f"{prefix}.weight", _f32(weight * scale[:, None, None])), self.const(f"{prefix}.bias", _f32(shift))],
            node=f"{prefix}.linear", kernel_shape=[k], strides=[2], pads=[k // 2, k // 2],
        )
        return self.op("Transpose", [self.op("Relu", [y])], perm=[0, 2, 1])

    # --- time-major helpers ----------------------------------------------------------------------------

    def time_helpers(self, x: str) -> None:
        """Per-utterance constants of the trunk's frame count T': ``time_mean`` (1, 1, T') of 1/T',
        ``time_ones`` (1, 1, T'), ``context`` (S, T') = 1/T' + segment-average rows, and ``segment_of``
        (T',), the segment of each frame (for Gather)."""
        shape = self.op("Shape", [x])
        frames = self.op("Gather", [shape, self.scalar("dim_frames", 1, np.int64)], axis=0)  # scalar
        zero = self.scalar("i64_zero", 0, np.int64)
        one = self.scalar("i64_one", 1, np.int64)
        seg_len = self.scalar("i64_segment", SEGMENT, np.int64)
        frame_ids = self.op("Range", [zero, frames, one])
        self.segment_of = self.op("Div", [frame_ids, seg_len], name="segment_of")
        n_seg = self.op("Div", [self.op("Add", [frames, self.scalar("i64_segment_m1", SEGMENT - 1, np.int64)]), seg_len])
        seg_ids = self.op("Range", [zero, n_seg, one])
        member = self.op("Equal", [self.op("Unsqueeze", [seg_ids, self.const("axes_1", np.array([1], dtype=np.int64))]),
                                   self.op("Unsqueeze", [self.segment_of, self.const("axes_0", np.array([0], dtype=np.int64))])])
        member = self.op("Cast", [member], to=1)  # (S, T') float
        counts = self.op("ReduceSum", [member, self.const("axes_last", np.array([1], dtype=np.int64))], keepdims=1)
        count = self.op("Cast", [frames], to=1)
        inv_frames = self.op("Reciprocal", [count])
        context = self.op("Add", [self.op("Div", [member, counts]), inv_frames], name="context_rows")
        # (T', S): the context as a right-hand factor (see dense_layer); extra nodes are added without
        # renumbering the graph, whose tensor names the shipped int8 ranges refer to
        self.context_t = self.op_multi("Transpose", [context], ["context_cols"], node="context_cols", perm=[1, 0])[0]
        row_shape = self.op("Concat", [self.const("dims_1_1", np.array([1, 1], dtype=np.int64)),
                                       self.op("Unsqueeze", [frames, self.const("axes_0b", np.array([0], dtype=np.int64))])], axis=0)
        ones = self._numpy_helper.from_array(np.array([1.0], dtype=np.float32), name="one")
        self.time_ones = self.op("ConstantOfShape", [row_shape], name="time_ones", value=ones)
        self.time_mean = self.op("Mul", [self.time_ones, inv_frames], name="time_mean")
        self.n_frames = count

    def matmul(self, x: str, weight: np.ndarray, node: str, bias: Optional[np.ndarray] = None) -> str:
        """x (B, T, C_in) @ weight (C_in, C_out) [+ bias]; the MatMul node is named ``node``."""
        y = self.op("MatMul", [x, self.const(f"{node}.weight_t", _f32(weight))], node=node)
        if bias is not None:
            y = self.op("Add", [y, self.const(f"{node}.bias", _f32(bias))])
        return y

    def bn_relu(self, x: str, prefix: str, weight: Optional[np.ndarray] = None) -> Tuple[str, Optional[np.ndarray]]:
        """BatchNorm + ReLU on time-major channels (a multiply-add, then ReLU), and ``weight`` (C_out, C_in)
        of the linear layer reading it, both equalised (see EQUALIZE_ALPHA)."""
        scale, shift = bn_affine(self, prefix)
        if weight is not None and EQUALIZE_ALPHA > 0:
            # relu(c * v) = c * relu(v) for c > 0: channel i's output times c_i, the weight's column i over c_i
            mean, std = self.param(f"{prefix}.running_mean"), np.sqrt(self.param(f"{prefix}.running_var"))
            act = np.maximum(scale * mean + shift + EQUALIZE_SIGMAS * np.abs(scale) * std, 1e-3)
            wmax = np.maximum(np.abs(weight).max(axis=0), 1e-8)
            c = (wmax / act) ** EQUALIZE_ALPHA
            c = c / np.exp(np.mean(np.log(c)))  # overall scale kept
            scale, shift, weight = scale * c, shift * c, weight / c[None, :]
        y = self.op("Mul", [x, self.const(f"{prefix}.scale", _f32(scale))])
        y = self.op("Add", [y, self.const(f"{prefix}.shift", _f32(shift))])
        return self.op("Relu", [y], node=f"{prefix}.relu"), weight

    # --- the dense TDNN trunk --------------------------------------------------------------------------

    def dense_layer(self, x: str, prefix: str, kernel: int, dilation: int) -> str:
        w1 = self.param(f"{prefix}.linear1.weight")[:, :, 0].astype(np.float64)  # (128, C_in)
        h, w1 = self.bn_relu(x, f"{prefix}.nonlinear1.batchnorm", w1)
        scale, shift = bn_affine(self, f"{prefix}.nonlinear2.batchnorm")
        u = self.op("Relu", [self.matmul(h, (w1 * scale[:, None]).T, f"{prefix}.linear1", shift)], node=f"{prefix}.relu2")
        # context-aware masking: gate from (utterance mean + segment mean) of u
        # (B, S, 128) as the transpose of u^T @ context^T: with the frames as the inner dimension of a
        # (S x T') @ (T' x 128) product, onnxruntime split the sum over frames between threads and the
        # result depended on the thread count; this order gives the same bits at any thread count
        u_t = self.op_multi("Transpose", [u], [f"{prefix}.u_t"], node=f"{prefix}.u_t", perm=[0, 2, 1])[0]
        ctx_t = self.op_multi("MatMul", [u_t, self.context_t], [f"{prefix}.ctx_t"], node=f"{prefix}.ctx_t")[0]
        ctx = self.op("Transpose", [ctx_t], perm=[0, 2, 1])
        cam = f"{prefix}.cam_layer"
        g = self.op("Relu", [self.matmul(ctx, self.param(f"{cam}.linear1.weight")[:, :, 0].T, f"{cam}.linear1",
                                         self.param(f"{cam}.linear1.bias"))])
        g = self.op("Sigmoid", [self.matmul(g, self.param(f"{cam}.linear2.weight")[:, :, 0].T, f"{cam}.linear2",
                                            self.param(f"{cam}.linear2.bias"))])
        gate = self.op("Gather", [g, self.segment_of], axis=1)  # (B, T', 32)
        # dilated conv, zero-padded: y[t] = sum_k W_k u[t + (k - c) d] as one MatMul and shifted slices
        w = self.param(f"{cam}.linear_local.weight")  # (32, 128, k)
        out = w.shape[0]
        z = self.matmul(u, np.concatenate([w[:, :, j].T for j in range(kernel)], axis=1), f"{cam}.linear_local")
        half = (kernel - 1) // 2 * dilation
        zp = self.op("Pad", [z, self.const(f"{cam}.pads", np.array([0, half, 0, 0, half, 0], dtype=np.int64))])
        y = None
        for j in range(kernel):
            start, end = j * dilation, j * dilation - 2 * half
            part = self.op("Slice", [
                zp,
                self.const(f"{cam}.start{j}", np.array([start, j * out], dtype=np.int64)),
                self.const(f"{cam}.end{j}", np.array([end if end < 0 else np.iinfo(np.int64).max, (j + 1) * out], dtype=np.int64)),
                self.const(f"{cam}.axes{j}", np.array([1, 2], dtype=np.int64)),
            ])
            y = part if y is None else self.op("Add", [y, part])
        new = self.op("Mul", [y, gate])
        return self.op("Concat", [x, new], axis=2)

    def transit(self, x: str, prefix: str, out_norm: Optional[str] = None) -> str:
        w = self.param(f"{prefix}.linear.weight")[:, :, 0].astype(np.float64)  # (C_out, C_in)
        h, w = self.bn_relu(x, f"{prefix}.nonlinear.batchnorm", w)
        if out_norm is None:
            return self.matmul(h, w.T, f"{prefix}.linear")
        scale, shift = bn_affine(self, out_norm)
        return self.op("Relu", [self.matmul(h, (w * scale[:, None]).T, f"{prefix}.linear", shift)], node=f"{prefix}.out_relu")

    def stats_embedding(self, x: str) -> str:
        """Mean and unbiased std over time, then the dense layer (its BatchNorm folded) and ReLU."""
        mean = self.op("MatMul", [self.time_mean, x])  # (B, 1, C)
        centred = self.op("Sub", [x, mean])
        sq = self.op("MatMul", [self.time_ones, self.op("Mul", [centred, centred])])
        dof = self.op("Max", [self.op("Sub", [self.n_frames, self.scalar("f32_one", 1.0, np.float32)]),
                              self.scalar("f32_one_b", 1.0, np.float32)])
        std = self.op("Sqrt", [self.op("Div", [sq, dof])])
        pooled = self.op("Concat", [mean, std], axis=2)  # (B, 1, 2C)
        w = self.param("xvector.dense.linear.weight")[:, :, 0].astype(np.float64)
        scale, shift = bn_affine(self, "xvector.dense.nonlinear.batchnorm", affine=False)
        emb = self.op("Relu", [self.matmul(pooled, (w * scale[:, None]).T, "xvector.dense.linear", shift)])
        return self.op("Squeeze", [emb, self.const("squeeze_axes", np.array([1], dtype=np.int64))], name="embedding")


def build_campp_model(state: Mapping[str, np.ndarray], metadata: Optional[Dict[str, str]] = None):
    """An onnx.ModelProto for the checkpoint; raises ModelError if keys are missing or left over."""
    from onnx import TensorProto, helper

    g = _CamppBuilder(state)
    x = g.tdnn(g.head("features"))  # (B, T', 128)
    g.time_helpers(x)
    for b, (layers, kernel, dilation) in enumerate(BLOCKS, 1):
        for i in range(1, layers + 1):
            x = g.dense_layer(x, f"xvector.block{b}.tdnnd{i}", kernel, dilation)
        last = b == len(BLOCKS)
        x = g.transit(x, f"xvector.transit{b}", "xvector.out_nonlinear.batchnorm" if last else None)
    g.stats_embedding(x)
    return g.finish(
        "campplus",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "frames", N_MELS])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBEDDING_DIM])],
        metadata,
    )
