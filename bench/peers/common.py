"""What every peer server in this folder shares: flags, the ONNX Runtime session, the
preprocessing and the answer.

The preprocessing is models/preprocess_reference.py itself (imported, not copied): PIL
decode, EXIF orientation, RGB, bilinear resize of the shorter side to 256, centre crop 224,
``(x / 255 - mean) / std``, NCHW — the definition Sightline's own preprocessing is tested
against. The session: the model file Sightline serves, intra-op threads ``--threads``,
inter-op 1, every graph optimisation (Sightline's ``Level3``). The answer: the top ``k``
classes by softmax probability, as ``[{"label": ..., "probability": ...}]`` like Sightline's
``predictions``.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "models"))

import preprocess_reference  # noqa: E402

MODEL_NAME = "efficientnet-lite0"
TOP_K = 5


def flags(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="the .onnx file; its .json sidecar and "
                        ".labels.txt sit beside it")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0,
                        help="how long a batch waits to fill (peers that batch)")
    return parser.parse_args()


class Classifier:
    """One ONNX Runtime session with the model's preprocessing and labels."""

    def __init__(self, model: str, threads: int) -> None:
        stem = model[: -len(".onnx")] if model.endswith(".onnx") else model
        self.config: dict[str, Any] = preprocess_reference.load_config(stem + ".json")
        with open(stem + ".labels.txt", encoding="utf-8") as f:
            self.labels = [line.rstrip("\n") for line in f]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input = self.config.get("input") or self.session.get_inputs()[0].name
        self.output = self.config.get("output") or self.session.get_outputs()[0].name
        # The sidecar's legacy "softmax": true means the graph already ends in one.
        self.probabilities = self.config.get("output_kind") == "probabilities" or bool(
            self.config.get("softmax", False))

    def tensor(self, jpeg: bytes) -> np.ndarray:
        """The [1, 3, 224, 224] input of one encoded image, exactly as the reference makes it."""
        with Image.open(io.BytesIO(jpeg)) as image:
            image.load()
            resized = preprocess_reference.resized_rgb(image, self.config)
        return preprocess_reference.to_tensor(resized, self.config)

    def classify(self, images: list[bytes], k: int = TOP_K) -> list[list[dict[str, Any]]]:
        """Top-``k`` of each image, one session run for the whole batch."""
        batch = np.concatenate([self.tensor(jpeg) for jpeg in images], axis=0)
        (scores,) = self.session.run([self.output], {self.input: batch})
        return [self.top(row, k) for row in scores]

    def top(self, row: np.ndarray, k: int) -> list[dict[str, Any]]:
        row = row.astype(np.float64)
        if not self.probabilities:
            row = np.exp(row - row.max())
            row /= row.sum()
        best = np.argsort(-row, kind="stable")[:k]
        return [{"label": self.labels[i], "probability": float(row[i])} for i in best]
