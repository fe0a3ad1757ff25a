#!/usr/bin/env python3
"""Sightline's container images, assembled from Debian packages, PyPI wheels and the release
binaries, with no base image pulled. Standard library only (Python 3.11+); the image layout
is written by Debian's `umoci`, the packages are unpacked by `dpkg-deb`.

    build.py build  --images sightline-server sightline-operator --out target/images
    build.py model  --model models/build/efficientnet-lite0.onnx --out target/images
    build.py rootfs --image sightline-server --out /rootfs     # what the Dockerfiles run
    build.py fetch  --images ...                               # just download and verify
    build.py lock                                              # re-pin debs.lock, wheels.lock

Every input is pinned by SHA-256 in `images/debs.lock` and `images/wheels.lock` and cached
under `target/images/cache/`, so a rebuild needs no network. The build is reproducible: every
file in a layer has the commit's timestamp (SOURCE_DATE_EPOCH), owner 0 (65532 for the home
directory), a normalised mode, and the entries are sorted; the configs carry the same fixed
time. Two builds of one commit give the same image digests and byte-identical archives.

The archive (`NAME.oci.tar`) is an OCI image layout with a Docker `manifest.json` beside it,
so `docker load`, `podman load`, `kind load image-archive`, `ctr images import` and
`skopeo copy oci-archive:...` all take it. docs/install.md describes using them, and the
model image format.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEBS_LOCK = HERE / "debs.lock"
WHEELS_LOCK = HERE / "wheels.lock"
DEFAULT_CACHE = REPO / "target" / "images" / "cache"

# The uid/gid every image runs as (the operator's pods use the same, runAsNonRoot).
NONROOT = 65532
SOURCE = "https://github.com/sightline/sightline"
VENDOR = "Sightline"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SECURITY_MIRROR = os.environ.get(
    "DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security"
)
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# The Debian packages of the base layer, shared by every image (one layer, one digest).
# libc6/libgcc-s1: every binary; libstdc++6: libonnxruntime.so; ca-certificates: the CA
# bundle; base-files: /etc/os-release and the licence texts; gcc-12-base: the copyright of
# libgcc-s1 and libstdc++6; zlib1g: cuDNN's libraries (170 kB, in the shared layer rather
# than a layer of its own). Nothing else: no shell, no package manager.
DEB_PACKAGES = [
    "base-files", "ca-certificates", "gcc-12-base", "libc6", "libgcc-s1", "libstdc++6", "zlib1g",
]

# PyPI requirements per runtime set. ONNX Runtime's version is the one requirements.txt pins.
WHEEL_SETS = {
    "ort-cpu": {"spec": "onnxruntime==1.31.1", "archs": ["amd64", "arm64"]},
    # onnxruntime-gpu publishes x86_64 Linux wheels only.
    "ort-gpu": {"spec": "onnxruntime-gpu[cuda,cudnn]==1.31.1", "archs": ["amd64"]},
}
WHEEL_KEEP = re.compile(r"^(onnxruntime(-gpu)?|nvidia-.*)$")

ARCHS = {
    # Debian arch -> (manylinux machine, OCI architecture)
    "amd64": ("x86_64", "amd64"),
    "arm64": ("aarch64", "arm64"),
}

ORT_DIR = "opt/onnxruntime/lib"
ORT_LIB = "/opt/onnxruntime/lib/libonnxruntime.so"
PATH_ENV = "PATH=/usr/local/bin:/usr/bin:/bin"
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"

COMMON_ENV = [
    PATH_ENV,
    "HOME=/home/nonroot",
    f"SSL_CERT_FILE=/{CA_BUNDLE}",
]
SERVER_ENV = COMMON_ENV + [
    f"SIGHTLINE_ORT_LIB={ORT_LIB}",
    "LD_LIBRARY_PATH=/opt/onnxruntime/lib",
]

LICENSES_BASE = (
    "Apache-2.0 AND LGPL-2.1-or-later AND GPL-3.0-or-later WITH GCC-exception-3.1 AND MPL-2.0"
)


@dataclass
class ImageSpec:
    name: str
    title: str
    description: str
    components: list[str]
    env: list[str]
    entrypoint: list[str]
    cmd: list[str]
    ports: list[str]
    licenses: str
    archs: list[str] = field(default_factory=lambda: ["amd64", "arm64"])


IMAGES = {
    "sightline-server": ImageSpec(
        name="sightline-server",
        title="sightline-server",
        description="Sightline image recognition server (upload, recognize, store; CPU ONNX Runtime)",
        components=["os", "ort-cpu", "bin:sightline-server"],
        env=SERVER_ENV,
        entrypoint=["/usr/local/bin/sightline-server"],
        cmd=["--help"],
        ports=["8080/tcp"],
        licenses=LICENSES_BASE + " AND MIT",
    ),
    "sightline-server-gpu": ImageSpec(
        name="sightline-server-gpu",
        title="sightline-server-gpu",
        description="Sightline image recognition server with the ONNX Runtime CUDA execution provider",
        components=["os", "ort-gpu", "bin:sightline-server"],
        # The NVIDIA container toolkit mounts the driver's libraries for these capabilities;
        # the device plugin sets NVIDIA_VISIBLE_DEVICES for the GPUs a pod was given.
        env=SERVER_ENV + ["NVIDIA_DRIVER_CAPABILITIES=compute,utility"],
        entrypoint=["/usr/local/bin/sightline-server"],
        cmd=["--help"],
        ports=["8080/tcp"],
        licenses=LICENSES_BASE + " AND MIT AND LicenseRef-NVIDIA-CUDA-EULA AND LicenseRef-NVIDIA-cuDNN-SLA",
        archs=["amd64"],
    ),
    "sightline-operator": ImageSpec(
        name="sightline-operator",
        title="sightline-operator",
        description="Sightline Kubernetes operator (ImageModel, RecognitionPipeline)",
        components=["os", "bin:sightline-operator"],
        env=COMMON_ENV,
        entrypoint=["/usr/local/bin/sightline-operator"],
        cmd=["run"],
        ports=["8081/tcp"],
        licenses=LICENSES_BASE,
    ),
}


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, **kwargs)
    except FileNotFoundError:
        sys.exit(
            f"images: `{cmd[0]}` is not installed (Debian: apt-get install {TOOLS.get(cmd[0], cmd[0])})"
        )


TOOLS = {"umoci": "umoci", "dpkg-deb": "dpkg", "strip": "binutils", "apt-get": "apt"}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def host_arch() -> str:
    machine = os.uname().machine
    for deb, (m, _) in ARCHS.items():
        if m == machine:
            return deb
    sys.exit(f"images: unsupported machine {machine}")


# --------------------------------------------------------------------------------------
# Locks


@dataclass
class Pinned:
    group: str  # "deb" or a wheel set
    arch: str
    name: str
    version: str
    sha256: str
    url: str

    @property
    def filename(self) -> str:
        return urllib.request.unquote(self.url.rsplit("/", 1)[-1])


def read_lock(path: Path) -> list[Pinned]:
    pins = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if path == DEBS_LOCK:
            arch, name, version, sha, url = parts
            pins.append(Pinned("deb", arch, name, version, sha, url))
        else:
            group, arch, name, version, sha, url = parts
            pins.append(Pinned(group, arch, name, version, sha, url))
    return pins


def private_apt(arch: str, cache: Path) -> list[str]:
    """apt-get options for a private apt root: Debian bookworm for `arch`, nothing of the host's
    package state or sources is read or changed."""
    root = cache / f"apt-{arch}"
    for d in ["lists/partial", "archives/partial", "sources.list.d", "preferences.d"]:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "status").touch()
    (root / "sources.list").write_text(
        f"deb [arch={arch} signed-by={DEBIAN_KEYRING}] {DEBIAN_MIRROR} bookworm main\n"
        f"deb [arch={arch} signed-by={DEBIAN_KEYRING}] {DEBIAN_MIRROR} bookworm-updates main\n"
        f"deb [arch={arch} signed-by={DEBIAN_KEYRING}] {DEBIAN_SECURITY_MIRROR} bookworm-security main\n"
    )
    opts = {
        "Dir::Etc::SourceList": root / "sources.list",
        "Dir::Etc::SourceParts": root / "sources.list.d",
        "Dir::Etc::PreferencesParts": root / "preferences.d",
        "Dir::State": root,
        "Dir::State::Lists": root / "lists",
        "Dir::State::status": root / "status",
        "Dir::Cache": root,
        "Dir::Cache::Archives": root / "archives",
        "APT::Architecture": arch,
        "APT::Architectures": arch,
        "Acquire::Languages": "none",
        "Debug::NoLocking": "1",
    }
    return [x for k, v in opts.items() for x in ("-o", f"{k}={v}")]


def lock(args) -> None:
    cache = Path(args.cache)
    lines = [
        "# Debian bookworm packages of the images' base layer, pinned (images/build.py lock).",
        "# arch package version sha256 url",
    ]
    for arch in args.arch:
        opts = private_apt(arch, cache)
        run(["apt-get", *opts, "-q", "update"], stdout=subprocess.DEVNULL)
        out = subprocess.run(
            ["apt-get", *opts, "download", "--print-uris", *DEB_PACKAGES],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        found = []
        for line in out.splitlines():
            m = re.match(r"^'(\S+)' (\S+) (\d+) SHA256:([0-9a-f]{64})$", line)
            if not m:
                sys.exit(f"images: unexpected apt-get output: {line}")
            url, filename, _, sha = m.groups()
            name, version, _ = filename[: -len(".deb")].split("_")
            version = urllib.request.unquote(version.replace("%3a", ":"))
            found.append(f"{arch} {name} {version} {sha} {url}")
        lines += sorted(found)
    DEBS_LOCK.write_text("\n".join(lines) + "\n")
    log(f"wrote {DEBS_LOCK}")

    pip = [args.python, "-m", "pip"]
    lines = [
        "# PyPI wheels the runtime libraries come from, pinned (images/build.py lock).",
        "# set arch name version sha256 url",
    ]
    for group, wheel_set in WHEEL_SETS.items():
        for arch in wheel_set["archs"]:
            if arch not in args.arch:
                continue
            machine = ARCHS[arch][0]
            platforms = [
                f"manylinux_2_{minor}_{machine}" for minor in (28, 27, 26, 17, 12, 5)
            ] + [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]
            with tempfile.TemporaryDirectory() as tmp:
                report = Path(tmp) / "report.json"
                run(
                    [
                        *pip, "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                        *[x for p in platforms for x in ("--platform", p)],
                        "--target", str(Path(tmp) / "t"), "--report", str(report), wheel_set["spec"],
                    ]
                )
                for item in sorted(
                    json.loads(report.read_text())["install"], key=lambda i: i["metadata"]["name"]
                ):
                    name = item["metadata"]["name"].lower()
                    if not WHEEL_KEEP.match(name):
                        continue
                    info = item["download_info"]
                    sha = info["archive_info"]["hashes"]["sha256"]
                    lines.append(
                        f"{group} {arch} {name} {item['metadata']['version']} {sha} {info['url']}"
                    )
    WHEELS_LOCK.write_text("\n".join(lines) + "\n")
    log(f"wrote {WHEELS_LOCK}")


# --------------------------------------------------------------------------------------
# Downloads (pinned, verified, cached)


def download(pin: Pinned, cache: Path) -> Path:
    target = cache / ("debs" if pin.group == "deb" else "wheels") / pin.arch / pin.filename
    if target.exists() and sha256_file(target) == pin.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    url = pin.url
    if pin.group == "deb":
        # Let DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR point at another mirror of the same archive.
        url = re.sub(r"^https?://deb\.debian\.org/debian-security", DEBIAN_SECURITY_MIRROR, url)
        url = re.sub(r"^https?://deb\.debian\.org/debian(?=/)", DEBIAN_MIRROR, url)
    log(f"downloading {pin.filename}")
    partial = target.with_suffix(target.suffix + ".partial")
    last_error = None
    for attempt in range(3):
        try:
            with urllib.request.urlopen(url, timeout=120) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
            break
        except OSError as e:  # urllib.error.URLError is an OSError
            last_error = e
            time.sleep(2 * (attempt + 1))
    else:
        hint = (
            " (a pinned Debian version leaves the mirror when a newer one is published: "
            "`make images-lock` pins the current ones)"
            if pin.group == "deb"
            else ""
        )
        sys.exit(f"images: cannot download {url}: {last_error}{hint}")
    actual = sha256_file(partial)
    if actual != pin.sha256:
        partial.unlink()
        sys.exit(f"images: {pin.filename}: sha256 {actual}, the lock pins {pin.sha256}")
    partial.rename(target)
    return target


def pins_for(components: list[str], arch: str) -> list[Pinned]:
    pins = []
    for c in components:
        if c == "os":
            pins += [p for p in read_lock(DEBS_LOCK) if p.arch == arch]
        elif c.startswith("ort-"):
            found = [p for p in read_lock(WHEELS_LOCK) if p.group == c and p.arch == arch]
            if not found:
                sys.exit(f"images: {WHEELS_LOCK.name} has no {c} wheels for {arch}")
            pins += found
    return pins


# --------------------------------------------------------------------------------------
# Components: directories of files, one layer each


def clean_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def stage_os(out: Path, debs: list[tuple[Pinned, Path]]) -> None:
    """The base layer: the packages' files, pruned to what runs and what their licences
    require, plus users, NSS, the CA bundle and the package database for scanners."""
    extracted = out.parent / (out.name + ".debs")
    clean_dir(extracted)
    status_d = out / "var/lib/dpkg/status.d"
    status_d.mkdir(parents=True)
    for pin, deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(extracted)])
        control = subprocess.run(
            ["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True
        ).stdout
        # What distroless writes: scanners (Trivy, Grype, Syft) read this to list packages.
        (status_d / pin.name).write_text(control.rstrip("\n") + "\n")

    def keep(rel: str) -> bool:
        parts = rel.split("/")
        if rel.startswith("usr/share/doc/"):
            return len(parts) == 5 and parts[4] == "copyright"
        if rel.startswith("usr/share/common-licenses/"):
            return True
        if re.match(r"^(usr/)?lib(64)?/", rel):
            # Shared libraries and the dynamic loader; not gconv (no iconv here) or audit.
            return "/gconv/" not in rel and "/audit/" not in rel and not rel.endswith(".py")
        if rel in ("etc/os-release", "usr/lib/os-release", "etc/debian_version"):
            return True
        if rel.startswith("etc/ld.so.conf"):
            return True
        return False

    for src in sorted(extracted.rglob("*")):
        rel = src.relative_to(extracted).as_posix()
        if src.is_dir() and not src.is_symlink():
            continue
        if not keep(rel):
            continue
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)

    # The CA bundle, as update-ca-certificates builds it (every Mozilla certificate the
    # package ships, in file-name order).
    certs = sorted((extracted / "usr/share/ca-certificates/mozilla").glob("*.crt"))
    if len(certs) < 100:
        sys.exit(f"images: only {len(certs)} CA certificates in ca-certificates")
    bundle = out / CA_BUNDLE
    bundle.parent.mkdir(parents=True, exist_ok=True)
    with open(bundle, "w") as f:
        for cert in certs:
            text = cert.read_text()
            f.write(text if text.endswith("\n") else text + "\n")
    shutil.rmtree(extracted)

    etc = out / "etc"
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/sbin/nologin\n"
        f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\nnonroot:x:{NONROOT}:\nnogroup:x:65534:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    for d in ["tmp", "home/nonroot", "usr/local/bin", "root"]:
        (out / d).mkdir(parents=True, exist_ok=True)


def stage_wheels(out: Path, group: str, wheels: list[tuple[Pinned, Path]]) -> None:
    """ONNX Runtime's shared library (and, for the GPU set, the CUDA/cuDNN libraries) out of
    the wheels, at /opt/onnxruntime/lib; their licences under /usr/share/doc/<wheel>/."""
    lib = out / ORT_DIR
    lib.mkdir(parents=True)
    for pin, whl in wheels:
        docs = out / "usr/share/doc" / pin.name
        with zipfile.ZipFile(whl) as z:
            for info in sorted(z.infolist(), key=lambda i: i.filename):
                name = info.filename
                if name.endswith("/"):
                    continue
                base = name.rsplit("/", 1)[-1]
                target = None
                if pin.name.startswith("onnxruntime"):
                    if re.match(r"^onnxruntime/capi/libonnxruntime\.so(\.[0-9.]+)?$", name):
                        target = lib / "libonnxruntime.so"
                    elif name in (
                        "onnxruntime/capi/libonnxruntime_providers_shared.so",
                        "onnxruntime/capi/libonnxruntime_providers_cuda.so",
                    ):
                        # Not TensorRT's provider: it needs TensorRT, which is not here.
                        target = lib / base
                    elif name in ("onnxruntime/LICENSE", "onnxruntime/ThirdPartyNotices.txt"):
                        target = docs / base
                elif pin.name.startswith("nvidia-"):
                    if re.match(r"^nvidia/.*/lib/[^/]+\.so(\.[0-9]+)*$", name):
                        target = lib / base
                if target is None and re.match(
                    r"^[^/]+\.dist-info/(licenses/)?(LICENSE|License|COPYING|NOTICE)[^/]*$", name
                ):
                    target = docs / base
                if target is None:
                    continue
                if target.exists():
                    sys.exit(f"images: {base} comes from two wheels")
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                if target.parent == lib:
                    target.chmod(0o755)
    if any(p.name.startswith("onnxruntime") for p, _ in wheels) and not (lib / "libonnxruntime.so").exists():
        sys.exit(f"images: no libonnxruntime.so in the {group} wheels")


def stage_binary(out: Path, name: str, bin_dir: Path) -> None:
    src = bin_dir / name
    if not src.exists():
        sys.exit(f"images: {src} is missing: cargo build --release -p {name}")
    dst = out / "usr/local/bin" / name
    dst.parent.mkdir(parents=True)
    # Debug line tables off (the release profile keeps them for local backtraces); symbols
    # stay, so a panic's backtrace still names the functions.
    run(["strip", "--strip-debug", "-o", str(dst), str(src)])
    dst.chmod(0o755)


def wheel_layer(name: str) -> str:
    """Which layer a wheel's files go to: the GPU runtime is split so that no layer is much
    over 1 GB (registries and pulls cope better, and a build needs less scratch space)."""
    if name.startswith("onnxruntime"):
        return "onnxruntime"
    if name.startswith("nvidia-cudnn"):
        return "cudnn"
    if name.startswith("nvidia-cublas"):
        return "cublas"
    return "cuda"


def layer_units(component: str, arch: str) -> list[str]:
    """The layers of a component: `os`, `bin:NAME`, or `ort-SET/GROUP` for each wheel group."""
    if component.startswith("ort-"):
        groups = sorted({wheel_layer(p.name) for p in pins_for([component], arch)},
                        key=["onnxruntime", "cuda", "cublas", "cudnn"].index)
        return [f"{component}/{g}" for g in groups]
    return [component]


def stage(unit: str, arch: str, out: Path, cache: Path, bin_dir: Path | None) -> None:
    clean_dir(out)
    if unit == "os":
        pins = pins_for(["os"], arch)
        stage_os(out, [(p, download(p, cache)) for p in pins])
    elif unit.startswith("ort-"):
        component, group = unit.split("/")
        pins = [p for p in pins_for([component], arch) if wheel_layer(p.name) == group]
        stage_wheels(out, component, [(p, download(p, cache)) for p in pins])
    elif unit.startswith("bin:"):
        assert bin_dir is not None
        stage_binary(out, unit[4:], bin_dir)
    else:
        raise ValueError(unit)


def tree_size(root: Path) -> int:
    return sum(p.lstat().st_size for _, p in tree_entries(root) if p.is_file() and not p.is_symlink())


# --------------------------------------------------------------------------------------
# Deterministic layers


def owner(rel: str) -> int:
    return NONROOT if rel == "home/nonroot" or rel.startswith("home/nonroot/") else 0


def normal_mode(rel: str, st: os.stat_result) -> int:
    if stat.S_ISDIR(st.st_mode):
        return 0o1777 if rel == "tmp" else 0o755
    if stat.S_ISLNK(st.st_mode):
        return 0o777
    return 0o755 if st.st_mode & 0o111 else 0o644


def tree_entries(root: Path) -> list[tuple[str, Path]]:
    """Every path under root, sorted, each directory before what it holds."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            entries.append((path.relative_to(root).as_posix(), path))
    return sorted(entries)


