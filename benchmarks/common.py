"""Shared helpers for benchmark scripts: where data lives, machine facts, writing results.

Benchmarks read the real data in ``../shared/data`` (or ``$MEDADAPT_DATA``);
they are not tests and a user's clone may not have that folder.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def data_root(arg: str | None = None) -> Path:
    """The shared data folder: ``--data-root``, else ``$MEDADAPT_DATA``, else ``../shared/data``."""
    root = Path(arg or os.environ.get("MEDADAPT_DATA") or REPO.parent / "shared" / "data")
    if not root.is_dir():
        raise SystemExit(f"data folder not found: {root} (pass --data-root or set MEDADAPT_DATA)")
    return root


def hc18_images(data_root_arg: str | None, exams: str) -> tuple[Path, list[Path]]:
    """HC18's folder and its images whose exam number lies in ``exams`` ("100-129", inclusive)."""
    lo, hi = (int(v) for v in exams.split("-"))
    root = data_root(data_root_arg) / "hc18"
    return root, sorted(p for p in (root / "images").glob("*.png") if lo <= int(p.name.split("_")[0]) <= hi)


def add_run_arguments(ap, exams: str = "100-129") -> None:
    """The arguments of the scripts that look at one HC18 run: RUN, --data-root, --exams."""
    ap.add_argument("run")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--exams", default=exams, help="exam number range, inclusive")


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": _dt.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        info["commit"] = "unknown"
    return info


def write_result(name: str, payload: dict, markdown: str) -> Path:
    """Write ``results/NAME.json`` and ``results/NAME.md`` (atomically) and return the md path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), **payload}
    md = f"# {name}\n\nMachine: {payload['machine']['cpu']}, {payload['machine']['cores']} cores, " \
         f"torch {payload['machine']['torch']}; date {payload['machine']['date']}; commit {payload['machine']['commit']}\n\n" + markdown
    for suffix, text in ((".json", json.dumps(payload, indent=2)), (".md", md)):
        path = RESULTS / f"{name}{suffix}"
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return RESULTS / f"{name}.md"


def median_time(fn, repeats: int, warmup: int = 1, sync=None) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (``sync`` waits for a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
