"""Build ``efficientnet-lite0-int8.onnx``: static int8 quantisation of the fp32 model.

ONNX Runtime's own tools (``onnxruntime.quantization``, from the pinned ``onnxruntime``
wheel) plus numpy, nothing else:

1. ``quant_pre_process`` (ONNX shape inference and ORT's basic graph optimisations),
   which ``quantize_static`` asks for; its symbolic shape inference (needs sympy, meant
   for transformers' symbolic dimensions) is skipped: every shape here but N is static;
2. **bias correction** (``correct_biases``; Nagel et al., "Data-Free Quantization", 2019,
   section 4.2, with the input means measured on the calibration data): for every
   convolution that will be quantised, the error its int8 weights make on its *average*
   input, ``(W - W_int8) · E[x]`` per output channel, is added to its bias, so the
   quantised model's outputs are unbiased.  ``W_int8`` is computed exactly as
   ``quantize_static`` will (per-channel symmetric, range -127..127, round half to even);
3. ``quantize_static`` with ``QuantFormat.QDQ`` (QuantizeLinear/DequantizeLinear pairs
   that ORT's CPU provider fuses into integer Conv/MatMul kernels), ``per_channel=True``
   (one weight scale per output channel: EfficientNet's depthwise convolutions need it),
   unsigned 8-bit activations and signed 8-bit weights (what ORT recommends for x86; with
   ``reduce_range=False``, its advice for CPUs with VNNI), **Percentile** calibration
   (activation ranges cover 99.999 % of the calibration values, so a few outliers do not
   stretch the 256 levels);
4. except the stem and blocks 0-3 (``FLOAT_BLOCKS``: the 112x112 and 56x56 stages and the
   first 28x28 block), which stay float32.  Quantised, they alone cost most of the
   agreement with fp32 (quantising the weights of ``blocks.0.depthwise`` alone, 3x3 kernels
   holding e.g. 17.7 and -16.2 side by side, already changes the top-1 of 4 of 56
   development views: early errors propagate through the whole network).  On a development set of 700
   views (seed 123, not the gate's), all-int8 agreed with fp32 on 93.4 % of the top-1s,
   keeping the stem + blocks 0-1 float 96.9 %, stem + blocks 0-3 97.9 %, stem + blocks 0-6
   and the classifier 97.7 %; so 0-3 (about a quarter of the multiply-adds) it is.

Why 2 and 3 (development seeds 123, 777 and 31, 560 views each, never the gate's seed;
top-1 agreement with fp32, all with blocks 0-3 float): MinMax alone 97.3 % (1634/1680);
Entropy as MinMax; MinMax + head and classifier float 97.5 % (two seeds); Percentile 98.3 %
(1651/1680); Percentile + bias correction **98.75 % (1659/1680)**, mean top-5 overlap
0.983 (MinMax: 0.977).  Fake-quantising the weights alone (activations float) agreed on
97.7 % (two seeds), and 98.75 % with bias correction: the int8 weights, not the
activations, were the main error.  Tried and worse: keeping the depthwise or the project
convolutions float (94-96 %: the extra float islands cost more than they save), 24-32
calibration views per photo, percentile 99.9 / 99.99, the bias correction also on the
classifier.  The views the two models still disagree on are ones fp32 itself is
nearly undecided on (top-1 minus top-2 probability mostly under 0.05; 16-26 of every 560
development views are under 0.02).

Calibration data: every bundled photo (``photos/*.png|jpg``) as uploaded plus
``CALIBRATION_VIEWS_PER_PHOTO - 1`` augmented views of it (crops, flips, rescales, JPEG
re-encodes; :mod:`photo_views`, seed ``CALIBRATION_SEED``, a different seed from the
gate's), each preprocessed exactly as ``efficientnet-lite0.json`` says
(:mod:`preprocess_reference`).  The same inputs give the bias correction its means.

The int8 model has the same input and output (``input`` float32 [N,3,224,224] ->
``logits`` float32 [N,1000]), so it ships with a copy of the fp32 labels and a copy of its
sidecar (``name`` changed to ``efficientnet-lite0-int8``).  It is *not* the default model:
``int8_gate.py`` and ``e2e/tests/int8.rs`` decide whether it agrees with fp32 well enough.

Usage::

    python models/quantize_int8.py [--out models/build]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import photo_views  # noqa: E402
from onnx_util import write_text  # noqa: E402
from preprocess_reference import load_config  # noqa: E402

FP32 = "efficientnet-lite0"
INT8 = "efficientnet-lite0-int8"
CALIBRATION_SEED = 20261129
CALIBRATION_VIEWS_PER_PHOTO = 8
CALIBRATION_BATCH = 8
# Nodes left float32: the stem and every node of blocks 0..FLOAT_BLOCKS-1.
FLOAT_BLOCKS = 4
# Share of calibration values each activation range covers (CalibrationMethod.Percentile).
CALIBRATION_PERCENTILE = 99.999


def float_nodes(model_path: str) -> list[str]:
    import onnx

    prefixes = ("stem.",) + tuple(f"blocks.{i}." for i in range(FLOAT_BLOCKS))
    names = [n.name for n in onnx.load(model_path).graph.node]
    kept = [n for n in names if n.startswith(prefixes)]
    if not any(n.startswith("stem.") for n in kept) or not any(
            n.startswith(f"blocks.{FLOAT_BLOCKS - 1}.") for n in kept):
        raise ValueError(f"unexpected node names in {model_path}: {names[:8]}...")
    return kept


class PhotoReader:
    """``CalibrationDataReader`` over preprocessed photo views, ``CALIBRATION_BATCH`` at a time."""

    def __init__(self, input_name: str, tensors: list[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = [np.concatenate(tensors[i:i + CALIBRATION_BATCH])
                        for i in range(0, len(tensors), CALIBRATION_BATCH)]
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        batch = self.batches[self.index]
        self.index += 1
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.index = 0


def int8_weights(w: np.ndarray) -> np.ndarray:
    """``w`` as ``quantize_static`` stores it (per output channel, symmetric -127..127), as floats."""
    absmax = np.abs(w).reshape(w.shape[0], -1).max(axis=1).astype(np.float32)
    scale = (absmax / np.float32(127)).astype(np.float32)
    scale[scale == 0] = 1
    scale = scale.reshape((-1,) + (1,) * (w.ndim - 1))
    return np.clip(np.round(w / scale), -127, 127).astype(np.float32) * scale


def correct_biases(model_path: str, out_path: str, excluded: set[str],
                   tensors: list[np.ndarray], input_name: str) -> int:
    """Bias correction (see the module docstring); returns how many convolutions changed."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(model_path)
    init = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node
             if n.op_type == "Conv" and n.name not in excluded and len(n.input) == 3
             and n.input[1] in init and n.input[2] in init]
    inputs = sorted({n.input[0] for n in convs})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in inputs:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(probe.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    sums = {name: np.zeros(0) for name in inputs}
    for i in range(0, len(tensors), CALIBRATION_BATCH):
        outs = sess.run(inputs, {input_name: np.concatenate(tensors[i:i + CALIBRATION_BATCH])})
        for name, value in zip(inputs, outs):
            per_image = value.astype(np.float64).mean(axis=(2, 3)).sum(axis=0)
            sums[name] = per_image if sums[name].size == 0 else sums[name] + per_image
    for node in convs:
        mean = sums[node.input[0]] / len(tensors)
        w = numpy_helper.to_array(init[node.input[1]])
        error = (w.astype(np.float64) - int8_weights(w).astype(np.float64)).sum(axis=(2, 3))
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group == 1:
            delta = error @ mean
        elif group == w.shape[0] and error.shape[1] == 1:  # depthwise
            delta = error[:, 0] * mean
        else:
            raise ValueError(f"{node.name}: grouped convolution with group {group}")
        bias = numpy_helper.to_array(init[node.input[2]]).astype(np.float64)
        init[node.input[2]].CopyFrom(
            numpy_helper.from_array((bias + delta).astype(np.float32), node.input[2]))
    onnx.save(model, out_path)
    return len(convs)


def calibration_tensors(out: str, config: dict) -> list[np.ndarray]:
    photos = photo_views.photo_files(os.path.join(out, "photos"))
    if not photos:
        raise FileNotFoundError(f"no photos in {os.path.join(out, 'photos')}: build `photos` first")
    tensors = []
    for path in photos:
        for _, tensor in photo_views.views(path, config, CALIBRATION_VIEWS_PER_PHOTO,
                                           CALIBRATION_SEED, include_original=True):
            tensors.append(tensor)
    return tensors


def quantize(fp32_path: str, int8_path: str, reader: PhotoReader) -> None:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    directory = os.path.dirname(os.path.abspath(int8_path))
    with tempfile.TemporaryDirectory(dir=directory, prefix=".int8-") as tmp:
        prepped = os.path.join(tmp, "prepped.onnx")
        # Symbolic shape inference (sympy) is for symbolic dimensions inside transformer
        # graphs; this CNN's shapes are all static but N, so ONNX shape inference does.
        quant_pre_process(fp32_path, prepped, skip_symbolic_shape=True)
        excluded = float_nodes(prepped)
        corrected = os.path.join(tmp, "corrected.onnx")
        changed = correct_biases(prepped, corrected, set(excluded),
                                 [b[i:i + 1] for b in reader.batches for i in range(len(b))],
                                 reader.input_name)
        staged = os.path.join(tmp, "int8.onnx")
        quantize_static(
            corrected,
            staged,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            nodes_to_exclude=excluded,
            extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
        )
        import onnx

        model = onnx.load(staged)
        onnx.checker.check_model(model)
        # Where it came from, readable with any ONNX tool.
        del model.metadata_props[:]
        for key, value in (
            ("sightline.source", f"{FP32}.onnx"),
            ("sightline.quantization",
             "onnxruntime.quantization.quantize_static QDQ per-channel u8 activations "
             f"s8 weights Percentile {CALIBRATION_PERCENTILE} reduce_range=False; bias correction "
             f"on {changed} convolutions; stem and blocks 0-{FLOAT_BLOCKS - 1} float32"),
            ("sightline.calibration",
             f"{len(reader.batches)} batches: every bundled photo + "
             f"{CALIBRATION_VIEWS_PER_PHOTO - 1} views each, seed {CALIBRATION_SEED}"),
        ):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        with open(staged, "wb") as f:
            f.write(model.SerializeToString())
        os.chmod(staged, 0o644)
        os.replace(staged, int8_path)


def write(out: str) -> list[str]:
    """Write the int8 model, its labels and sidecar into ``out``; returns the paths."""
    fp32_path = os.path.join(out, f"{FP32}.onnx")
    for needed in (fp32_path, os.path.join(out, f"{FP32}.json"),
                   os.path.join(out, f"{FP32}.labels.txt")):
        if not os.path.exists(needed):
            raise FileNotFoundError(f"{needed} is missing: build `{FP32}` and `photos` first")
    config = load_config(os.path.join(out, f"{FP32}.json"))
    tensors = calibration_tensors(out, config)
    reader = PhotoReader(config["input"], tensors)

    int8_path = os.path.join(out, f"{INT8}.onnx")
    quantize(fp32_path, int8_path, reader)

    labels_path = os.path.join(out, f"{INT8}.labels.txt")
    shutil.copyfile(os.path.join(out, f"{FP32}.labels.txt"), labels_path + ".tmp")
    os.replace(labels_path + ".tmp", labels_path)
    sidecar = dict(config)
    sidecar["name"] = INT8
    json_path = os.path.join(out, f"{INT8}.json")
    write_text(json_path, json.dumps(sidecar, indent=2) + "\n")
    return [int8_path, labels_path, json_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "build"))
    args = parser.parse_args(argv)
    for path in write(os.path.abspath(args.out)):
        print(f"{path} ({os.path.getsize(path):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
