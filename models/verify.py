"""Verify the built models with ONNX Runtime (Python) and the reference preprocessing.

Usage::

    python models/verify.py [--out models/build] [--ablation]

Checks (exit status 1 if any fails):

1. ``efficientnet-lite0``: every photo in ``photos/expected.json`` has a top-1 class in its
   accepted list, every photo in ``photos/expected-top5.json`` has one in its top 5.
   Preprocessing comes from ``efficientnet-lite0.json`` via :mod:`preprocess_reference`.
   Prints the top 5 (softmax of the logits) per photo.
2. The same photos run as one batch give the same logits as one by one (dynamic batch).
3. The ONNX graph (BN folded) matches an independent float64 numpy forward pass of the
   *unfolded* checkpoint on one photo (``efficientnet_lite0.reference_forward``).
4. ``test-classifier``: pure red, green and blue images (and mostly-red/green/blue ones)
   give their colour with probability > 0.9; the outputs already sum to 1.
5. ``resnet50-random`` (if built): logits [N,1000], finite, different for different images.

``--ablation`` additionally rebuilds EfficientNet-Lite0 with symmetric padding and compares
padding x normalisation x channel order on 40 crops/flips per photo: the evidence for the
choices in ``efficientnet-lite0.json`` (see README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from preprocess_reference import load_config, preprocess, to_tensor, resized_rgb  # noqa: E402

FAILURES: list[str] = []


def check(ok: bool, message: str) -> None:
    print(("  ok   " if ok else "  FAIL ") + message)
    if not ok:
        FAILURES.append(message)


def session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def verify_efficientnet(out: str) -> None:
    print("== efficientnet-lite0: photos")
    config = load_config(os.path.join(out, "efficientnet-lite0.json"))
    with open(os.path.join(out, "efficientnet-lite0.labels.txt"), encoding="utf-8") as f:
        labels = [line.rstrip("\n") for line in f]
    check(len(labels) == 1000, f"1000 labels (got {len(labels)})")
    sess = session(os.path.join(out, "efficientnet-lite0.onnx"))
    check([i.name for i in sess.get_inputs()] == [config["input"]]
          and [o.name for o in sess.get_outputs()] == [config["output"]],
          f"input/output names {config['input']!r} -> {config['output']!r}")

    photos = os.path.join(out, "photos")
    with open(os.path.join(photos, "expected.json"), encoding="utf-8") as f:
        top1 = json.load(f)
    with open(os.path.join(photos, "expected-top5.json"), encoding="utf-8") as f:
        top5 = json.load(f)
    names = sorted(top1) + sorted(top5)
    batch = []
    for name in names:
        x = preprocess(os.path.join(photos, name), config)
        batch.append(x)
        logits = sess.run(None, {config["input"]: x})[0][0]
        probs = softmax(logits)
        order = np.argsort(-probs)[:5]
        print(f"  {name}:")
        for rank, idx in enumerate(order, 1):
            print(f"      {rank}. {idx:4d} {probs[idx]:.4f}  {labels[idx]}")
        if name in top1:
            ok = int(order[0]) in top1[name]
            check(ok, f"{name}: top-1 {order[0]} ({labels[order[0]].split(',')[0]}, "
                      f"p={probs[order[0]]:.3f}) in {top1[name]}")
        else:
            hit = [int(i) for i in order if int(i) in top5[name]]
            check(bool(hit), f"{name}: top-5 contains one of {top5[name]} "
                             f"(rank {[list(order).index(h) + 1 for h in hit]})")

    print("== efficientnet-lite0: dynamic batch")
    single = np.concatenate([sess.run(None, {config["input"]: x})[0] for x in batch])
    together = sess.run(None, {config["input"]: np.concatenate(batch)})[0]
    diff = float(np.abs(single - together).max())
    check(together.shape == (len(batch), 1000) and diff < 1e-3,
          f"batch of {len(batch)}: shape {together.shape}, max |diff| vs singles {diff:.2e}")

    print("== efficientnet-lite0: ONNX graph vs numpy reference of the unfolded checkpoint")
    import efficientnet_lite0

    x = batch[0]
    ref = efficientnet_lite0.reference_forward(x.astype(np.float64))
    got = sess.run(None, {config["input"]: x})[0]
    diff = float(np.abs(ref - got).max())
    check(diff < 1e-3 and int(ref.argmax()) == int(got.argmax()),
          f"{names[0]}: max |logit diff| {diff:.2e}")


def verify_test_classifier(out: str) -> None:
    print("== test-classifier")
    config = load_config(os.path.join(out, "test-classifier.json"))
    with open(os.path.join(out, "test-classifier.labels.txt"), encoding="utf-8") as f:
        labels = [line.rstrip("\n") for line in f]
    check(labels == ["red", "green", "blue"], f"labels {labels}")
    sess = session(os.path.join(out, "test-classifier.onnx"))
    check(sess.get_outputs()[0].name == "probabilities" and config["softmax"] is True,
          "output 'probabilities', json says softmax: true")
    colours = {
        "red": [(255, 0, 0), (204, 51, 51), (230, 80, 60)],
        "green": [(0, 255, 0), (51, 204, 51)],
        "blue": [(0, 0, 255), (51, 51, 204)],
    }
    for expected, rgbs in colours.items():
        for rgb in rgbs:
            # Odd size on purpose: goes through the "stretch" resize.
            image = Image.new("RGB", (57, 41), rgb)
            x = to_tensor(resized_rgb(image, config), config)
            p = sess.run(None, {config["input"]: x})[0][0]
            best = labels[int(p.argmax())]
            check(best == expected and p.max() > 0.9 and abs(float(p.sum()) - 1.0) < 1e-5,
                  f"{rgb} -> {best} {p.max():.5f} (probs {[round(float(v), 5) for v in p]})")
    x = np.zeros((4, 3, 32, 32), np.float32)
    p = sess.run(None, {config["input"]: x})[0]
    check(p.shape == (4, 3) and np.allclose(p, 1 / 3, atol=1e-6), f"black batch of 4 -> uniform {p.shape}")


def verify_resnet(out: str) -> None:
    path = os.path.join(out, "resnet50-random.onnx")
    if not os.path.exists(path):
        print("== resnet50-random: not built, skipped")
        return
    print("== resnet50-random")
    config = load_config(os.path.join(out, "resnet50-random.json"))
    sess = session(path)
    photos = os.path.join(out, "photos")
    x = np.concatenate([preprocess(os.path.join(photos, n), config)
                        for n in ("chelsea.png", "coffee.png")])
    logits = sess.run(None, {config["input"]: x})[0]
    check(logits.shape == (2, 1000) and bool(np.isfinite(logits).all()),
          f"logits shape {logits.shape}, finite")
    check(float(logits.std()) > 0.05 and float(np.abs(logits[0] - logits[1]).max()) > 1e-3,
          f"logits std {logits.std():.3f}, images differ by {np.abs(logits[0] - logits[1]).max():.3f}")


def ablation(out: str) -> None:
    """Compare padding / normalisation / channel order on crops and flips of the photos."""
    import efficientnet_lite0
    import photos
    from onnx_util import save_checked

    print("== ablation: mean NLL of the accepted classes and top-1 accuracy over 40 views/photo")
    views = {}
    for name, accept in photos.EXPECTED_TOP1.items():
        if name in photos.JPEG_COPIES:
            continue
        with Image.open(os.path.join(out, "photos", name)) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        side = min(w, h)
        arrays = []
        for frac in (0.6, 0.75, 0.875, 1.0):
            c = int(side * frac)
            for dx, dy in ((0.5, 0.5), (0.3, 0.5), (0.7, 0.5), (0.5, 0.3), (0.5, 0.7)):
                left, top = int((w - c) * dx), int((h - c) * dy)
                v = im.crop((left, top, left + c, top + c)).resize((224, 224), Image.BILINEAR)
                arrays += [np.asarray(v, np.float32), np.asarray(ImageOps.mirror(v), np.float32)]
        views[name] = (np.stack(arrays), accept)
    norms = {
        "mean127/std128": ([127.0] * 3, [128.0] * 3),
        "imagenet-mean/std": ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for padding in ("same", "symmetric"):
            path = os.path.join(tmp, f"{padding}.onnx")
            save_checked(efficientnet_lite0.build(padding=padding), path)
            sess = session(path)
            for norm, (mean, std) in norms.items():
                for order in ("RGB", "BGR"):
                    nll, acc = [], []
                    for arr, accept in views.values():
                        a = arr[..., ::-1] if order == "BGR" else arr
                        x = ((a - np.float32(mean)) / np.float32(std)).transpose(0, 3, 1, 2)
                        p = softmax(sess.run(None, {"input": np.ascontiguousarray(x, np.float32)})[0])
                        nll.append(float(-np.log(p[:, accept].sum(axis=1)).mean()))
                        acc.append(float(np.isin(p.argmax(axis=1), accept).mean()))
                    print(f"  padding={padding:9s} {norm:17s} {order}: NLL {np.mean(nll):.3f}  "
                          f"top-1 acc {np.mean(acc):.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify the built Sightline models.")
    parser.add_argument("--out", default=os.path.join(HERE, "build"))
    parser.add_argument("--ablation", action="store_true",
                        help="also compare padding/normalisation/channel-order variants")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    verify_efficientnet(out)
    verify_test_classifier(out)
    verify_resnet(out)
    if args.ablation:
        ablation(out)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) FAILED")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
