"""The provenance file of collected outputs (``outputs/<device>/<artifact>.json``): artifact, device, runner and
runtime, per-batch timings, chunks, how the queries travelled and what the host sent."""

from __future__ import annotations

import socket
import time
from typing import Any

from harness.collect.queries import QueryInputs
from rundir import ArtifactRecord


def provenance(
    rec: ArtifactRecord,
    dev: Any,
    props: Any,
    metas: list[dict[str, Any]],
    spans: list[tuple[int, int]],
    batch_size: int,
    chunk_size: int,
    inputs: QueryInputs,
) -> dict[str, Any]:
    first = metas[0] if metas else {}
    device = props.to_dict() if hasattr(props, "to_dict") else dict(props)
    device["id"] = dev.id
    return {
        "artifact": {"id": rec.id, "sha256": rec.sha256, "format": rec.format, "variant": rec.variant,
                     "role": rec.role, "shadow": rec.shadow, "bytes": rec.bytes},
        "device": device,
        "runner": first.get("runner"),
        "runtime": {"name": first.get("runtime"), "version": first.get("runtime_version")},
        "delegate": first.get("delegate"),
        "threads": first.get("threads"),
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "n_queries": int(sum(b - a for a, b in spans)),
        "output_kind": rec.output_kind,
        "wall_seconds_per_batch": [s for m in metas for s in m.get("batch_seconds", [])],
        "examples_per_batch": [s for m in metas for s in m.get("batch_sizes", [])],
        "chunks": [{"start": a, "stop": b, **{k: v for k, v in m.items() if k not in ("batch_seconds", "batch_sizes")}}
                   for (a, b), m in zip(spans, metas)],
        "query_inputs": inputs.source,
        "transfer": sorted({m["transfer"] for m in metas if isinstance(m.get("transfer"), str)}),
        "query_transport": _transport(metas),
        "bytes_sent": _bytes_sent(metas),
        "compat_notes": first.get("compat_notes", []),
        "started": metas[0].get("started") if metas else None,
        "finished": metas[-1].get("finished") if metas else None,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
    }


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _transport(metas: list[dict[str, Any]]) -> str:
    """How an artifact's queries reached the device, over its chunks: ``device dataset`` (rows named in the uint8
    dataset the runner holds), ``float32`` (the queries themselves), or ``mixed`` (a resumed collection)."""
    kinds = {"device dataset" if "query_dataset" in m else "float32" for m in metas}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none")


def _bytes_sent(metas: list[dict[str, Any]]) -> dict[str, int]:
    """Bytes the host sent the device for an artifact, summed over its chunks (resumed ones: what their session
    sent), by kind: ``model``, ``dataset`` (the share of the query dataset this artifact's session sent),
    ``queries`` (float32 rows or row numbers), ``headers``."""
    out = dict.fromkeys(("model", "dataset", "queries", "headers"), 0)
    for m in metas:
        sent = m.get("bytes_sent")
        if isinstance(sent, dict):
            for k in out:
                v = sent.get(k, 0)
                out[k] += v if type(v) is int and v >= 0 else 0
    return out
