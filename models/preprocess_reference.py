"""Reference image preprocessing for Sightline models (PIL + numpy).

This is the definition the Rust server's preprocessing is tested against: given an image
file and a model's preprocessing JSON (``models/build/<model>.json``) it produces the exact
float32 tensor, batch of one, the model takes as input.

The steps, in order:

1. Decode with PIL; apply the EXIF orientation tag if present (``ImageOps.exif_transpose``).
2. Convert to 8-bit RGB (``Image.convert("RGB")``: grey is replicated, palette expanded,
   an alpha channel is dropped without compositing).
3. Resize, PIL ``Image.BILINEAR`` (a triangle filter whose support widens by the scale
   factor when downscaling, i.e. antialiased), results rounded to uint8:

   * ``"shorter-side-crop"``: torchvision's ``Resize(R)`` + ``CenterCrop(size)`` on a PIL
     image.  The shorter side becomes ``R = round(size / crop_fraction)`` (256 for 224 at
     0.875), the longer side ``floor(long * R / short)``; then the centred ``size`` x
     ``size`` crop starts at ``left = round((new_w - size) / 2)``,
     ``top = round((new_h - size) / 2)`` with Python's ``round`` (ties to even, as
     torchvision: 79.5 -> 80 but 78.5 -> 78).
   * ``"stretch"``: resize straight to ``size`` x ``size``, ignoring the aspect ratio.

4. ``x = (pixel * scale - mean[c]) / std[c]`` in float32, per channel.
5. ``channels``: ``"RGB"`` keeps the order, ``"BGR"`` reverses it (after mean/std, which are
   given in the order of the model's channels).
6. ``layout``: ``"NCHW"`` -> shape [1, 3, size, size]; ``"NHWC"`` -> [1, size, size, 3].

CLI::

    python models/preprocess_reference.py IMAGE CONFIG.json OUT.npy        # numpy .npy
    python models/preprocess_reference.py IMAGE CONFIG.json OUT.bin --raw  # raw little-endian f32

The raw file holds the tensor's values in C order with no header.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
from PIL import Image, ImageOps


def load_config(path_or_dict: str | dict[str, Any]) -> dict[str, Any]:
    """Load and validate a preprocessing JSON (path) or pass a dict through validated."""
    if isinstance(path_or_dict, dict):
        config = dict(path_or_dict)
    else:
        with open(path_or_dict, encoding="utf-8") as f:
            config = json.load(f)
    size = int(config["size"])
    if size <= 0:
        raise ValueError("size must be positive")
    resize = config.get("resize", "shorter-side-crop")
    if resize not in ("shorter-side-crop", "stretch"):
        raise ValueError(f"unknown resize policy {resize!r}")
    if resize == "shorter-side-crop" and not 0.0 < float(config.get("crop_fraction", 0.875)) <= 1.0:
        raise ValueError("crop_fraction must be in (0, 1]")
    if config.get("layout", "NCHW") not in ("NCHW", "NHWC"):
        raise ValueError(f"unknown layout {config.get('layout')!r}")
    if config.get("channels", "RGB") not in ("RGB", "BGR"):
        raise ValueError(f"unknown channel order {config.get('channels')!r}")
    for key in ("mean", "std"):
        if len(config.get(key, [0, 0, 0])) != 3:
            raise ValueError(f"{key} must have 3 values")
    if any(float(s) == 0.0 for s in config.get("std", [1, 1, 1])):
        raise ValueError("std must be non-zero")
    return config


def resized_rgb(image: Image.Image, config: dict[str, Any]) -> Image.Image:
    """Steps 1-3: orientation, RGB conversion, resize (and crop). Returns a size x size RGB image."""
    image = ImageOps.exif_transpose(image)
    image = image.convert("RGB")
    size = int(config["size"])
    if config.get("resize", "shorter-side-crop") == "stretch":
        return image.resize((size, size), Image.BILINEAR)
    crop_fraction = float(config.get("crop_fraction", 0.875))
    target = int(round(size / crop_fraction))
    w, h = image.size
    if w <= h:
        new_w, new_h = target, int(target * h / w)
    else:
        new_w, new_h = int(target * w / h), target
    image = image.resize((new_w, new_h), Image.BILINEAR)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image, config: dict[str, Any]) -> np.ndarray:
    """Steps 4-6 on an already resized RGB image."""
    pixels = np.asarray(image, dtype=np.uint8).astype(np.float32)  # H, W, 3 (RGB)
    if config.get("channels", "RGB") == "BGR":
        pixels = pixels[:, :, ::-1]
    scale = np.float32(config.get("scale", 1.0 / 255.0))
    mean = np.asarray(config.get("mean", [0.0, 0.0, 0.0]), dtype=np.float32)
    std = np.asarray(config.get("std", [1.0, 1.0, 1.0]), dtype=np.float32)
    x = (pixels * scale - mean) / std
    if config.get("layout", "NCHW") == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[np.newaxis], dtype=np.float32)


def preprocess(image_path: str, config: str | dict[str, Any]) -> np.ndarray:
    """The reference input tensor (batch of one, float32) for ``image_path``."""
    config = load_config(config)
    with Image.open(image_path) as image:
        image.load()
        return to_tensor(resized_rgb(image, config), config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the reference preprocessed tensor of an image.")
    parser.add_argument("image")
    parser.add_argument("config", help="model preprocessing JSON, e.g. models/build/efficientnet-lite0.json")
    parser.add_argument("out", help="output file (.npy, or raw f32 with --raw)")
    parser.add_argument("--raw", action="store_true",
                        help="write raw little-endian float32 values (C order, no header)")
    args = parser.parse_args(argv)
    tensor = preprocess(args.image, args.config)
    if args.raw:
        with open(args.out, "wb") as f:
            f.write(tensor.astype("<f4").tobytes(order="C"))
    else:
        np.save(args.out, tensor)
    print(f"{args.out}: shape {list(tensor.shape)} float32 "
          f"min {tensor.min():.6f} max {tensor.max():.6f} mean {tensor.mean():.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
