"""Emit SpeechBrain's ECAPA-TDNN (spkrec-ecapa-voxceleb layout) as an ONNX graph from a numpy state_dict.

Our own definition of the network, written from the ECAPA-TDNN paper (Desplanques et al., 2020) and
SpeechBrain's parameter names, which it must load with no missing or unexpected key. Input: normalised
log-mel features (batch, frames, 80); output: the raw 192-dim embedding (batch, 192). One utterance per
batch row and no padding masks: the core embeds clips one at a time.

Two exact rewrites make it cheaper than a literal transcription:
- the attention's global-context 1x1 conv over concat[x, mean, std] is split into W_x @ x plus a
  per-utterance bias W_m @ mean + W_s @ std (a third of the 9216-input conv's work);
- BatchNorm (inference) becomes one per-channel multiply-add with precomputed scale and shift.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from .errors import ModelError

BN_EPS = 1e-5
STATS_EPS = 1e-12
CHANNELS = (1024, 1024, 1024, 1024, 3072)
KERNELS = (5, 3, 3, 3, 1)
DILATIONS = (1, 2, 3, 4, 1)
RES2NET_SCALE = 8
N_MELS = 80
EMBEDDING_DIM = 192
OPSET = 17
# The attention's view of the frame-level features: per-tensor uint8 cannot hold this tensor's few
# very large channels, and the softmax over time amplifies the error (cosine to fp32 drops to ~0.5).
ATTENTION_LOCAL_CONV = "asp.tdnn.conv.local"


class _GraphBuilder:
    """Tiny helper around onnx.helper that names nodes and constants uniquely."""

    def __init__(self, state: Mapping[str, np.ndarray]) -> None:
        from onnx import helper, numpy_helper

        self._helper = helper
        self._numpy_helper = numpy_helper
        self.state = state
        self.used: set = set()
        self.nodes: List = []
        self.initializers: List = []
        self._count = 0

    def param(self, key: str) -> np.ndarray:
        if key not in self.state:
            raise ModelError(f"checkpoint is missing tensor {key!r}: not an ECAPA-TDNN (spkrec-ecapa-voxceleb) state_dict")
        self.used.add(key)
        return np.asarray(self.state[key], dtype=np.float32)

    def const(self, name: str, value: np.ndarray) -> str:
        tensor = self._numpy_helper.from_array(np.ascontiguousarray(value), name=name)
        self.initializers.append(tensor)
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: Optional[str] = None, node: Optional[str] = None, **attrs) -> str:
        """Add a node; ``name`` names its output, ``node`` the node itself (quantisation rules refer to it)."""
        self._count += 1
        out = name or f"{op_type.lower()}_{self._count}"
        node_name = node or f"{op_type}_{self._count}"
        self.nodes.append(self._helper.make_node(op_type, list(inputs), [out], name=node_name, **attrs))
        return out

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

    def batchnorm(self, x: str, prefix: str, rank: int = 3) -> str:
        gamma, beta = self.param(f"{prefix}.weight"), self.param(f"{prefix}.bias")
        mean, var = self.param(f"{prefix}.running_mean"), self.param(f"{prefix}.running_var")
        self.used.add(f"{prefix}.num_batches_tracked")
        scale = gamma / np.sqrt(var + BN_EPS)
        shift = beta - mean * scale
        shape = (-1, 1) if rank == 3 else (-1,)
        x = self.op("Mul", [x, self.const(f"{prefix}.scale", scale.reshape(shape))])
        return self.op("Add", [x, self.const(f"{prefix}.shift", shift.reshape(shape))])

    def tdnn(self, x: str, prefix: str, dilation: int = 1) -> str:
        """Conv -> ReLU -> BatchNorm (SpeechBrain's order: the norm comes after the activation)."""
        y = self.op("Relu", [self.conv(x, f"{prefix}.conv.conv", dilation)])
        return self.batchnorm(y, f"{prefix}.norm.norm")

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
        y = self.tdnn(y, f"{prefix}.tdnn2")
        # squeeze-excitation: channel gates from the utterance mean
        s = self.op("ReduceMean", [y], axes=[2], keepdims=1)
        s = self.op("Relu", [self.conv(s, f"{prefix}.se_block.conv1.conv")])
        s = self.op("Sigmoid", [self.conv(s, f"{prefix}.se_block.conv2.conv")])
        y = self.op("Mul", [y, s])
        return self.op("Add", [y, x])

    def mean_std(self, x: str, weights: Optional[str] = None) -> List[str]:
        """Mean and std over time, optionally weighted (weights sum to 1 over time)."""
        if weights is None:
            mean = self.op("ReduceMean", [x], axes=[2], keepdims=1)
            centred = self.op("Sub", [x, mean])
            var = self.op("ReduceMean", [self.op("Mul", [centred, centred])], axes=[2], keepdims=1)
        else:
            axes = self.const(f"axes_{self._count}", np.array([2], dtype=np.int64))
            mean = self.op("ReduceSum", [self.op("Mul", [x, weights]), axes], keepdims=1)
            centred = self.op("Sub", [x, mean])
            var = self.op("ReduceSum", [self.op("Mul", [self.op("Mul", [centred, centred]), weights]), axes], keepdims=1)
        eps = self.const(f"eps_{self._count}", np.array(STATS_EPS, dtype=np.float32))
        std = self.op("Sqrt", [self.op("Max", [var, eps])])
        return [mean, std]

    def attentive_pooling(self, x: str) -> str:
        channels = CHANNELS[-1]
        mean, std = self.mean_std(x)
        weight = self.param("asp.tdnn.conv.conv.weight")  # (128, 3*C, 1)
        bias = self.param("asp.tdnn.conv.conv.bias")
        w_x, w_m, w_s = weight[:, :channels], weight[:, channels : 2 * channels], weight[:, 2 * channels :]
        self.used.add("asp.tdnn.conv.conv.weight")
        local = self.op(
            "Conv", [x, self.const("asp.tdnn.w_x", w_x), self.const("asp.tdnn.bias", bias)], node=ATTENTION_LOCAL_CONV, kernel_shape=[1]
        )
        ctx = self.op("Conv", [mean, self.const("asp.tdnn.w_mean", w_m)], node="asp.tdnn.conv.mean", kernel_shape=[1])
        ctx_std = self.op("Conv", [std, self.const("asp.tdnn.w_std", w_s)], node="asp.tdnn.conv.std", kernel_shape=[1])
        ctx = self.op("Add", [ctx, ctx_std])
        attn = self.batchnorm(self.op("Relu", [self.op("Add", [local, ctx])]), "asp.tdnn.norm.norm")
        attn = self.conv(self.op("Tanh", [attn]), "asp.conv.conv")
        attn = self.op("Softmax", [attn], axis=2)
        w_mean, w_std = self.mean_std(x, attn)
        return self.op("Concat", [w_mean, w_std], axis=1)  # (B, 2C, 1)


def build_ecapa_model(state: Mapping[str, np.ndarray], metadata: Optional[Dict[str, str]] = None):
    """An onnx.ModelProto for the checkpoint; raises ModelError if keys are missing or left over."""
    from onnx import TensorProto, checker, helper

    g = _GraphBuilder(state)
    x = g.op("Transpose", ["features"], perm=[0, 2, 1])  # (B, 80, T)
    x = g.tdnn(x, "blocks.0", DILATIONS[0])
    block_outputs = []
    for i in range(1, len(CHANNELS) - 1):
        x = g.se_res2net(x, f"blocks.{i}", DILATIONS[i])
        block_outputs.append(x)
    x = g.tdnn(g.op("Concat", block_outputs, axis=1), "mfa")
    pooled = g.batchnorm(g.attentive_pooling(x), "asp_bn.norm")
    emb = g.conv(pooled, "fc.conv")  # (B, 192, 1)
    axes = g.const("squeeze_axes", np.array([2], dtype=np.int64))
    g.op("Squeeze", [emb, axes], name="embedding")

    unused = sorted(set(state) - g.used)
    if unused:
        raise ModelError(f"checkpoint has tensors this ECAPA-TDNN does not use: {unused[:5]}")
    graph = helper.make_graph(
        g.nodes,
        "ecapa_tdnn",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "frames", N_MELS])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBEDDING_DIM])],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeverify")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    checker.check_model(model)
    return model
