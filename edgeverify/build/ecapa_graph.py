"""Emit SpeechBrain's ECAPA-TDNN (spkrec-ecapa-voxceleb layout) as an ONNX graph from a numpy state_dict.

Our own definition of the network, written from the ECAPA-TDNN paper (Desplanques et al., 2020) and
SpeechBrain's parameter names, which it must load with no missing or unexpected key. Input: normalised
log-mel features (batch, frames, 80); output: the raw 192-dim embedding (batch, 192). One utterance per
batch row and no padding masks: the core embeds clips one at a time.

Exact rewrites make it cheaper than a literal transcription (README "Model and accuracy" has the figures):
- the attention's global-context 1x1 conv over concat[x, mean, std] is split into W_x @ x plus a
  per-utterance bias W_m @ mean + W_s @ std (a third of the 9216-input conv's work), and W_x @ x reads
  the layer's ReLU output with its BatchNorm folded into W_x (so it can run int8);
- BatchNorm (inference) becomes one per-channel multiply-add with precomputed scale and shift;
- subnormal weights become zeros (see _GraphBuilder.param);
- squeeze-excitation and attentive pooling run time-major, sums over time as MatMuls (see
  time_major_sums and attentive_pooling).
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from .onnx_graph import GraphBuilder, exact_matvec

BN_EPS = 1e-5
STATS_EPS = 1e-12
CHANNELS = (1024, 1024, 1024, 1024, 3072)
KERNELS = (5, 3, 3, 3, 1)
DILATIONS = (1, 2, 3, 4, 1)
RES2NET_SCALE = 8
N_MELS = 80
EMBEDDING_DIM = 192
# Largest |logit| of the attention for which exp() cannot overflow float32 summed over an hour of frames.
SAFE_EXP_BOUND = 60.0


class _GraphBuilder(GraphBuilder):
    architecture = "ECAPA-TDNN (spkrec-ecapa-voxceleb)"

    # --- layers -------------------------------------------------------------------------------------

    def conv(self, x: str, prefix: str, dilation: int = 1) -> str:
        """SpeechBrain Conv1d: 'same' output length by reflect padding, then a plain convolution."""
        weight = self.param(f"{prefix}.weight")
        bias = self.param(f"{prefix}.bias")
        kernel = weight.shape[-1]
        if kernel > 1:
            pad = dilation * (kernel - 1) // 2
            pads = self.const(f"{prefix}.pads", np.array([0, 0, pad, 0, 0, pad], dtype=np.int64))
            x = self.op("Pad", [x, pads], mode="reflect")
        return self.op(
            "Conv",
            [x, self.const(f"{prefix}.weight", weight), self.const(f"{prefix}.bias", bias)],
            node=prefix,
            kernel_shape=[kernel],
            dilations=[dilation],
        )

    def batchnorm_affine(self, prefix: str) -> tuple:
        """Inference BatchNorm as (scale, shift) per channel."""
        gamma, beta = self.param(f"{prefix}.weight"), self.param(f"{prefix}.bias")
        mean, var = self.param(f"{prefix}.running_mean"), self.param(f"{prefix}.running_var")
        self.used.add(f"{prefix}.num_batches_tracked")
        scale = gamma / np.sqrt(var + BN_EPS)
        return scale, beta - mean * scale

    def batchnorm(self, x: str, prefix: str, rank: int = 3) -> str:
        scale, shift = self.batchnorm_affine(prefix)
        shape = (-1, 1) if rank == 3 else (-1,)
        x = self.op("Mul", [x, self.const(f"{prefix}.scale", scale.reshape(shape))])
        return self.op("Add", [x, self.const(f"{prefix}.shift", shift.reshape(shape))])

    def tdnn(self, x: str, prefix: str, dilation: int = 1, time_major_out: bool = False) -> str:
        """Conv -> ReLU -> BatchNorm (SpeechBrain's order: the norm comes after the activation).
        ``time_major_out``: return (B, T, C), transposed before the norm so that no MatMul reads a
        Transpose directly (onnxruntime would fuse the two and then could not cancel the Transpose
        against the channels-last layout of its int8 convs)."""
        if time_major_out:
            return self.tdnn_time_major(x, prefix)[1]
        y = self.op("Relu", [self.conv(x, f"{prefix}.conv.conv", dilation)])
        return self.batchnorm(y, f"{prefix}.norm.norm")

    def tdnn_time_major(self, x: str, prefix: str) -> tuple:
        """A 1x1 tdnn returning (B, T, C) tensors: (its ReLU output, its normed output)."""
        y = self.op("Transpose", [self.op("Relu", [self.conv(x, f"{prefix}.conv.conv")])], perm=[0, 2, 1])
        return y, self.batchnorm(y, f"{prefix}.norm.norm", rank=2)

    def se_res2net(self, x: str, prefix: str, dilation: int) -> str:
        y = self.tdnn(x, f"{prefix}.tdnn1")
        width = CHANNELS[1] // RES2NET_SCALE
        split = self.const(f"{prefix}.split", np.full(RES2NET_SCALE, width, dtype=np.int64))
        chunks = [f"{prefix}.chunk{i}" for i in range(RES2NET_SCALE)]
        self.nodes.append(self._helper.make_node("Split", [y, split], chunks, name=f"{prefix}.Split", axis=1))
        outs = [chunks[0]]
        for i in range(1, RES2NET_SCALE):
            inp = chunks[i] if i == 1 else self.op("Add", [chunks[i], outs[-1]])
            outs.append(self.tdnn(inp, f"{prefix}.res2net_block.blocks.{i - 1}", dilation))
        y = self.op("Concat", outs, axis=1)
        # squeeze-excitation: channel gates from the utterance mean, computed time-major (see time_major_sums)
        y = self.tdnn(y, f"{prefix}.tdnn2", time_major_out=True)
        s = self.op("MatMul", [self.time_mean, y])  # (B, 1, C)
        s = self.op("Relu", [self.utterance_conv(s, f"{prefix}.se_block.conv1.conv")])
        s = self.op("Sigmoid", [self.utterance_conv(s, f"{prefix}.se_block.conv2.conv")])
        y = self.op("Transpose", [self.op("Mul", [y, s])], perm=[0, 2, 1])
        return self.op("Add", [y, x])

    def dense(self, x: str, prefix: str, weight: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None) -> str:
        """A 1x1 Conv1d applied to time-major (B, T, C_in) input as one MatMul (+ bias). The MatMul node is
        named ``prefix``: the quantiser makes exactly these MatMuls int8 (quantize.INT8_MATMULS)."""
        if weight is None:
            weight = self.param(f"{prefix}.weight")
        if bias is None:
            bias = self.param(f"{prefix}.bias")
        y = self.op("MatMul", [x, self.const(f"{prefix}.weight_t", weight[:, :, 0].T)], node=prefix)
        return self.op("Add", [y, self.const(f"{prefix}.bias", bias)])

    def utterance_conv(self, row: str, prefix: str, weight: Optional[np.ndarray] = None, with_bias: bool = True) -> str:
        """A 1x1 conv on one (B, 1, C) row kept a Conv (so the quantiser makes its weights int8: 9 MB less
        model and RSS than float MatMuls) between two free Transposes of the row."""
        if weight is None:
            weight = self.param(f"{prefix}.weight")
        inputs = [self.op("Transpose", [row], perm=[0, 2, 1]), self.const(f"{prefix}.weight", weight)]
        if with_bias:
            inputs.append(self.const(f"{prefix}.bias", self.param(f"{prefix}.bias")))
        return self.op("Transpose", [self.op("Conv", inputs, node=prefix, kernel_shape=[1])], perm=[0, 2, 1])

    def time_major_sums(self, features: str) -> None:
        """Row vectors (B, 1, T) of ones and of 1/T: a MatMul with them sums or averages over time. On
        time-major tensors that is one GEMV over contiguous rows, where ReduceMean over a non-last axis ran
        10-50x slower (and worse with length)."""
        shape = self.op("Shape", [features])
        batch = self.op("Gather", [shape, self.const("dim_batch", np.array([0], dtype=np.int64))], axis=0)
        frames = self.op("Gather", [shape, self.const("dim_frames", np.array([1], dtype=np.int64))], axis=0)
        row_shape = self.op("Concat", [batch, self.const("dim_one", np.array([1], dtype=np.int64)), frames], axis=0)
        one = self._numpy_helper.from_array(np.array([1.0], dtype=np.float32), name="one")
        self.time_ones = self.op("ConstantOfShape", [row_shape], name="time_ones", value=one)
        count = self.op("Cast", [frames], to=1)  # FLOAT
        self.time_mean = self.op("Div", [self.time_ones, count], name="time_mean")

    def sqrt_clamped(self, var: str) -> str:
        eps = self.const(f"eps_{self._count}", np.array(STATS_EPS, dtype=np.float32))
        return self.op("Sqrt", [self.op("Max", [var, eps])])

    def attentive_pooling(self, x: str, relu: str, norm_prefix: str) -> str:
        """Attentive statistics pooling on time-major (B, T, C) frames, as MatMuls (GEMV over time for every
        sum, GEMM for the 1x1 convs) and elementwise ops: no Transpose of the 3072 x T tensor, no
        reduction over a non-last axis. Stats are taken of y = x - mean(x), which the global context needs
        anyway: weighted mean = mean + sum(a*y), weighted var = sum(a*y^2) - sum(a*y)^2 (exact, and with y
        centred there is no cancellation). Returns (B, 1, 2C).

        ``x`` is BatchNorm(``relu``) (``norm_prefix``): the attention's frame-level conv reads ``relu`` with
        the norm folded into its weights and bias, an exact rewrite that lets it run int8. Per-tensor uint8
        of ``x`` itself cannot hold its channels of very different scale (cosine to fp32 0.80); ``relu`` is
        the int8 conv's own output, already on one uint8 grid."""
        channels = CHANNELS[-1]
        mean = self.op("MatMul", [self.time_mean, x])
        centred = self.op("Sub", [x, mean])
        squared = self.op("Mul", [centred, centred])
        std = self.sqrt_clamped(self.op("MatMul", [self.time_mean, squared]))
        weight = self.param("asp.tdnn.conv.conv.weight")  # (128, 3*C, 1) over concat[x, mean, std]
        w_x, w_m, w_s = weight[:, :channels], weight[:, channels : 2 * channels], weight[:, 2 * channels :]
        scale, shift = self.batchnorm_affine(norm_prefix)
        folded_bias = self.param("asp.tdnn.conv.conv.bias") + exact_matvec(w_x[:, :, 0], shift)
        local = self.dense(relu, "asp.tdnn.conv.conv", w_x * scale[None, :, None], folded_bias)
        ctx = self.op("Add", [self.utterance_conv(mean, "asp.tdnn.conv.mean", w_m, False),
                              self.utterance_conv(std, "asp.tdnn.conv.std", w_s, False)])
        attn = self.batchnorm(self.op("Relu", [self.op("Add", [local, ctx])]), "asp.tdnn.norm.norm", rank=2)
        logits = self.dense(self.op("Tanh", [attn]), "asp.conv.conv")
        # Softmax over time, unnormalised: logits are bounded by |W| |tanh| + |b| (30 for this checkpoint), so
        # exp needs no max-subtraction pass unless a checkpoint's bound could overflow float32.
        weight2, bias2 = self.param("asp.conv.conv.weight"), self.param("asp.conv.conv.bias")
        if float(np.max(np.abs(weight2).sum(axis=(1, 2)) + np.abs(bias2))) > SAFE_EXP_BOUND:
            logits = self.op("Sub", [logits, self.op("ReduceMax", [logits], axes=[1], keepdims=1)])
        weights = self.op("Exp", [logits])
        total = self.op("MatMul", [self.time_ones, weights])
        shift = self.op("Div", [self.op("MatMul", [self.time_ones, self.op("Mul", [weights, centred])]), total])
        second = self.op("Div", [self.op("MatMul", [self.time_ones, self.op("Mul", [weights, squared])]), total])
        w_mean = self.op("Add", [mean, shift])
        w_std = self.sqrt_clamped(self.op("Sub", [second, self.op("Mul", [shift, shift])]))
        return self.op("Concat", [w_mean, w_std], axis=2)


def build_ecapa_model(state: Mapping[str, np.ndarray], metadata: Optional[Dict[str, str]] = None):
    """An onnx.ModelProto for the checkpoint; raises ModelError if keys are missing or left over."""
    from onnx import TensorProto, helper

    g = _GraphBuilder(state)
    g.time_major_sums("features")
    x = g.op("Transpose", ["features"], perm=[0, 2, 1])  # (B, 80, T)
    x = g.tdnn(x, "blocks.0", DILATIONS[0])
    block_outputs = []
    for i in range(1, len(CHANNELS) - 1):
        x = g.se_res2net(x, f"blocks.{i}", DILATIONS[i])
        block_outputs.append(x)
    # Time-major from here: onnxruntime runs its int8 convs channels-last, so this Transpose cancels its own.
    relu, x = g.tdnn_time_major(g.op("Concat", block_outputs, axis=1), "mfa")
    pooled = g.batchnorm(g.attentive_pooling(x, relu, "mfa.norm.norm"), "asp_bn.norm", rank=2)
    emb = g.utterance_conv(pooled, "fc.conv")  # (B, 1, 192)
    axes = g.const("squeeze_axes", np.array([1], dtype=np.int64))
    g.op("Squeeze", [emb, axes], name="embedding")

    return g.finish(
        "ecapa_tdnn",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "frames", N_MELS])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBEDDING_DIM])],
        metadata,
    )
