"""Peak memory of reading one slice of a large gzip NIfTI volume, against reading the whole volume.

Builds a synthetic 512 x 512 x 600 int16 CT-like volume (a body ellipse in
HU, with noise; 315 MB of voxels, 629 MB as float32) as ``.nii.gz`` with an
LPS-style affine, so the reorientation to closest canonical flips two axes.
Then, each in a fresh Python process, reads:

* one axial slice (``load_image(path, slice_index=300, axis=2)``: one
  contiguous stretch of the file),
* one sagittal and one coronal slice (``axis=0`` / ``axis=1``: scattered
  through the whole file, read a chunk of planes at a time),
* the whole volume (``load_volume``), which is what reading one slice cost
  when a slice was cut from the whole-volume array,

with nibabel reading the gzip stream through ``indexed_gzip`` and, again,
through Python's ``gzip`` (``indexed_gzip`` hidden). Each process reports the
rise of its peak resident memory over its resident memory just before the
read (``VmHWM`` after, reset through ``/proc/self/clear_refs`` before the
read, minus ``VmRSS`` before; Linux), the peak of Python / NumPy allocations (``tracemalloc``), the wall
time, and a hash of the slice, so the lazy slice is checked against the slice
of the whole-volume array. Results go to
``benchmarks/results/synthetic/nifti_slice_memory/``.

    .venv/bin/python benchmarks/nifti_memory.py [--volume /tmp/big.nii.gz] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = (512, 512, 600)
READS = {  # name -> (axis, index); None: the whole volume
    "axial slice": (2, 300),
    "sagittal slice": (0, 256),
    "coronal slice": (1, 256),
    "whole volume": None,
}


def build_volume(path: Path) -> None:
    """The synthetic CT: int16 HU, a body ellipse whose value drifts along z, noise; gzip level 1 (nibabel's)."""
    import nibabel as nib

    x = np.linspace(-1, 1, SHAPE[0], dtype=np.float32)
    yy, xx = np.meshgrid(x, x, indexing="ij")
    body = (xx**2 / 0.8 + yy**2 / 0.6) < 1
    rng = np.random.default_rng(0)
    data = np.empty(SHAPE, np.int16, order="F")
    for k in range(SHAPE[2]):
        data[:, :, k] = np.where(body, 40 + k % 50, -1000) + rng.integers(-20, 20, SHAPE[:2], dtype=np.int16)
    img = nib.Nifti1Image(data, np.diag([-0.7, -0.7, 1.0, 1.0]))  # voxel axes run to L and P: two flips
    img.set_data_dtype(np.int16)
    nib.save(img, path)


def _status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux): VmRSS now, VmHWM its peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/self/status has no {key}; this benchmark needs Linux")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak is this read's, not the process's so far."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(path: str, read: str, indexed_gzip: bool) -> dict:
    """One read in this (fresh) process; prints nothing, returns the figures."""
    import time
    import tracemalloc

    if not indexed_gzip:
        sys.modules["indexed_gzip"] = None  # nibabel then reads .gz with Python's gzip
    import nibabel  # noqa: F401
    import pydicom  # noqa: F401

    from medadapt.io import load_image, load_volume, volume_slice, volumes

    with tempfile.TemporaryDirectory() as tmp:  # warm-up: every lazy import of the read path
        small = Path(tmp) / "small.nii.gz"
        nibabel.save(nibabel.Nifti1Image(np.arange(64, dtype=np.int16).reshape(4, 4, 4), np.eye(4)), small)
        load_image(small, slice_index=1, axis=0)
        load_volume(small)
    _reset_peak()
    before = _status_mb("VmRSS")
    tracemalloc.start()
    start = time.perf_counter()
    if READS[read] is None:
        volume, _ = load_volume(path)
        planes = {name: volume_slice(volume, k, axis) for name, (axis, k) in
                  ((n, r) for n, r in READS.items() if r is not None)}
    else:
        axis, k = READS[read]
        planes = {read: load_image(path, slice_index=k, axis=axis)}
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    peak = _status_mb("VmHWM")
    opener = "indexed_gzip" if sys.modules.get("indexed_gzip") is not None else "gzip"
    return {
        "read": read, "gzip_reader": opener, "peak_rss_rise_mb": round(peak - before, 1),
        "tracemalloc_peak_mb": round(traced, 1), "seconds": round(seconds, 2),
        "chunk_mb": volumes.CHUNK_BYTES / 2**20,
        "slices": {n: {"shape": list(p.shape), "sha256": hashlib.sha256(p.tobytes()).hexdigest()[:16]}
                   for n, p in planes.items()},
    }