def write_layer(root: Path, tar_path: Path, mtime: int) -> None:
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in tree_entries(root):
            st = path.lstat()
            info = tarfile.TarInfo(rel)
            info.mtime = mtime
            info.uid = info.gid = owner(rel)
            info.uname = info.gname = ""
            info.mode = normal_mode(rel, st)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                sys.exit(f"images: {path} is not a file, directory or symlink")


def apply_ownership(root: Path) -> None:
    """On disk, for the Dockerfiles' `COPY --from=rootfs`: the same owners and modes as the
    layers (needs root for the owners)."""
    for rel, path in tree_entries(root):
        st = path.lstat()
        if not stat.S_ISLNK(st.st_mode):
            path.chmod(normal_mode(rel, st))
        if os.geteuid() == 0:
            os.lchown(path, owner(rel), owner(rel))


# --------------------------------------------------------------------------------------
# Build metadata


def git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", "--no-optional-locks", "-C", str(REPO), *args],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def source_date_epoch() -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    return int(git("log", "-1", "--format=%ct") or 0)


def crate_version() -> str:
    text = (REPO / "inference-server/Cargo.toml").read_text()
    return re.search(r'(?m)^version\s*=\s*"([^"]+)"', text).group(1)


def rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# --------------------------------------------------------------------------------------
# OCI layout and archive (umoci writes the layout; the archive is written here, sorted)


