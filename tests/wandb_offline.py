"""Read back an offline W&B run (``run-*.wandb``: W&B's LevelDB-style log of protobuf records)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0:
            continue
        parts = payload if kind in (FULL, FIRST) else parts + payload
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


def summarize(run_dir: Path, wait_s: float = 30.0) -> dict:
    """Config keys, run name, history keys and artifacts (type, name) of one offline run. W&B's service
    process can still be appending to the file for a while after ``wandb.finish()`` returns, so the file
    is read again until it parses and holds the run's closing ``exit`` record (a file read earlier ends
    on a record boundary but lacks the last tables and artifacts)."""
    import time

    from google.protobuf.message import DecodeError

    deadline = time.time() + wait_s
    while True:
        try:
            out = _summarize(run_dir)
            if out["closed"] or time.time() > deadline:
                return out
        except DecodeError:
            if time.time() > deadline:
                raise
        time.sleep(0.5)


def _summarize(run_dir: Path) -> dict:
    (path,) = Path(run_dir).glob("run-*.wandb")
    out = {"config": {}, "history": set(), "artifacts": [], "name": None, "group": None, "closed": False}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["name"], out["group"] = record.run.display_name, record.run.run_group
        elif kind == "config":
            out["config"].update({item.key: item.value_json for item in record.config.update})
        elif kind == "history":
            out["history"] |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "artifact":
            out["artifacts"].append((record.artifact.type, record.artifact.name))
        elif kind == "exit":
            out["closed"] = True
    return out
