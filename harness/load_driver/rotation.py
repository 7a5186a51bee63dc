"""Which API nodes the load sends requests to: every node, except those taken out of
rotation, as a load balancer takes a node out before an operator stops it (a rolling
upgrade) and puts it back once it serves again.

The set of nodes out of rotation is a small JSON file in the run directory; the Locust
processes (load/loadsupport.py Rotation) re-read it when it changes. No file: all nodes
in rotation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FILE = "rotation.json"


def rotation_file(run_dir: Path) -> Path:
    return Path(run_dir) / FILE


def out_of_rotation(run_dir: Path) -> set[str]:
    try:
        return set(json.loads(rotation_file(run_dir).read_text()).get("out", []))
    except (OSError, ValueError):
        return set()


def _write(run_dir: Path, out: set[str]) -> None:
    path = rotation_file(run_dir)
    tmp = path.with_name(f"{FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"out": sorted(out)}))
    tmp.replace(path)  # readers see the old set or the new one, never half a file


def take_out(run_dir: Path, node: str) -> None:
    _write(run_dir, out_of_rotation(run_dir) | {node})


def put_back(run_dir: Path, node: str) -> None:
    _write(run_dir, out_of_rotation(run_dir) - {node})
