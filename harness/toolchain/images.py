"""The project's images: ``docker/<name>/Dockerfile`` (toolchain-tf[:TF], toolchain-torch, device-linux,
device-linux-native, android-runner) resolved to an :class:`ImageSpec` with its pinned versions, and built on the local
base image (:mod:`harness.toolchain.rootfs`) when there is one."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rich.console import Console

from harness.errors import HarnessError
from harness.toolchain.engine import detect_engine, say
from harness.toolchain.rootfs import base_image_ref, check_arch, ensure_binfmt

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
DEFAULT_DEVICE_RUNTIMES = ("tflite-runtime==2.14.0", "onnxruntime==1.23.2")
DEFAULT_TF_VERSION = "2.14.0"
TORCH_VERSION, EXECUTORCH_VERSION = "2.13.0", "1.5.1"


@dataclass(frozen=True)
class TfPins:
    """Library versions that go with one TensorFlow release in ``toolchain-tf``.

    tfmot: tensorflow-model-optimization release tested with that TF; tf_keras: the tf-keras release (None up to
    TF 2.15, where ``tf.keras`` is the bundled Keras 2 and tfmot uses it).
    """

    tfmot: str
    tf_keras: str | None


# TensorFlow -> (tfmot, tf-keras), from the tfmot release notes and the tf-keras release line (tf-keras X.Y
# follows TF X.Y; tf-keras exists from 2.14.1 on, but TF <= 2.15 ships Keras 2 itself).
TF_TOOLCHAINS: dict[str, TfPins] = {
    "2.13.1": TfPins("0.7.5", None),
    "2.14.0": TfPins("0.7.5", None),
    "2.14.1": TfPins("0.7.5", None),
    "2.15.0": TfPins("0.7.5", None),
    "2.15.1": TfPins("0.7.5", None),
    "2.16.1": TfPins("0.8.0", "2.16.0"),
    "2.16.2": TfPins("0.8.0", "2.16.0"),
    "2.17.1": TfPins("0.8.0", "2.17.0"),
    "2.18.1": TfPins("0.8.0", "2.18.0"),
    "2.19.1": TfPins("0.8.0", "2.19.0"),
    "2.20.0": TfPins("0.8.0", "2.20.1"),
    "2.21.0": TfPins("0.8.1", "2.21.0"),
}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower()


# --------------------------------------------------------------------------- project images


@dataclass(frozen=True)
class ImageSpec:
    """How to build one of the project's images: ``docker/<dockerfile_dir>`` with ``build_args``, tagged ``ref``."""

    name: str
    ref: str
    arch: str
    build_args: dict[str, str] = field(default_factory=dict)
    network: bool = True  # builds install from PyPI

    @property
    def context(self) -> Path:
        return DOCKER_DIR / self.name

    @property
    def build_command(self) -> str:
        """The ``compleak images build`` invocation that produces this image (for error messages)."""
        name = self.name
        if name == "toolchain-tf":
            name += f":{self.build_args['TF_VERSION']}"
        extra = f" --arch {self.arch}"
        if name == "device-linux":
            extra += "".join(f" --runtime {r}" for r in self.build_args["RUNTIMES"].split())
        return f"compleak images build {name}{extra}"


def tf_pins(version: str) -> TfPins:
    """tfmot / tf-keras pins for TensorFlow ``version``; one-line error listing the known versions."""
    if version not in TF_TOOLCHAINS:
        raise HarnessError(
            f"toolchain-tf:{version}: no tested tfmot/tf-keras pairing for TensorFlow {version}; "
            f"known: {', '.join(TF_TOOLCHAINS)}"
        )
    return TF_TOOLCHAINS[version]


