"""Small helpers shared by the ONNX graph builders (numpy + ``onnx.helper`` only)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what opset 17 needs; readable by every ONNX Runtime since 1.13


class GraphBuilder:
    """Accumulates nodes and initializers and hands out unique tensor names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: dict[str, int] = {}

    def name(self, prefix: str) -> str:
        n = self._counts.get(prefix, 0)
        self._counts[prefix] = n + 1
        return f"{prefix}_{n}" if n else prefix

    def const(self, name: str, array: np.ndarray) -> str:
        """Add an initializer; returns its (unique) name."""
        name = self.name(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        """Add a single-output node; returns the output tensor name."""
        name = self.name(name)
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, w: np.ndarray, b: np.ndarray, name: str, *, stride: int = 1,
             pads: tuple[int, int, int, int] = (0, 0, 0, 0), group: int = 1) -> str:
        """Conv with bias; ``pads`` is ONNX order (top, left, bottom, right)."""
        kh, kw = int(w.shape[2]), int(w.shape[3])
        wn = self.const(f"{name}.weight", w.astype(np.float32))
        bn = self.const(f"{name}.bias", b.astype(np.float32))
        return self.node("Conv", [x, wn, bn], name, kernel_shape=[kh, kw],
                         strides=[stride, stride], pads=list(pads), group=group,
                         dilations=[1, 1])

    def model(self, graph_name: str, inputs, outputs, doc: str,
              metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="sightline-models",
            producer_version="1",
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model


def image_input(name: str, channels: int, size: int) -> onnx.ValueInfoProto:
    """float32 NCHW input with a symbolic batch dimension ``N``."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, size, size])


def matrix_output(name: str, classes: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", classes])


def fold_bn(w: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
            var: np.ndarray, eps: float, b: np.ndarray | None = None):
    """Fold an inference-mode BatchNorm into the preceding conv (weights OIHW).

    ``y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta``; computed in float64
    and returned as float32.
    """
    w = w.astype(np.float64)
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    bias = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    w_f = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    b_f = (bias - mean.astype(np.float64)) * scale + beta.astype(np.float64)
    return w_f.astype(np.float32), b_f.astype(np.float32)


def save_checked(model: onnx.ModelProto, path: str) -> None:
    """Run the full checker (with shape inference) and write ``path`` atomically."""
    onnx.checker.check_model(model, full_check=True)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """Write a text file atomically (LF line endings, UTF-8)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
