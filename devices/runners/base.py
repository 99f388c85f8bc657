"""The runner interface: :class:`Runner` (one artifact format on one kind of device), the ``Infer`` callable a
session yields, and the helpers every runner shares (output shape, timestamps, error details)."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from devices.base import Device
from devices.errors import DeviceError
from rundir import ArtifactRecord

if TYPE_CHECKING:
    from devices.runners.server import DatasetRows

Infer = Callable[["np.ndarray | DatasetRows"], "tuple[np.ndarray, dict[str, Any]]"]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Runner:
    """Executes one artifact format on one device.

    Subclasses implement :meth:`run`; :meth:`session` lets a caller that queries the same artifact several times
    (in chunks, for resumability) pay the artifact upload once. ``name`` appears in provenance.
    """

    name = "runner"
    #: True when :meth:`session`'s ``infer`` also takes :class:`~devices.runners.server.DatasetRows` (queries named
    #: by rows of a uint8 dataset kept on the device); else callers pass float32 arrays only
    accepts_dataset_rows = False

    def describe(self) -> dict[str, Any]:
        """What this runner is, for provenance (runtime name/version etc.)."""
        return {"runner": self.name}

    def run(
        self, device: Device, artifact_file: Path, artifact: ArtifactRecord, inputs: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Outputs float32 [M, C] for ``inputs`` float32 [M, H, W, C] (NHWC), and a provenance dict."""
        with self.session(device, artifact_file, artifact) as infer:
            return infer(inputs)

    @contextmanager
    def session(self, device: Device, artifact_file: Path, artifact: ArtifactRecord) -> Iterator[Infer]:
        """A callable ``infer(inputs) -> (values, provenance)`` bound to one artifact on one device."""
        yield lambda x: self.run(device, artifact_file, artifact, x)


def output_classes(artifact: ArtifactRecord) -> int | None:
    """Values per query C of the artifact's first output as the manifest states it (``[N, d1, ...]``: the product of
    the non-batch dimensions, as the runner flattens them), else None (a dynamic or missing dimension)."""
    shape = artifact.outputs[0].shape if artifact.outputs else []
    if len(shape) < 2 or any(d <= 0 for d in shape[1:]):
        return None
    return int(np.prod(shape[1:]))


def error_detail(exc: DeviceError, device_id: str) -> str:
    """An error's message without its leading ``<device id>: `` (the caller puts the artifact there)."""
    text = str(exc)
    return text[len(device_id) + 2:] if text.startswith(f"{device_id}: ") else text