def image_spec(name: str, arch: str = "amd64", runtimes: Iterable[str] | None = None) -> ImageSpec:
    """Resolve ``toolchain-tf[:TF]``, ``toolchain-torch``, ``device-linux`` or ``android-runner`` to an
    :class:`ImageSpec`."""
    check_arch(arch)
    base, _, version = name.partition(":")
    suffix = "" if arch == "amd64" else f"-{arch}"
    if base == "toolchain-tf":
        version = version or DEFAULT_TF_VERSION
        pins = tf_pins(version)
        args = {
            "TF_VERSION": version,
            "TFMOT_VERSION": pins.tfmot,
            "TF_KERAS_VERSION": pins.tf_keras or "",
            "TF_PACKAGE": "tensorflow-cpu" if arch == "amd64" else "tensorflow",
        }
        return ImageSpec(base, f"localhost/compleak-toolchain-tf:{version}{suffix}", arch, args)
    if version:
        raise HarnessError(f"image '{name}': only toolchain-tf takes a version (toolchain-tf:2.14.0)")
    if base == "toolchain-torch":
        args = {"TORCH_VERSION": TORCH_VERSION, "EXECUTORCH_VERSION": EXECUTORCH_VERSION}
        return ImageSpec(
            base, f"localhost/compleak-toolchain-torch:{TORCH_VERSION}-et{EXECUTORCH_VERSION}{suffix}", arch, args
        )
    if base == "device-linux":
        reqs = sorted(runtimes or DEFAULT_DEVICE_RUNTIMES)
        if not reqs:
            reqs = sorted(DEFAULT_DEVICE_RUNTIMES)
        for r in reqs:
            if not re.fullmatch(
                r"[A-Za-z0-9_.\-]+(\[[A-Za-z0-9_,\-]+\])?((==|>=|<=|~=|!=|<|>)[A-Za-z0-9_.*+!\-]+)?", r
            ):
                raise HarnessError(f"--runtime '{r}': not a pip requirement like tflite-runtime==2.14.0")
        tag = f"{arch}-" + "-".join(_slug(r.replace("==", "-")) for r in reqs)
        return ImageSpec(base, f"localhost/compleak-device-linux:{tag}", arch, {"RUNTIMES": " ".join(reqs)})
    if base == "device-linux-native":  # no runtimes, no Python: the build only removes packages (no network)
        if runtimes:
            raise HarnessError("device-linux-native has no Python: --runtime does not apply (the native runner "
                               "brings its runtimes: compleak runners build)")
        return ImageSpec(base, f"localhost/compleak-device-linux-native:{arch}", arch, {}, network=False)
    if base == "android-runner":
        return ImageSpec(base, "localhost/compleak-android-runner:latest", arch, {})
    raise HarnessError(
        f"unknown image '{name}'; use toolchain-tf[:TF_VERSION], toolchain-torch, device-linux, device-linux-native "
        f"or android-runner"
    )


def build_image(name: str, arch: str = "amd64", engine: str | None = None, force: bool = False,
                console: Console | None = None, runtimes: Iterable[str] | None = None) -> str:
    """Build ``docker/<name>`` for ``arch`` (cached: skipped when the tag exists unless ``force``); returns the tag.

    The base is ``localhost/compleak-base:bookworm-<arch>`` when present (``compleak images base``), else the
    Dockerfile's default official Python image, which the engine must be able to pull.
    """
    spec = image_spec(name, arch, runtimes)
    eng = detect_engine(engine)
    if not force and eng.image_exists(spec.ref):
        say(console, f"{spec.ref}: present (use --force to rebuild)")
        return spec.ref
    ensure_binfmt(arch)
    base = base_image_ref(arch)
    local_base = eng.image_exists(base)
    args = dict(spec.build_args)
    if local_base:
        args["BASE_IMAGE"] = base
    argv = ["build", "--platform", f"linux/{arch}", "-t", spec.ref, *eng.limits()]
    if spec.network:
        argv += ["--network", "host"]
    if local_base:
        argv += ["--pull=never"] if eng.name == "podman" else []
    for k, v in args.items():
        argv += ["--build-arg", f"{k}={v}"]
    argv += ["-f", str(spec.context / "Dockerfile"), str(spec.context)]
    t0 = time.monotonic()
    try:
        eng.stream(argv, f"building {spec.ref}", console)
    except HarnessError as exc:
        hint = (
            ""
            if local_base
            else f" (no local base {base}; on hosts without a registry run: compleak images base --arch {arch})"
        )
        raise HarnessError(f"{exc}{hint}") from None
    say(console, f"{spec.ref}: built in {time.monotonic() - t0:.0f} s")
    return spec.ref
