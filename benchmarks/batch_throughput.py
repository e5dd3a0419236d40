"""Batch inference throughput (``medadapt segment``) over a folder of 50 mixed real files, per reader count.

Builds a folder from the shared data: 42 HC18 ultrasound PNGs, 5 ACDC cine-MR
NIfTI volumes, one more ACDC volume written as a DICOM series, and 2 corrupt
files (a PNG that is not one, a NIfTI cut short). Prompts are boxes around the
ground-truth masks (per slice with foreground for the volumes), so LiteMedSAM
runs with its bundled weights and no adapter. For each ``--workers`` count it
runs ``segment_batch`` into a fresh folder and reports images per second and
volumes per hour (from each file's share of the wall time in the manifest),
the time the model waited for data, and checks that every good output exists
with its input's geometry and the 2 bad files are recorded. Then, with the
last count, a re-run must skip everything, and a ``medadapt segment`` run
killed with SIGKILL part way must finish the rest when run again.

    .venv/bin/python benchmarks/batch_throughput.py              # workers 0 1 2
    .venv/bin/python benchmarks/batch_throughput.py --workers 1 2 --device cuda --result speed/batch_cuda
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO, data_root, parse_result, write_result  # noqa: E402


def _box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def _write_series(folder: Path, volume: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """An axial DICOM series whose slices display as ``volume_slice(volume, k)`` does."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from medadapt.io.imaging import volume_slice

    folder.mkdir(parents=True)
    uid = generate_uid()
    for k in range(volume.shape[2]):
        plane = volume_slice(volume, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.InstanceNumber, ds.Modality = uid, k + 1, "MR"
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1 / 4000, 0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, spacing[2] * k]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.PixelData = np.round(plane * 4000).astype(np.uint16).tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)


