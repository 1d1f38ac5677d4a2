"""What every graph emitter needs: checkpoint tensors by key, unique node names, constants, and the
finished ModelProto. The architectures themselves live in ecapa_graph.py and campp_graph.py."""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import ModelError

OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.14


def exact_matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """matrix @ vector correctly rounded to float32. A BLAS product sums in an order that depends on the
    CPU (the emulated A72 built a different model than x86); float32 products are exact in float64 and
    fsum adds them exactly, so the build stays byte-identical everywhere."""
    products = matrix.astype(np.float64) * vector.astype(np.float64)[None, :]
    return np.array([math.fsum(row) for row in products], dtype=np.float32)


class GraphBuilder:
    """Tiny helper around onnx.helper that names nodes and constants uniquely and records which
    checkpoint tensors were used (a build fails on missing or left-over keys)."""

    architecture = "model"

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
            raise ModelError(f"checkpoint is missing tensor {key!r}: not a state_dict of {self.architecture}")
        self.used.add(key)
        value = np.array(self.state[key], dtype=np.float32)
        # Subnormal weights change nothing a float32 sum can show, but every multiply by one takes a
        # microcode assist on x86 (ECAPA's attention conv ran 7x slower than with zeros).
        value[np.abs(value) < np.finfo(np.float32).tiny] = 0.0
        return value

    def const(self, name: str, value: np.ndarray) -> str:
        tensor = self._numpy_helper.from_array(np.ascontiguousarray(value), name=name)
        self.initializers.append(tensor)
        return name

    def scalar(self, name: str, value, dtype) -> str:
        """A rank-0 constant (``const`` gives rank 1 to 0-d values, which the ECAPA graph relies on)."""
        self.initializers.append(self._numpy_helper.from_array(np.array(value, dtype=dtype), name=name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: Optional[str] = None, node: Optional[str] = None, **attrs) -> str:
        """Add a node; ``name`` names its output, ``node`` the node itself (quantisation rules refer to it)."""
        self._count += 1
        out = name or f"{op_type.lower()}_{self._count}"
        node_name = node or f"{op_type}_{self._count}"
        self.nodes.append(self._helper.make_node(op_type, list(inputs), [out], name=node_name, **attrs))
        return out

    def op_multi(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], node: str, **attrs) -> List[str]:
        self.nodes.append(self._helper.make_node(op_type, list(inputs), list(outputs), name=node, **attrs))
        return list(outputs)

    def finish(self, graph_name: str, inputs: List, outputs: List, metadata: Optional[Dict[str, str]] = None):
        """The checked ModelProto; raises ModelError when checkpoint tensors were left unused."""
        from onnx import checker

        unused = sorted(set(self.state) - self.used)
        if unused:
            raise ModelError(f"checkpoint has tensors this {self.architecture} does not use: {unused[:5]}")
        helper = self._helper
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeverify")
        model.ir_version = IR_VERSION
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        checker.check_model(model)
        return model
