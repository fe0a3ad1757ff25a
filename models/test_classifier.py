"""Build ``test-classifier.onnx``: a tiny deterministic colour classifier for tests.

Graph: ``input`` float32 [N,3,32,32] (RGB in 0..1: scale 1/255, mean 0, std 1, stretched to
32x32) -> GlobalAveragePool -> Flatten -> MatMul with ``GAIN * I3`` -> Softmax ->
``probabilities`` float32 [N,3] over the labels ``red``, ``green``, ``blue``.

So ``probabilities = softmax(GAIN * mean_rgb)``; with ``GAIN = 10``:

* pure red (255,0,0) -> red 0.99991, green/blue 0.000045 each;
* a mostly red colour, e.g. (204,51,51) -> red 0.99507;
* any grey -> 1/3 each.

The output is already a probability distribution (the model's own Softmax); the server must
detect that (``"softmax": true`` in the JSON) and not apply softmax again.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from onnx import helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from onnx_util import GraphBuilder, image_input, matrix_output, save_checked, write_text  # noqa: E402

SIZE = 32
GAIN = 10.0
LABELS = ["red", "green", "blue"]
PREPROCESS = {
    "name": "test-classifier",
    "input": "input",
    "output": "probabilities",
    "size": SIZE,
    "resize": "stretch",
    "crop_fraction": 1.0,
    "layout": "NCHW",
    "channels": "RGB",
    "scale": 1.0 / 255.0,
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
    "softmax": True,
}


def build():
    """The ONNX ``ModelProto`` of the colour classifier."""
    g = GraphBuilder()
    x = g.node("GlobalAveragePool", ["input"], "pool")
    x = g.node("Flatten", [x], "flatten", axis=1)
    w = g.const("colour.weight", (GAIN * np.eye(3)).astype(np.float32))
    x = g.node("MatMul", [x, w], "colour")
    g.nodes.append(helper.make_node("Softmax", [x], ["probabilities"], name="softmax", axis=-1))
    return g.model(
        "test_classifier",
        [image_input("input", 3, SIZE)],
        [matrix_output("probabilities", len(LABELS))],
        "Deterministic test model: softmax(10 * mean RGB) over red/green/blue.",
        metadata={"preprocess": json.dumps(PREPROCESS), "labels": ",".join(LABELS)},
    )


def write(out_dir: str) -> list[str]:
    """Write the .onnx, .labels.txt and .json into ``out_dir``; returns the paths."""
    onnx_path = os.path.join(out_dir, "test-classifier.onnx")
    labels_path = os.path.join(out_dir, "test-classifier.labels.txt")
    json_path = os.path.join(out_dir, "test-classifier.json")
    save_checked(build(), onnx_path)
    write_text(labels_path, "".join(f"{name}\n" for name in LABELS))
    write_text(json_path, json.dumps(PREPROCESS, indent=2) + "\n")
    return [onnx_path, labels_path, json_path]


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "build")
    for p in write(out):
        print(p)
