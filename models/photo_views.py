"""Deterministic augmented views of the bundled photos (for int8 calibration and its gate).

A *view* is the original photo (EXIF orientation applied) put through, in order:

1. a crop: a random box covering 35-100 % of the picture's area, aspect ratio log-uniform in
   [3/4, 4/3] of the photo's own, anywhere inside it;
2. a horizontal flip (probability 1/2);
3. a rescale of the cropped picture by a factor in [0.3, 1] (PIL ``BILINEAR``, i.e. a
   lower-resolution camera);
4. a JPEG re-encode (Pillow, quality one of 95, 85, 75, 60, 45, 30) or none (PNG-like,
   lossless).

Every view then goes through the model's own preprocessing (``preprocess_reference``:
shorter side to 256, centre 224 crop, normalisation from the sidecar), exactly as the
server does for an uploaded image.  Views are de-duplicated on the bytes of that final
tensor, so "N views" means N distinct model inputs.

Randomness: ``numpy.random.default_rng((seed, crc32(photo name)))`` -- the same seed and
photo give the same views on every machine (Pillow's resize and JPEG codec are
deterministic for a given Pillow version, pinned in ``requirements.txt``).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import sys
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from preprocess_reference import resized_rgb, to_tensor  # noqa: E402

JPEG_QUALITIES = (None, 95, 85, 75, 60, 45, 30)
MIN_AREA = 0.35
MIN_SCALE = 0.3


@dataclass(frozen=True)
class View:
    photo: str
    box: tuple[int, int, int, int]
    flip: bool
    scale: float
    jpeg_quality: int | None

    def describe(self) -> str:
        q = "png" if self.jpeg_quality is None else f"jpeg{self.jpeg_quality}"
        return (f"{self.photo} crop={self.box} flip={int(self.flip)} "
                f"scale={self.scale:.2f} {q}")


def load_photo(path: str) -> Image.Image:
    """The photo as the model sees it before resizing: orientation applied, 8-bit RGB."""
    with Image.open(path) as image:
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")


def render(image: Image.Image, view: View) -> Image.Image:
    """Apply one view's crop, flip, rescale and JPEG round trip to ``image`` (RGB)."""
    out = image.crop(view.box)
    if view.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if view.scale < 1.0:
        w, h = out.size
        out = out.resize((max(1, round(w * view.scale)), max(1, round(h * view.scale))),
                         Image.BILINEAR)
    if view.jpeg_quality is not None:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=view.jpeg_quality)
        buf.seek(0)
        with Image.open(buf) as decoded:
            decoded.load()
            out = decoded.convert("RGB")
    return out


def _random_view(name: str, size: tuple[int, int], rng: np.random.Generator) -> View:
    w, h = size
    area = rng.uniform(MIN_AREA, 1.0) * w * h
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3))) * w / h
    cw = int(round(min(w, math.sqrt(area * ratio))))
    ch = int(round(min(h, math.sqrt(area / ratio))))
    # At least the model's input on the shorter side of the crop before rescaling.
    cw, ch = max(cw, min(w, 64)), max(ch, min(h, 64))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    flip = bool(rng.integers(0, 2))
    scale = float(round(rng.uniform(MIN_SCALE, 1.0), 2))
    quality = JPEG_QUALITIES[int(rng.integers(0, len(JPEG_QUALITIES)))]
    return View(name, (left, top, left + cw, top + ch), flip, scale, quality)


def views(path: str, config: dict[str, Any], count: int, seed: int,
          include_original: bool = False) -> list[tuple[View, np.ndarray]]:
    """``count`` distinct views of the photo at ``path`` and their model input tensors.

    With ``include_original`` the first view is the photo itself (whole picture, no flip,
    no rescale, no re-encode), i.e. what the server computes for the file as uploaded.
    """
    name = os.path.basename(path)
    image = load_photo(path)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    seen: set[bytes] = set()
    out: list[tuple[View, np.ndarray]] = []
    w, h = image.size
    candidates = []
    if include_original:
        candidates.append(View(name, (0, 0, w, h), False, 1.0, None))
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > count * 20:
            raise RuntimeError(f"{name}: only {len(out)} distinct views after {attempts} tries")
        view = candidates.pop(0) if candidates else _random_view(name, (w, h), rng)
        tensor = to_tensor(resized_rgb(render(image, view), config), config)
        digest = hashlib.sha256(tensor.tobytes()).digest()
        if digest in seen:
            continue
        seen.add(digest)
        out.append((view, tensor))
    return out


def photo_files(photos_dir: str) -> list[str]:
    """Every bundled photo (``*.png``, ``*.jpg``), sorted by name."""
    return sorted(
        os.path.join(photos_dir, f) for f in os.listdir(photos_dir)
        if f.lower().endswith((".png", ".jpg", ".jpeg")) and not f.startswith(".")
    )