def umoci_new(layout: Path, tag: str) -> str:
    if not (layout / "oci-layout").exists():
        run(["umoci", "init", "--layout", str(layout)])
    ref = f"{layout}:{tag}"
    run(["umoci", "new", "--image", ref])
    return ref


def umoci_add(ref: str, tar_path: Path, what: str, created: str) -> None:
    run([
        "umoci", "raw", "add-layer", "--image", ref,
        "--history.created", created, "--history.created_by", what, str(tar_path),
    ])


def umoci_config(ref: str, oci_arch: str, created: str, config_args: list[str]) -> None:
    run([
        "umoci", "config", "--image", ref, "--no-history", "--created", created,
        "--os", "linux", "--architecture", oci_arch, *config_args,
    ])


def umoci_image(layout: Path, tag: str, layers: list[tuple[Path, str]], oci_arch: str,
                created: str, config_args: list[str]) -> None:
    ref = umoci_new(layout, tag)
    for tar_path, what in layers:
        umoci_add(ref, tar_path, what, created)
    umoci_config(ref, oci_arch, created, config_args)


def index_entries(layout: Path) -> list[dict]:
    return json.loads((layout / "index.json").read_text())["manifests"]


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs/sha256" / digest.split(":", 1)[1]).read_bytes()


def add_blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def finish_archive(layout: Path, ref: str, top: dict, docker_manifest: dict | None, out: Path, mtime: int) -> None:
    """index.json names the image the way every loader reads it; manifest.json (Docker's
    archive format) lets `docker load` of any version take the same file."""
    top = dict(top)
    top["annotations"] = {
        "io.containerd.image.name": ref,
        "org.opencontainers.image.ref.name": ref,
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [top]}
    (layout / "index.json").write_text(json.dumps(index, separators=(",", ":"), sort_keys=True))
    if docker_manifest is not None:
        (layout / "manifest.json").write_text(
            json.dumps([docker_manifest], separators=(",", ":"), sort_keys=True)
        )
    # Only the blobs the index reaches (umoci leaves the intermediate configs behind).
    reachable = set()

    def walk(desc: dict) -> None:
        reachable.add(desc["digest"].split(":", 1)[1])
        if desc["mediaType"].endswith("index.v1+json") or desc["mediaType"].endswith("manifest.v1+json"):
            doc = json.loads(blob(layout, desc["digest"]))
            for child in doc.get("manifests", []):
                walk(child)
            if "config" in doc:
                walk(doc["config"])
            for layer in doc.get("layers", []):
                walk(layer)

    walk(top)
    for f in (layout / "blobs/sha256").iterdir():
        if f.name not in reachable:
            f.unlink()
    tmp = out.with_suffix(out.suffix + ".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in tree_entries(layout):
            st = path.lstat()
            info = tarfile.TarInfo(rel)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, st.st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
                # The layout is scratch: moving the blobs keeps one copy on disk, not two.
                path.unlink()
    tmp.rename(out)


def docker_entry(layout: Path, manifest_desc: dict, ref: str) -> dict:
    manifest = json.loads(blob(layout, manifest_desc["digest"]))
    return {
        "Config": "blobs/sha256/" + manifest["config"]["digest"].split(":", 1)[1],
        "RepoTags": [ref],
        "Layers": ["blobs/sha256/" + l["digest"].split(":", 1)[1] for l in manifest["layers"]],
    }


def pull_size(layout: Path, manifest_desc: dict) -> int:
    """Compressed size of config and layers: what a node pulls."""
    manifest = json.loads(blob(layout, manifest_desc["digest"]))
    return manifest["config"]["size"] + sum(l["size"] for l in manifest["layers"])


def build_images(args) -> None:
    cache, out_dir = Path(args.cache), Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch = args.arch or host_arch()
    oci_arch = ARCHS[arch][1]
    epoch = source_date_epoch()
    created = rfc3339(epoch)
    version = args.version or crate_version()
    revision = args.revision or git("rev-parse", "HEAD") or "unknown"
    work = Path(args.work) if args.work else out_dir / f".work-{arch}"
    clean_dir(work)
    summary = []
    plans = {}
    for name in args.images:
        spec = IMAGES[name]
        if arch not in spec.archs:
            sys.exit(f"images: {name} is not built for {arch}")
        plans[name] = [u for c in spec.components for u in layer_units(c, arch)]
    # A layer tar is kept while a later image still uses it (the base layer, the server
    # binary), and deleted after its last use: the GPU image needs a few GB of scratch.
    uses: dict[str, int] = {}
    for units in plans.values():
        for u in units:
            uses[u] = uses.get(u, 0) + 1
    tars: dict[str, Path] = {}
    unpacked_sizes: dict[str, int] = {}
    for name, units in plans.items():
        spec = IMAGES[name]
        ref = f"{args.registry}/{name}:{args.tag or version}"
        labels = {
            "org.opencontainers.image.title": spec.title,
            "org.opencontainers.image.description": spec.description,
            "org.opencontainers.image.source": SOURCE,
            "org.opencontainers.image.revision": revision,
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.licenses": spec.licenses,
            "org.opencontainers.image.vendor": VENDOR,
            "org.opencontainers.image.created": created,
        }
        config_args = ["--config.user", f"{NONROOT}:{NONROOT}", "--config.workingdir", "/"]
        for e in spec.env:
            config_args += ["--config.env", e]
        for e in spec.entrypoint:
            config_args += ["--config.entrypoint", e]
        for c in spec.cmd:
            config_args += ["--config.cmd", c]
        for p in spec.ports:
            config_args += ["--config.exposedports", p]
        for k, v in labels.items():
            config_args += ["--config.label", f"{k}={v}", "--manifest.annotation", f"{k}={v}"]
        layout = work / f"layout-{name}"
        image = umoci_new(layout, name)
        for unit in units:
            if unit not in tars:
                safe = unit.replace(":", "-").replace("/", "-")
                staging = work / "stage" / safe
                stage(unit, arch, staging, cache, Path(args.bin_dir))
                unpacked_sizes[unit] = tree_size(staging)
                tars[unit] = work / f"{safe}.tar"
                write_layer(staging, tars[unit], epoch)
                shutil.rmtree(staging)
            umoci_add(image, tars[unit], describe(unit, arch), created)
            uses[unit] -= 1
            if uses[unit] == 0:
                tars.pop(unit).unlink()
        umoci_config(image, oci_arch, created, config_args)
        (desc,) = index_entries(layout)
        desc = {k: desc[k] for k in ("mediaType", "digest", "size")}
        desc["platform"] = {"architecture": oci_arch, "os": "linux"}
        docker = docker_entry(layout, desc, ref)
        suffix = "" if arch == host_arch() and not args.arch_suffix else "-" + arch
        archive = out_dir / f"{name}{suffix}.oci.tar"
        compressed = pull_size(layout, desc)
        unpacked = sum(unpacked_sizes[u] for u in units)
        finish_archive(layout, ref, desc, docker, archive, epoch)
        shutil.rmtree(layout)
        summary.append({
            "image": name, "ref": ref, "arch": arch, "archive": str(archive),
            "digest": desc["digest"], "archive_sha256": sha256_file(archive),
            "compressed_bytes": compressed, "unpacked_bytes": unpacked,
            "layers": len(units),
        })
        log(f"{ref} ({arch}) {desc['digest']}: {compressed / 1e6:.1f} MB compressed, "
            f"{unpacked / 1e6:.1f} MB unpacked -> {archive}")
    if not args.keep_work:
        shutil.rmtree(work)
    summary_path = out_dir / f"images-{arch}.json"
    # Keep the entries of images this run did not build.
    previous = json.loads(summary_path.read_text()) if summary_path.exists() else []
    built = {e["image"] for e in summary}
    merged = [e for e in previous if e.get("image") not in built] + summary
    summary_path.write_text(json.dumps(sorted(merged, key=lambda e: e["image"]), indent=2) + "\n")


def describe(unit: str, arch: str) -> str:
    if unit == "os":
        pkgs = [f"{p.name}={p.version}" for p in pins_for(["os"], arch)]
        return "Debian bookworm: " + " ".join(pkgs)
    if unit.startswith("ort-"):
        component, group = unit.split("/")
        pins = [p for p in pins_for([component], arch) if wheel_layer(p.name) == group]
        return "PyPI: " + " ".join(f"{p.name}=={p.version}" for p in pins)
    return f"release binary: {unit[4:]}"


def rootfs(args) -> None:
    """The files of an image apart from its binaries, on disk: what the Dockerfiles copy."""
    spec = IMAGES[args.image]
    arch = args.arch or host_arch()
    out = Path(args.out)
    clean_dir(out)
    units = [u for c in spec.components if not c.startswith("bin:") for u in layer_units(c, arch)]
    for unit in units:
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            staging = Path(tmp) / "stage"
            stage(unit, arch, staging, Path(args.cache), None)
            for rel, path in tree_entries(staging):
                dst = out / rel
                if path.is_dir() and not path.is_symlink():
                    dst.mkdir(parents=True, exist_ok=True)
                elif dst.exists() or dst.is_symlink():
                    sys.exit(f"images: {rel} comes from two layers of {args.image}")
                elif path.is_symlink():
                    os.symlink(os.readlink(path), dst)
                else:
                    shutil.move(path, dst)
    apply_ownership(out)


def fetch(args) -> None:
    arch = args.arch or host_arch()
    components = sorted({c for n in args.images for c in IMAGES[n].components if not c.startswith("bin:")})
    for pin in pins_for(components, arch):
        download(pin, Path(args.cache))
    log(f"{len(pins_for(components, arch))} pinned files in {args.cache}")


# --------------------------------------------------------------------------------------
# Model images


def model_image(args) -> None:
    """A model, its labels and its preprocessing sidecar as an OCI image: files at the root
    (`/model.onnx`, `/model.labels.txt`, `/model.json`), no binaries, one layer, for linux/amd64
    and linux/arm64 (the same layer), so that a Kubernetes image volume mounts it anywhere."""
    model = Path(args.model)
    if not model.exists():
        sys.exit(f"images: {model} is missing (make models)")
    stem = model.name[: -len(".onnx")] if model.name.endswith(".onnx") else model.stem
    labels = Path(args.labels) if args.labels else model.with_name(stem + ".labels.txt")
    sidecar = Path(args.config) if args.config else model.with_name(stem + ".json")
    name = args.name or stem
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    epoch = source_date_epoch() if args.created is None else int(args.created)
    created = rfc3339(epoch)
    digest = sha256_file(model)
    tag = args.tag or digest[:12]
    ref = f"{args.registry}/{args.repository or 'sightline-model-' + name}:{tag}"
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        work = Path(tmp)
        files = work / "files"
        files.mkdir()
        shutil.copyfile(model, files / "model.onnx")
        annotations = {
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.description": f"Sightline model {name}: ONNX classifier, labels and preprocessing",
            "org.opencontainers.image.source": SOURCE,
            "org.opencontainers.image.revision": git("rev-parse", "HEAD") or "unknown",
            "org.opencontainers.image.version": tag,
            "org.opencontainers.image.licenses": args.license,
            "org.opencontainers.image.vendor": VENDOR,
            "org.opencontainers.image.created": created,
            "io.sightline.model.name": name,
            "io.sightline.model.file": "model.onnx",
            "io.sightline.model.sha256": digest,
        }
        if labels.exists():
            shutil.copyfile(labels, files / "model.labels.txt")
            annotations["io.sightline.model.labels"] = "model.labels.txt"
            annotations["io.sightline.model.labels.sha256"] = sha256_file(labels)
            annotations["io.sightline.model.classes"] = str(
                sum(1 for line in labels.read_text().splitlines() if line.strip())
            )
        elif args.labels:
            sys.exit(f"images: {labels} is missing")
        if sidecar.exists():
            shutil.copyfile(sidecar, files / "model.json")
            annotations["io.sightline.model.config"] = "model.json"
            annotations["io.sightline.model.config.sha256"] = sha256_file(sidecar)
        elif args.config:
            sys.exit(f"images: {sidecar} is missing")
        layer = work / "model.tar"
        write_layer(files, layer, epoch)
        layout = work / "layout"
        config_args = ["--config.user", f"{NONROOT}:{NONROOT}", "--config.workingdir", "/"]
        for k, v in annotations.items():
            config_args += ["--config.label", f"{k}={v}", "--manifest.annotation", f"{k}={v}"]
        manifests = []
        for arch in ("amd64", "arm64"):
            oci_arch = ARCHS[arch][1]
            umoci_image(layout, f"model-{arch}", [(layer, f"model {name} sha256:{digest}")], oci_arch, created, config_args)
        for entry in index_entries(layout):
            arch = entry["annotations"]["org.opencontainers.image.ref.name"].split("-", 1)[1]
            manifests.append({
                "mediaType": entry["mediaType"], "digest": entry["digest"], "size": entry["size"],
                "platform": {"architecture": ARCHS[arch][1], "os": "linux"},
            })
        manifests.sort(key=lambda m: m["platform"]["architecture"])
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
            "annotations": annotations,
        }
        top = add_blob(layout, json.dumps(index, separators=(",", ":"), sort_keys=True).encode())
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", **top}
        host = next(m for m in manifests if m["platform"]["architecture"] == ARCHS[host_arch()][1])
        archive = out_dir / f"model-{name}.oci.tar"
        finish_archive(layout, ref, top, docker_entry(layout, host, ref), archive, epoch)
    info = {"model": name, "ref": ref, "archive": str(archive), "digest": top["digest"],
            "archive_sha256": sha256_file(archive), "model_sha256": digest}
    (out_dir / f"model-{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"{ref} {top['digest']} -> {archive}")


# --------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=os.environ.get("SIGHTLINE_IMAGES_CACHE", str(DEFAULT_CACHE)))
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="OCI archives of the images")
    b.add_argument("--images", nargs="+", default=list(IMAGES), choices=list(IMAGES))
    b.add_argument("--out", required=True)
    b.add_argument("--arch", choices=list(ARCHS))
    b.add_argument("--arch-suffix", action="store_true", help="name archives NAME-ARCH.oci.tar")
    b.add_argument("--bin-dir", default=str(REPO / "target/release"))
    b.add_argument("--registry", default=os.environ.get("REGISTRY", "ghcr.io/sightline"))
    b.add_argument("--tag", default=os.environ.get("TAG"), help="default: the crate version")
    b.add_argument("--version", help="org.opencontainers.image.version (default: the crate version)")
    b.add_argument("--revision", help="default: git rev-parse HEAD")
    b.add_argument("--work", help="scratch directory (default: OUT/.work-ARCH)")
    b.add_argument("--keep-work", action="store_true")
    b.set_defaults(func=build_images)

    r = sub.add_parser("rootfs", help="an image's files without its binaries, into a directory")
    r.add_argument("--image", required=True, choices=list(IMAGES))
    r.add_argument("--out", required=True)
    r.add_argument("--arch", choices=list(ARCHS))
    r.set_defaults(func=rootfs)

    f = sub.add_parser("fetch", help="download and verify the pinned inputs")
    f.add_argument("--images", nargs="+", default=list(IMAGES), choices=list(IMAGES))
    f.add_argument("--arch", choices=list(ARCHS))
    f.set_defaults(func=fetch)

    m = sub.add_parser("model", help="a model image")
    m.add_argument("--model", required=True, help="the .onnx file")
    m.add_argument("--labels", help="default: <model>.labels.txt beside it")
    m.add_argument("--config", help="preprocessing sidecar, default: <model>.json beside it")
    m.add_argument("--name", help="default: the file name without .onnx")
    m.add_argument("--out", required=True)
    m.add_argument("--registry", default=os.environ.get("REGISTRY", "ghcr.io/sightline"))
    m.add_argument("--repository", help="default: sightline-model-NAME")
    m.add_argument("--tag", help="default: the first 12 hex digits of the model's sha256")
    m.add_argument("--license", default="NOASSERTION", help="SPDX expression of the model's licence")
    m.add_argument("--created", help="seconds since the epoch (default: SOURCE_DATE_EPOCH or the commit time)")
    m.set_defaults(func=model_image)

    l = sub.add_parser("lock", help="pin the current Debian packages and wheels (network)")
    l.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    l.add_argument("--python", default=str(REPO / ".venv/bin/python"), help="a Python with pip")
    l.set_defaults(func=lock)

    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
