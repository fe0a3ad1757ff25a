"""Build ``resnet50-random.onnx``: the ResNet-50 architecture with seeded random weights.

For benchmarks only: its predictions mean nothing.  The graph is what a real ResNet-50 with
batch norm folded looks like (so it costs the same to run):

* stem: Conv 7x7/2 (64) + Relu, MaxPool 3x3/2;
* bottleneck stages with 3, 4, 6, 3 blocks (widths 64, 128, 256, 512, expansion 4):
  Conv 1x1 + Relu, Conv 3x3 (stride 2 in the first block of stages 2-4, torchvision "v1.5"
  style) + Relu, Conv 1x1, plus the shortcut (Conv 1x1 with stride on the first block of a
  stage), Add, Relu;
* GlobalAveragePool, Flatten, Gemm 2048 -> 1000.

``input`` float32 [N,3,224,224] -> ``logits`` float32 [N,1000]; 25.6 M parameters (~102 MB).

Weights: ``numpy.random.default_rng(SEED)``, He-normal (std ``sqrt(2 / fan_in)``) for every
conv followed by a Relu.  The last conv of each residual branch is scaled down by
``RESIDUAL_GAIN = 0.25`` and the projection shortcuts use std ``sqrt(1 / fan_in)``, so the
activation scale stays O(1) through all 16 blocks (measured: post-block std 0.6-0.9 on real
photos, logits std ~0.7) instead of growing at every Add; biases are small (std 0.01).  ``verify.py`` checks the logits are finite
and not constant.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from onnx import helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from onnx_util import GraphBuilder, image_input, matrix_output, save_checked, write_text  # noqa: E402

SEED = 20240501
SIZE = 224
NUM_CLASSES = 1000
STAGES = [(3, 64), (4, 128), (6, 256), (3, 512)]  # (blocks, bottleneck width)
EXPANSION = 4
RESIDUAL_GAIN = 0.25
PREPROCESS = {
    "name": "resnet50-random",
    "input": "input",
    "output": "logits",
    "size": SIZE,
    "resize": "shorter-side-crop",
    "crop_fraction": 0.875,
    "layout": "NCHW",
    "channels": "RGB",
    "scale": 1.0 / 255.0,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "softmax": False,
}


def build(seed: int = SEED):
    """The ONNX ``ModelProto`` of a randomly initialised ResNet-50 (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()

    def conv(x: str, cin: int, cout: int, k: int, stride: int, name: str, gain: float = 2.0,
             scale: float = 1.0) -> str:
        std = np.sqrt(gain / (cin * k * k)) * scale
        w = (rng.standard_normal((cout, cin, k, k), dtype=np.float32) * np.float32(std))
        b = (rng.standard_normal(cout, dtype=np.float32) * np.float32(0.01))
        p = k // 2
        return g.conv(x, w, b, name, stride=stride, pads=(p, p, p, p))

    x = conv("input", 3, 64, 7, 2, "stem.conv")
    x = g.node("Relu", [x], "stem.relu")
    x = g.node("MaxPool", [x], "stem.maxpool", kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1])
    cin = 64
    for stage, (blocks, width) in enumerate(STAGES):
        cout = width * EXPANSION
        for block in range(blocks):
            name = f"layer{stage + 1}.{block}"
            stride = 2 if (block == 0 and stage > 0) else 1
            y = g.node("Relu", [conv(x, cin, width, 1, 1, f"{name}.conv1")], f"{name}.relu1")
            y = g.node("Relu", [conv(y, width, width, 3, stride, f"{name}.conv2")], f"{name}.relu2")
            y = conv(y, width, cout, 1, 1, f"{name}.conv3", scale=RESIDUAL_GAIN)
            if block == 0:
                shortcut = conv(x, cin, cout, 1, stride, f"{name}.downsample", gain=1.0)
            else:
                shortcut = x
            x = g.node("Relu", [g.node("Add", [y, shortcut], f"{name}.add")], f"{name}.relu3")
            cin = cout
    x = g.node("GlobalAveragePool", [x], "avgpool")
    x = g.node("Flatten", [x], "flatten", axis=1)
    fc_w = g.const("fc.weight",
                   rng.standard_normal((NUM_CLASSES, cin), dtype=np.float32)
                   * np.float32(np.sqrt(1.0 / cin)))
    fc_b = g.const("fc.bias", np.zeros(NUM_CLASSES, np.float32))
    g.nodes.append(helper.make_node("Gemm", [x, fc_w, fc_b], ["logits"], name="fc", transB=1))
    return g.model(
        "resnet50_random",
        [image_input("input", 3, SIZE)],
        [matrix_output("logits", NUM_CLASSES)],
        f"ResNet-50 architecture with random He-init weights (numpy seed {seed}); "
        "for benchmarks only, predictions are meaningless.",
        metadata={"preprocess": json.dumps(PREPROCESS), "seed": str(seed)},
    )


def write(out_dir: str) -> list[str]:
    """Write the .onnx, .labels.txt and .json into ``out_dir``; returns the paths."""
    onnx_path = os.path.join(out_dir, "resnet50-random.onnx")
    labels_path = os.path.join(out_dir, "resnet50-random.labels.txt")
    json_path = os.path.join(out_dir, "resnet50-random.json")
    save_checked(build(), onnx_path)
    write_text(labels_path, "".join(f"class_{i}\n" for i in range(NUM_CLASSES)))
    write_text(json_path, json.dumps(PREPROCESS, indent=2) + "\n")
    return [onnx_path, labels_path, json_path]


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "build")
    for p in write(out):
        print(p)