def run_fresh(path: Path, read: str, indexed_gzip: bool) -> dict:
    cmd = [sys.executable, __file__, "--measure", read, "--volume", str(path)] + ([] if indexed_gzip else ["--no-igz"])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", default=None, help="where the synthetic volume is (built there if missing)")
    ap.add_argument("--keep", action="store_true", help="keep the volume (with --volume)")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-igz", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--build", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build:
        build_volume(Path(args.build))
        return
    if args.measure:
        print(json.dumps(measure(args.volume, args.measure, not args.no_igz)))
        return

    from benchmarks.common import write_result

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.volume) if args.volume else Path(tmp) / "ct_512x512x600.nii.gz"
        built = not path.exists()
        if built:  # in its own process, so that the measuring processes start from a small parent
            subprocess.run([sys.executable, __file__, "--build", str(path)], check=True)
        gz_mb = path.stat().st_size / 2**20
        load = os.getloadavg()[0]
        rows = [run_fresh(path, read, igz) for igz in (True, False) for read in READS]
        load = max(load, os.getloadavg()[0])
        if built and args.volume and not args.keep:
            path.unlink()

    whole = {r["gzip_reader"]: r for r in rows if r["read"] == "whole volume"}
    for r in rows:
        if r["read"] != "whole volume":
            r["matches_whole_volume_slice"] = (
                r["slices"][r["read"]]["sha256"] == whole[r["gzip_reader"]]["slices"][r["read"]]["sha256"]
            )
    float32_mb = np.prod(SHAPE) * 4 / 2**20
    lines = [
        f"A synthetic {SHAPE[0]} x {SHAPE[1]} x {SHAPE[2]} int16 volume ({np.prod(SHAPE) * 2 / 2**20:.0f} MiB of "
        f"voxels, {float32_mb:.0f} MiB as float32; {gz_mb:.0f} MiB as `.nii.gz`, gzip level 1), with an affine "
        "whose reorientation to closest canonical flips two axes. Each read runs in a fresh process. *Peak RSS "
        "rise*: the process's peak resident memory during the read (VmHWM, reset just before it) minus its "
        "resident memory just before it. *tracemalloc*: peak of Python and NumPy allocations during the read (not "
        "zlib's or indexed_gzip's own buffers). The whole-volume row is what reading one slice cost when the "
        "slice was cut from the whole-volume array. *Same as whole* compares the slice's bytes (SHA-256) with "
        "the same slice of the whole-volume array.",
        "",
        "| read | gzip reader | slice (float32) | peak RSS rise | tracemalloc peak | seconds | same as whole |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["read"] == "whole volume":
            size = f"volume, {float32_mb:.0f} MiB"
        else:
            shape = r["slices"][r["read"]]["shape"]
            size = f"{shape[0]} x {shape[1]}, {shape[0] * shape[1] * 4 / 2**20:.1f} MiB"
        same = "" if r["read"] == "whole volume" else ("yes" if r["matches_whole_volume_slice"] else "**no**")
        lines.append(f"| {r['read']} | {r['gzip_reader']} | {size} | {r['peak_rss_rise_mb']:.0f} MiB | "
                     f"{r['tracemalloc_peak_mb']:.1f} MiB | {r['seconds']:.2f} | {same} |")
    lines += [
        "",
        f"Scattered slices (sagittal, coronal) are read {rows[0]['chunk_mb']:.0f} MiB of whole planes at a time "
        "(`medadapt.io.volumes.CHUNK_BYTES`) from one open file, so their cost is bounded by that chunk, not "
        "the volume; gzip has no random access, so they still decompress the file once, front to back. "
        "`indexed_gzip` builds a seek index as it reads; one slice per opened file cannot profit from it, and "
        "it adds its own read buffer (the difference between the two readers' rows).",
        "",
        f"Load average while measuring: up to {load:.1f} on {os.cpu_count()} cores. Other jobs sharing the CPU "
        "slow the reads down, so the seconds are upper bounds; the memory figures do not depend on it.",
    ]
    print("\n".join(lines))
    payload = {"shape": list(SHAPE), "dtype": "int16", "gz_mb": round(gz_mb, 1), "float32_mb": round(float32_mb, 1),
               "load_average": round(load, 1), "rows": rows}
    print(write_result("synthetic", "nifti_slice_memory", payload, "\n".join(lines),
                       title="Reading one slice of a 512 x 512 x 600 gzip NIfTI: peak memory"))


if __name__ == "__main__":
    main()