def build_folder(root: Path, data: Path, n_png: int, n_volumes: int) -> tuple[dict, dict]:
    """The mixed input folder and its prompts; returns (prompts, {name: kind})."""
    from medadapt.io.imaging import load_mask, load_volume, volume_slice

    prompts, kinds = {}, {}
    (root / "us").mkdir(parents=True)
    for src in sorted((data / "hc18" / "images").glob("*.png"))[:n_png]:
        shutil.copyfile(src, root / "us" / src.name)
        prompts[f"us/{src.name}"] = {"boxes": [_box(load_mask(data / "hc18" / "masks" / src.name) > 0)]}
        kinds[f"us/{src.name}"] = "image"
    acdc = data / "acdc"
    volumes = sorted((acdc / "imagesVal").glob("*.nii.gz"))[: n_volumes + 1]
    (root / "mr").mkdir()
    for i, src in enumerate(volumes):
        labels = load_volume(acdc / "labelsVal" / src.name)[0]
        slices = {str(k): {"boxes": [_box(volume_slice(labels, k) > 0)]} for k in range(labels.shape[2])
                  if (labels[..., k] > 0).any()}
        if i < n_volumes:
            name = f"mr/{src.name}"
            shutil.copyfile(src, root / name)
        else:  # the last one as a DICOM series
            name = f"dicom/{src.name.split('.')[0]}"
            vol, affine = load_volume(src)
            _write_series(root / name, vol, tuple(float(v) for v in np.abs(np.diag(affine))[:3]))
        prompts[name], kinds[name] = {"slices": slices}, "volume"
    (root / "broken.png").write_bytes(b"this is not a PNG file\n" * 10)
    whole = volumes[0].read_bytes()
    (root / "truncated.nii.gz").write_bytes(whole[: len(whole) // 3])
    prompts["broken.png"] = {"boxes": [[10, 10, 50, 50]]}
    return prompts, kinds


def check_outputs(src: Path, out: Path, kinds: dict) -> dict:
    """Every good input has its output in its own geometry; the two corrupt ones are failed in the manifest."""
    import nibabel as nib
    from PIL import Image

    from medadapt.inference import read_manifest
    from medadapt.io.imaging import load_volume

    rows = read_manifest(out)
    failed = sorted(k for k, r in rows.items() if r["status"] == "failed")
    assert failed == ["broken.png", "truncated.nii.gz"], failed
    for name, kind in kinds.items():
        target = Path(rows[name]["output"])
        assert rows[name]["status"] == "ok" and target.is_file(), name
        if kind == "image":
            with Image.open(src / name) as a, Image.open(target) as b:
                assert a.size == b.size, name
        else:
            vol, affine = load_volume(src / name)
            img = nib.load(target)
            assert img.shape == vol.shape and np.allclose(img.affine, affine, atol=1e-4), name
    return rows


def rates(rows: dict, kinds: dict) -> dict:
    seconds = {k: sum(float(rows[n]["seconds"]) for n, kk in kinds.items() if kk == k) for k in ("image", "volume")}
    n = {k: sum(kk == k for kk in kinds.values()) for k in ("image", "volume")}
    return {"images_per_s": n["image"] / seconds["image"], "volumes_per_hour": 3600 * n["volume"] / seconds["volume"],
            "image_seconds": seconds["image"], "volume_seconds": seconds["volume"],
            "read_seconds": sum(float(r["read_seconds"]) for r in rows.values())}


def kill_and_resume(src: Path, out: Path, prompts: Path, seg, workers: int, device: str, after: int) -> dict:
    """`medadapt segment` killed with SIGKILL once ``after`` files are in its manifest, then run again in-process."""
    from medadapt.inference import read_manifest, segment_batch

    cmd = [sys.executable, "-m", "medadapt", "segment", str(src), str(out), "--prompts", str(prompts),
           "--workers", str(workers), "--no-progress", "--device", device]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.csv"
    while proc.poll() is None:
        if manifest.exists() and len(manifest.read_text().splitlines()) - 1 >= after:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    before = {k: r["status"] for k, r in read_manifest(out).items()}
    result = segment_batch(src, out, seg, prompts=prompts, workers=workers, progress=False)
    return {"killed": killed, "recorded_before_kill": len(before), "resumed_ok": result.ok,
            "resumed_skipped": result.skipped, "resumed_not_retried": result.not_retried}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pngs", type=int, default=42)
    ap.add_argument("--volumes", type=int, default=5, help="NIfTI volumes (one more becomes the DICOM series)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scratch", default="/tmp/medadapt_batch_bench", help="folder for inputs and outputs")
    ap.add_argument("--kill-after", type=int, default=12, help="files in the manifest before the SIGKILL")
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT (default speed/batch_<device>)")
    args = ap.parse_args(argv)

    from medadapt import Segmenter
    from medadapt.inference import segment_batch

    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    prompts, kinds = build_folder(scratch / "in", data_root(args.data_root), args.pngs, args.volumes)
    (scratch / "prompts.json").write_text(json.dumps(prompts))
    n_files = len(kinds) + 2
    slices = sum(len(p["slices"]) for n, p in prompts.items() if kinds.get(n) == "volume")
    seg = Segmenter.from_pretrained("litemedsam", device=args.device)
    load_before, runs = os.getloadavg()[1], {}
    for w in args.workers:
        out = scratch / f"out_w{w}"
        r = segment_batch(scratch / "in", out, seg, prompts=scratch / "prompts.json", workers=w, progress=False)
        assert (r.ok, r.failed) == (len(kinds), 2), r
        runs[w] = {"wall_seconds": r.seconds, "waited_seconds": r.waited, "files_per_s": n_files / r.seconds,
                   **rates(check_outputs(scratch / "in", out, kinds), kinds)}
        print(f"workers {w}: {runs[w]}", flush=True)
    last = scratch / f"out_w{args.workers[-1]}"
    stamps = {p: p.stat().st_mtime_ns for p in last.rglob("*") if p.is_file() and p.name != "segment.json"}
    t = time.perf_counter()
    again = segment_batch(scratch / "in", last, seg, prompts=scratch / "prompts.json", workers=args.workers[-1],
                          progress=False)
    rerun = {"seconds": time.perf_counter() - t, "skipped": again.skipped, "not_retried": again.not_retried,
             "written": again.ok, "unchanged": stamps == {p: p.stat().st_mtime_ns for p in stamps}}
    assert rerun["written"] == 0 and rerun["unchanged"] and again.skipped == len(kinds), rerun
    resume = kill_and_resume(scratch / "in", scratch / "out_killed", scratch / "prompts.json", seg, args.workers[-1],
                             args.device, args.kill_after)
    check_outputs(scratch / "in", scratch / "out_killed", kinds)
    print(f"re-run: {rerun}\nkill and resume: {resume}", flush=True)
    load, cores = (load_before, os.getloadavg()[1]), os.cpu_count()

    n_img = sum(k == "image" for k in kinds.values())
    walls, reads = [v["wall_seconds"] for v in runs.values()], [v["read_seconds"] for v in runs.values()]
    pace = (f"Reading took {min(reads):.1f}-{max(reads):.1f} s of the {min(walls):.0f}-{max(walls):.0f} s runs and "
            f"the model waited at most {max(v['waited_seconds'] for v in runs.values()):.1f} s for data: on this CPU "
            f"the model sets the pace, {min(walls) / (n_img + slices):.1f}-{max(walls) / (n_img + slices):.1f} s per "
            f"encoded image or slice, so the reader count matters little here.")
    table = "\n".join(
        f"| {w} | {v['wall_seconds']:.1f} | {v['files_per_s']:.2f} | {v['images_per_s']:.2f} | "
        f"{v['volumes_per_hour']:.0f} | {v['waited_seconds']:.1f} | {v['read_seconds']:.1f} |" for w, v in runs.items())
    md = f"""**What was measured.** `segment_batch` (what `medadapt segment IN OUT --prompts prompts.json` runs) with
the pretrained LiteMedSAM (bundled weights, default precision) on {n_files} real files: {n_img} HC18 ultrasound
PNGs, {args.volumes} ACDC cine-MR NIfTI volumes, one ACDC volume written as a DICOM series, and 2 corrupt files (a PNG
that is not one, a NIfTI cut to a third). Prompts: one box around the ground-truth mask per PNG and per volume slice
with foreground ({slices} slices in the {args.volumes + 1} volumes). Each reader count ran into a fresh output
folder with the same model. Images/s and volumes/hour divide the files of each kind by their share of the wall time
(the manifest's `seconds`: waiting for the data, the model, the write); "waited" is the time the model loop waited
for data, "read" the time spent reading and decoding (in the worker processes when workers >= 1).

| reader processes (`--workers`) | wall (s) | files/s | images/s (PNG) | volumes/hour (NIfTI + DICOM) | waited (s) | read (s) |
|---|---|---|---|---|---|---|
{table}

{pace}

Every run wrote all {len(kinds)} good outputs with the input's geometry (PNG size; NIfTI shape and affine equal to
`load_volume`'s for the NIfTI files and the DICOM series) and recorded the 2 corrupt files as failed in the
manifest. A re-run into the last folder skipped all {again.skipped} outputs, rewrote none and did not retry the 2
failed files, in {rerun['seconds']:.1f} s. `medadapt segment` killed with SIGKILL after {resume['recorded_before_kill']}
manifest lines (killed: {resume['killed']}), then run again, skipped {resume['resumed_skipped']} finished outputs and
wrote the other {resume['resumed_ok']}.

**How the figures were selected.** One run per reader count, no repeats. The 5-minute load average was
{load[0]:.1f} when the runs started and {load[1]:.1f} when they ended ({cores} cores; the runs themselves keep about
{cores} busy): a start well above 0 means other work was still running or had just ended, and the rows then move
with the machine's load as well as with the reader count.
Nothing else is selected.
"""
    dataset, experiment = parse_result(args.result or f"speed/batch_{args.device.split(':')[0]}")
    path = write_result(dataset, experiment, {"files": n_files, "images": n_img, "volumes": args.volumes + 1,
                                              "prompted_slices": slices, "runs": runs, "rerun": rerun,
                                              "kill_and_resume": resume, "load_average_5min": load},
                        md, title="Batch inference throughput, 50 mixed real files")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
