"""Batch inference (``segment_batch``, ``medadapt segment``) over a folder of mixed files.

The folder holds PNG, JPEG and .npy images, a NIfTI volume with a rotated,
flipped affine, a DICOM series and two corrupt files. The real LiteMedSAM
segments bright discs from boxes, so every output can be checked for its
place in the input's geometry; the tiny random SAM runs the bookkeeping tests
(resume after SIGKILL, sharding, errors), where only what is written matters.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_files import write_dicom
from PIL import Image
from pydicom.uid import generate_uid

from medadapt import Segmenter
from medadapt.cli import main
from medadapt.core.errors import MedAdaptError
from medadapt.inference import keep_largest, read_manifest, segment_batch
from medadapt.io.imaging import load_mask, load_volume, volume_slice

ROOT = Path(__file__).resolve().parents[1]


def _disc(h, w, cy, cx, r=14, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return (np.where(mask, 200.0, 40.0) + rng.normal(0, 4, (h, w))).astype(np.float32), mask


def _box(mask, pad=3):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()) - pad, int(ys.min()) - pad, int(xs.max()) + pad, int(ys.max()) + pad]


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _dicom(path: Path, pixels: np.ndarray, z: float, instance: int, series: str) -> None:
    write_dicom(path, pixels, z, series=series, instance=instance, origin=(-10.0, -20.0), spacing=(0.5, 0.7),
                RescaleSlope=1, RescaleIntercept=-1024, SliceThickness=2.5)


def _affine() -> np.ndarray:
    """Voxel sizes 0.8 / 0.9 / 2.5 mm, the first axis flipped, 20 degrees about z, an offset."""
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-0.8, 0.9, 2.5])
    aff[:3, 3] = [30.0, -12.0, 7.0]
    return aff


def mixed_folder(root: Path) -> tuple[dict, dict]:
    """Write the mixed folder; returns (prompts, expected masks by input name; volumes: (slice, mask))."""
    prompts, truth = {}, {}
    (root / "us").mkdir(parents=True)
    for i, (cy, cx) in enumerate([(30, 40), (50, 30)]):
        img, mask = _disc(80, 96, cy, cx, seed=i)
        Image.fromarray(img.astype(np.uint8)).save(root / "us" / f"case{i}.png")
        prompts[f"us/case{i}.png"], truth[f"us/case{i}.png"] = {"boxes": [_box(mask)]}, mask
    img, mask = _disc(64, 64, 30, 34, seed=6)
    np.save(root / "array.npy", img)
    prompts["array.npy"], truth["array.npy"] = {"boxes": [_box(mask)], "points": [[34, 30]], "point_labels": [1]}, mask
    # a NIfTI volume stored in a non-canonical orientation: the disc is drawn where the displayed slice shows it
    (root / "ct").mkdir()
    stored = np.full((64, 72, 5), -900.0, np.float32) + np.random.default_rng(7).normal(0, 5, (64, 72, 5))
    stored[20:44, 24:48, 2] += 1000 * (np.hypot(*np.mgrid[-12:12, -12:12]) <= 11)
    nib.save(nib.Nifti1Image(stored, _affine()), root / "ct" / "vol.nii.gz")
    shown = volume_slice(load_volume(root / "ct" / "vol.nii.gz")[0], 2)
    prompts["ct/vol.nii.gz"] = {"slices": {"2": {"boxes": [_box(shown > 0)]}}}
    truth["ct/vol.nii.gz"] = (2, shown > 0)
    series, uid = root / "series", generate_uid()
    series.mkdir()
    for k in range(4):
        img, mask = _disc(56, 64, 28, 30, r=12, seed=10 + k)
        _dicom(series / f"im{k}.dcm", (img * 5 if k == 1 else img * 0 + 100 + k).astype(np.uint16), 2.5 * k, k + 1, uid)
    prompts["series"] = {"slices": {"1": {"boxes": [_box(mask)]}}}
    truth["series"] = (1, mask)
    (root / "broken.png").write_bytes(b"this is not a PNG file")
    whole = (root / "ct" / "vol.nii.gz").read_bytes()
    (root / "cut.nii.gz").write_bytes(whole[: len(whole) // 3])  # a download cut short
    prompts["broken.png"] = {"boxes": [[1, 1, 10, 10]]}
    (root / "notes.txt").write_text("not an image")  # ignored
    return prompts, truth


class CountingSegmenter(Segmenter):
    """A real segmenter that counts the images it encodes (and can kill its own process after N)."""

    encoded = 0
    kill_after: int | None = None

    def set_image(self, image):
        if self.kill_after is not None and CountingSegmenter.encoded >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        CountingSegmenter.encoded += 1
        super().set_image(image)


@pytest.fixture(scope="module")
def batch(tmp_path_factory, litemedsam):
    root = tmp_path_factory.mktemp("batch")
    prompts, truth = mixed_folder(root / "in")
    (root / "prompts.json").write_text(json.dumps(prompts))
    result = segment_batch(root / "in", root / "out", litemedsam, prompts=root / "prompts.json", workers=2,
                           progress=False)
    return root, truth, result


def test_mixed_folder_writes_every_good_output_in_the_inputs_geometry(batch):
    root, truth, result = batch
    out = root / "out"
    assert (result.ok, result.failed, result.images, result.volumes) == (5, 2, 3, 2)
    for name in ("us/case0.png", "us/case1.png"):
        mask = load_mask(out / (name.rsplit(".", 1)[0] + ".png"))
        assert set(np.unique(mask)) <= {0, 255}  # one prompt: a 0/255 PNG, as `medadapt predict` writes
        assert _dice(mask > 0, truth[name]) > 0.9, name
    assert _dice(np.load(out / "array.npy") > 0, truth["array.npy"]) > 0.9
    # NIfTI: the input's own stored grid and affine; the disc lands on the voxels it occupies in the input
    vol, affine = load_volume(root / "in" / "ct" / "vol.nii.gz")
    written, stored = nib.load(out / "ct" / "vol.nii.gz"), nib.load(root / "in" / "ct" / "vol.nii.gz")
    assert np.array_equal(written.affine, stored.affine)
    labels = np.asarray(written.dataobj)
    assert labels.shape == stored.shape and labels[..., [0, 1, 3, 4]].max() == 0
    canonical, canonical_affine = load_volume(out / "ct" / "vol.nii.gz")  # read back like the scan
    assert canonical.shape == vol.shape and np.array_equal(canonical_affine, affine)
    k, disc = truth["ct/vol.nii.gz"]
    assert _dice(volume_slice(canonical, k) > 0, disc) > 0.9
    centre = stored.affine @ [32, 36, 2, 1]  # the disc's centre in the stored array -> scanner mm
    ijk = np.round(np.linalg.inv(written.affine) @ centre).astype(int)[:3]
    assert labels[tuple(ijk)] == 1
    # the DICOM series: a NIfTI label volume with the series' geometry
    vol, affine = load_volume(root / "in" / "series")
    written = nib.load(out / "series.nii.gz")
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_allclose(np.abs(np.diag(written.affine))[:3], [0.7, 0.5, 2.5])
    labels = np.asarray(written.dataobj)
    k, disc = truth["series"]
    assert labels.shape == vol.shape and _dice(volume_slice(labels, k) > 0, disc) > 0.9
    assert not (out / "notes.png").exists() and not (out / "broken.png").exists()


def test_manifest_records_the_two_bad_files_and_the_rest(batch):
    root, _, _ = batch
    rows = read_manifest(root / "out")
    assert len(rows) == 7 and all(r["seconds"] for r in rows.values())
    failed = {name: r["error"] for name, r in rows.items() if r["status"] == "failed"}
    assert sorted(failed) == ["broken.png", "cut.nii.gz"]
    assert all("\n" not in e and "could not read" in e for e in failed.values()), failed
    assert rows["series"]["output"].endswith("series.nii.gz") and rows["series"]["status"] == "ok"
    lines = (root / "out" / "manifest.csv").read_text().splitlines()
    assert lines[0] == "file,status,seconds,read_seconds,error,output,finished" and len(lines) == 8


def test_rerun_skips_everything_and_retries_failed_only_when_asked(batch, litemedsam):
    root, _, first = batch
    out = root / "out"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "segment.json"}
    seg = CountingSegmenter(litemedsam.backbone)
    CountingSegmenter.encoded = 0
    again = segment_batch(root / "in", out, seg, prompts=root / "prompts.json", workers=1, progress=False)
    assert (again.ok, again.failed, again.skipped, again.not_retried) == (0, 0, 5, 2)
    assert CountingSegmenter.encoded == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}  # nothing rewritten, the manifest included
    retried = segment_batch(root / "in", out, seg, prompts=root / "prompts.json", workers=0, retry_failed=True,
                            progress=False)
    assert (retried.ok, retried.failed, retried.skipped) == (0, 2, 5) and CountingSegmenter.encoded == 0
    assert len((out / "manifest.csv").read_text().splitlines()) == 10  # two more failed lines, nothing else


# --------------------------------------------------------------------------- bookkeeping, with the tiny model
def _pngs(folder: Path, n: int) -> dict:
    folder.mkdir(parents=True)
    prompts = {}
    for i in range(n):
        img, mask = _disc(48, 48, 24, 24, r=9, seed=i)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img{i:02d}.png")
        prompts[f"img{i:02d}.png"] = {"boxes": [_box(mask)]}
    return prompts


KILLED_RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_batch import CountingSegmenter
    from medadapt.foundation import build_backbone
    from medadapt.inference import segment_batch
    seg = CountingSegmenter(build_backbone("tiny_sam_vit"), device="cpu")
    seg.kill_after = 5
    segment_batch({src!r}, {out!r}, seg, prompts={prompts!r}, workers=1, progress=False)
""")


def test_a_run_killed_part_way_resumes_where_it_stopped(tmp_path):
    prompts = _pngs(tmp_path / "in", 12)
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    code = KILLED_RUN.format(tests=str(ROOT / "tests"), src=str(tmp_path / "in"), out=str(tmp_path / "out"),
                             prompts=str(tmp_path / "p.json"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    done = read_manifest(tmp_path / "out")
    assert len(done) == 5 and {r["status"] for r in done.values()} == {"ok"}
    assert len(list((tmp_path / "out").glob("img*.png"))) == 5
    from medadapt.foundation import build_backbone

    # the killed run's model, built as it was (float32, as given): a Segmenter is recorded by its weights, and
    # Segmenter.from_pretrained would have optimised them (bfloat16 where that is fast), i.e. other weights
    seg = CountingSegmenter(build_backbone("tiny_sam_vit"), device="cpu")
    CountingSegmenter.encoded = 0
    result = segment_batch(tmp_path / "in", tmp_path / "out", seg, prompts=tmp_path / "p.json", workers=1,
                           progress=False)
    assert (result.ok, result.skipped, CountingSegmenter.encoded) == (7, 5, 7)
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == 12 and {r["status"] for r in rows.values()} == {"ok"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []


def test_a_reader_process_killed_on_one_file_fails_that_file_alone(tmp_path, tiny_sam, monkeypatch):
    from medadapt.inference import batch_reading

    prompts = _pngs(tmp_path / "in", 7)
    read, main_process = batch_reading.load_image, os.getpid()

    def killing(path, **kwargs):  # as the system kills a reader that asks for more memory than there is
        if Path(path).name == "img03.png" and os.getpid() != main_process:
            os.kill(os.getpid(), signal.SIGKILL)
        return read(path, **kwargs)

    monkeypatch.setattr(batch_reading, "load_image", killing)
    result = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, workers=2, progress=False)
    rows = read_manifest(tmp_path / "out")
    assert (result.ok, result.failed) == (6, 1), {k: r["error"] for k, r in rows.items()}
    assert rows["img03.png"]["status"] == "failed" and "process reading this file died" in rows["img03.png"]["error"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"img{i:02d}.png" for i in range(7) if i != 3]


def test_a_stopped_run_ends_its_readers_at_once_without_waiting_for_the_reads_queued(tmp_path, monkeypatch):
    """Ctrl-C (or an error in the run) closes the reading: the reads queued are cancelled and the readers, which
    ignore Ctrl-C, are terminated; waiting for the queued reads would keep a stopped run alive for minutes."""
    from medadapt.inference import batch_reading
    from medadapt.inference.batch_inputs import BatchItem

    main_process = os.getpid()

    def slow(path, **kwargs):  # every file but the first takes a minute to read
        if Path(path).name != "f0.png" and os.getpid() != main_process:
            time.sleep(60)
        return np.zeros((4, 4), np.float32)

    monkeypatch.setattr(batch_reading, "load_image", slow)
    items = [BatchItem(f"f{i}.png", tmp_path / f"f{i}.png", False, tmp_path / "out" / f"f{i}.png") for i in range(8)]
    others = set(multiprocessing.active_children())  # children an earlier test left are not this run's readers
    reading = batch_reading.read_ahead(items, None, workers=2)
    assert next(reading)["index"] == 0
    children = set(multiprocessing.active_children()) - others
    assert len(children) == 2
    start = time.perf_counter()
    reading.close()  # what the run's loop does when Ctrl-C or an error leaves it
    assert time.perf_counter() - start < 20

    def ended(pid: int) -> bool:  # gone, or dead and waiting to be reaped by the pool's own thread
        try:
            return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True

    if Path("/proc/self/status").exists():  # Linux: ask the system, not Process.is_alive (which races the reaper)
        deadline = time.monotonic() + 10
        while not all(ended(p.pid) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(ended(p.pid) for p in children), [p.pid for p in children]


def test_ranks_take_their_own_share_and_the_manifest_parts_merge(tmp_path, tiny_sam, monkeypatch):
    prompts = _pngs(tmp_path / "in", 7)
    results = [segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, workers=0, rank=r,
                             world_size=2, progress=False) for r in (0, 1)]
    assert [r.ok for r in results] == [4, 3]  # inputs 0, 2, 4, 6 and 1, 3, 5
    parts = [read_manifest_part(tmp_path / "out" / f"manifest.rank{r}.csv") for r in (0, 1)]
    assert parts == [{f"img{i:02d}.png" for i in range(r, 7, 2)} for r in (0, 1)]
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == 7 and {r["status"] for r in rows.values()} == {"ok"}
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    again = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    assert (again.ok, again.skipped) == (0, 2)  # rank 1 of 3: inputs 1 and 4, both done by the earlier ranks
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(MedAdaptError, match="RANK=3"):
        segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, progress=False)


def read_manifest_part(path: Path) -> set[str]:
    return {line.split(",")[0] for line in path.read_text().splitlines()[1:]}


def test_automatic_mode_on_a_dataset_from_the_command_line(tmp_path, capsys):
    from conftest import tiny_run, two_class_dataset

    data = two_class_dataset(tmp_path / "data", n=4)
    run = tiny_run(data, tmp_path / "runs", labeled=["000", "001"], val=["002"])
    vol = np.random.default_rng(0).normal(100, 30, (40, 36, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, _affine()), data / "images" / "vol.nii.gz")
    out = tmp_path / "out"
    args = ["segment", str(data), str(out), "--adapter", str(run), "--model", "tiny_sam_vit", "--workers", "1",
            "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    assert "5 written (4 images, 1 volumes)" in capsys.readouterr().out
    assert not (out / "masks").exists()  # a dataset's images are segmented, not its masks
    for i in range(4):
        assert set(np.unique(load_mask(out / "images" / f"{i:03d}.png"))) <= {0, 1, 2}
    written = nib.load(out / "images" / "vol.nii.gz")
    assert written.shape == load_volume(data / "images" / "vol.nii.gz")[0].shape
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    cleaned = tmp_path / "cleaned"  # each class's largest component, in 2-D and in 3-D
    assert main([args[0], "--cleanup", "largest", args[1], str(cleaned), *args[3:]]) == 0  # before IN OUT too
    capsys.readouterr()
    changed = 0
    for i in range(4):
        name = f"images/{i:03d}.png"
        assert np.array_equal(load_mask(cleaned / name), keep_largest(load_mask(out / name)))
        changed += not np.array_equal(load_mask(cleaned / name), load_mask(out / name))
    assert changed  # the one-epoch model leaves islands for the clean-up to remove
    assert main([args[0], args[1], str(cleaned), *args[3:]]) == 2  # resumed without the clean-up: refused
    assert "cleanup" in capsys.readouterr().err
    assert np.array_equal(np.asarray(nib.load(cleaned / "images" / "vol.nii.gz").dataobj),
                          keep_largest(np.asarray(written.dataobj)))
    (tmp_path / "p.json").write_text(json.dumps({"images/000.png": {"boxes": [[2, 2, 30, 30]]}}))
    assert main([*args, "--prompts", str(tmp_path / "p.json")]) == 2  # other settings than the masks in OUT
    err = capsys.readouterr().err
    assert err.startswith("medadapt: error: ") and "other settings" in err and err.count("\n") == 1


def test_names_lists_and_per_file_errors(tmp_path, tiny_sam):
    src = tmp_path / "in"
    prompts = _pngs(src / "sub", 2)
    prompts = {f"sub/{k}": v for k, v in prompts.items()}
    img, mask = _disc(40, 40, 20, 20, r=8)
    Image.fromarray(img.astype(np.uint8)).save(src / "a.png")
    Image.fromarray(img.astype(np.uint8)).save(src / "a.jpg")
    prompts.update({"a.png": {"boxes": [_box(mask)]}, "a.jpg": {"boxes": [[50, 50, 90, 90]]}})
    result = segment_batch(src, tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    rows = read_manifest(tmp_path / "out")
    assert (result.ok, result.failed) == (2, 2)
    assert "lies outside the image" in rows["a.jpg"]["error"]  # a box beyond the image: this file fails alone
    assert "also the output of a.jpg" in rows["a.png"]["error"]  # a.jpg and a.png would both write a.png
    # a list file: names relative to the deepest folder holding every listed file
    (tmp_path / "list.txt").write_text("in/sub/img00.png\n# a comment\nin/a.png\n")
    listed = segment_batch(tmp_path / "list.txt", tmp_path / "out2", tiny_sam, workers=0, progress=False,
                           prompts={"sub/img00.png": prompts["sub/img00.png"]})
    assert (listed.ok, listed.failed) == (1, 1)
    assert (tmp_path / "out2" / "sub" / "img00.png").is_file()
    assert "no prompts for it" in read_manifest(tmp_path / "out2")["a.png"]["error"]


def test_a_clashing_input_stays_failed_and_an_interrupted_overwrite_pass_is_finished_on_resume(tmp_path, tiny_sam,
                                                                                                monkeypatch):
    from medadapt.inference import batch

    src = tmp_path / "in"
    prompts = _pngs(src, 4)
    img, mask = _disc(48, 48, 24, 24, r=9)
    Image.fromarray(img.astype(np.uint8)).save(src / "img00.jpg")  # writes img00.png, as img00.png does
    prompts["img00.jpg"] = {"boxes": [_box(mask)]}
    first = segment_batch(src, tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    assert (first.ok, first.failed) == (4, 1)
    again = segment_batch(src, tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    assert (again.ok, again.skipped, again.failed) == (0, 4, 1)  # not "skipped" with the other file's mask
    assert read_manifest(tmp_path / "out")["img00.png"]["status"] == "failed"
    # an --overwrite pass that stops after two files: the other outputs are still the earlier run's
    run = batch._run
    monkeypatch.setattr(batch, "_run", lambda seg, items, *a, **k: run(seg, items[:2], *a, **k))
    segment_batch(src, tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False, overwrite=True)
    monkeypatch.setattr(batch, "_run", run)
    resumed = segment_batch(src, tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    # the pass reached img00.jpg (redone) and the clashing img00.png (failed); the three it did not reach are redone
    assert (resumed.ok, resumed.skipped, resumed.failed) == (3, 1, 1)
    settings = json.loads((tmp_path / "out" / "segment.json").read_text())
    with pytest.raises(MedAdaptError, match="adapter_sha256"):  # the run folder was trained again in place
        batch._check_settings(tmp_path / "out", {**settings, "adapter_sha256": "another"}, overwrite=False)


@pytest.mark.parametrize("prompts, message", [
    (None, "needs prompts"),
    ({"nope.png": {"boxes": [[1, 1, 5, 5]]}}, "not an input"),
    ({"img00.png": {"boxes": [[1, 1, 5]]}}, r"non-empty list like \[\[x0, y0, x1, y1\]"),
    ({"img00.png": {"box": [[1, 1, 5, 5]]}}, "unknown key"),
    ({"img00.png": {"points": [[1, 1]], "point_labels": [2]}}, "point_labels"),
    ({"vol.nii.gz": {"boxes": [[1, 1, 5, 5]]}}, "is a volume"),
    ({"vol.nii.gz": {"slices": {"one": {"boxes": [[1, 1, 5, 5]]}}}}, "not a slice index"),
])
def test_user_errors_are_one_line_before_the_model_loads(tmp_path, capsys, prompts, message):
    _pngs(tmp_path / "in", 1)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), tmp_path / "in" / "vol.nii.gz")
    args = ["segment", str(tmp_path / "in"), str(tmp_path / "out"), "--model", "no_such_model"]
    if prompts is not None:
        (tmp_path / "p.json").write_text(json.dumps(prompts))
        args += ["--prompts", str(tmp_path / "p.json")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("medadapt: error: ") and err.count("\n") == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()


def test_the_output_folder_is_never_the_input_folder(tmp_path):
    _pngs(tmp_path / "in", 1)
    with pytest.raises(MedAdaptError, match="is the input folder"):
        segment_batch(tmp_path / "in", tmp_path / "in", prompts={}, progress=False)


def test_earlier_output_folders_inside_the_input_folder_are_not_inputs(tmp_path):
    from medadapt.inference.batch_inputs import find_inputs

    _pngs(tmp_path / "in", 2)
    (tmp_path / "in" / "masks").mkdir()  # what an earlier `medadapt segment in in/masks` left
    (tmp_path / "in" / "masks" / "segment.json").write_text("{}")
    shutil.copy(next((tmp_path / "in").glob("*.png")), tmp_path / "in" / "masks")
    names = sorted(item.name for item in find_inputs(tmp_path / "in", tmp_path / "in" / "masks_v2"))
    assert len(names) == 2 and not any(n.startswith("masks/") for n in names)


# --------------------------------------------------------------------------- what the review of batch runs found
def _tiny_float32() -> Segmenter:
    from medadapt.foundation import build_backbone

    return Segmenter(build_backbone("tiny_sam_vit"), device="cpu")


def test_a_segmenter_with_other_weights_is_refused_in_the_same_output_folder(tmp_path):
    """A Segmenter passed in (or an exported model) is recorded by a fingerprint of its weights: a second model's
    masks never join the first one's in one folder, and its run does not take them for done."""
    import torch

    prompts = _pngs(tmp_path / "in", 2)
    first, other = _tiny_float32(), _tiny_float32()
    with torch.no_grad():
        next(other.backbone.mask_decoder.parameters()).add_(0.5)
    assert segment_batch(tmp_path / "in", tmp_path / "out", first, prompts=prompts, workers=0, progress=False).ok == 2
    assert segment_batch(tmp_path / "in", tmp_path / "out", _tiny_float32(), prompts=prompts, workers=0,
                         progress=False).skipped == 2  # the same weights, built again: resumed
    with pytest.raises(MedAdaptError, match="weights_used: .* holds other weights"):
        segment_batch(tmp_path / "in", tmp_path / "out", other, prompts=prompts, workers=0, progress=False)
    redone = segment_batch(tmp_path / "in", tmp_path / "out", other, prompts=prompts, workers=0, progress=False,
                           overwrite=True)
    assert (redone.ok, redone.skipped) == (2, 0)
    # a run that built its model from names (the command line) and one given the same model resume each other
    built = tmp_path / "built"
    named = dict(prompts=prompts, model="tiny_sam_vit", device="cpu", workers=0, progress=False)
    assert segment_batch(tmp_path / "in", built, **named).ok == 2
    tiny = Segmenter.from_pretrained("tiny_sam_vit", device="cpu")
    assert segment_batch(tmp_path / "in", built, tiny, prompts=prompts, workers=0, progress=False).skipped == 2
    # built from the same names on a machine whose precision differs: the names say which model it is
    settings = json.loads((built / "segment.json").read_text())
    (built / "segment.json").write_text(json.dumps({**settings, "weights_used": "f00d", "weights_from": "built"}))
    assert segment_batch(tmp_path / "in", built, **named).skipped == 2
    # an exported model by the weights its manifest records; a student and a base decoder count too
    from types import SimpleNamespace

    from medadapt.inference.batch import _weights_fingerprint

    def fake(fingerprint, student=None):
        return SimpleNamespace(backbone=SimpleNamespace(manifest={"weights_fingerprint": fingerprint}),
                               base_decoder=None, student=student)

    assert _weights_fingerprint(fake("a")) == _weights_fingerprint(fake("a")) != _weights_fingerprint(fake("b"))
    student = SimpleNamespace(network=torch.nn.Linear(2, 2))
    assert _weights_fingerprint(fake("a", student)) != _weights_fingerprint(fake("a"))


def test_an_output_folder_holding_files_it_did_not_write_is_refused(tmp_path, tiny_sam):
    """Pointing OUT at a dataset's own masks/ neither takes the ground truth for finished outputs nor replaces it."""
    prompts = _pngs(tmp_path / "data" / "images", 2)
    (tmp_path / "data" / "masks").mkdir()
    for name in prompts:
        Image.fromarray(np.full((48, 48), 7, np.uint8)).save(tmp_path / "data" / "masks" / name)
    for overwrite in (False, True):
        with pytest.raises(MedAdaptError, match="did not write .*choose a new or empty output folder"):
            segment_batch(tmp_path / "data" / "images", tmp_path / "data" / "masks", tiny_sam, prompts=prompts,
                          workers=0, progress=False, overwrite=overwrite)
    assert sorted(p.name for p in (tmp_path / "data" / "masks").iterdir()) == sorted(prompts)
    assert all(set(np.unique(load_mask(tmp_path / "data" / "masks" / n))) == {7} for n in prompts)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_text("")  # an empty folder (hidden files aside) is fine
    assert segment_batch(tmp_path / "data" / "images", tmp_path / "empty", tiny_sam, prompts=prompts, workers=0,
                         progress=False).ok == 2


def test_a_file_that_fails_in_an_overwrite_pass_loses_its_earlier_mask_and_is_not_retried_unasked(tmp_path,
                                                                                                   tiny_sam):
    prompts = _pngs(tmp_path / "in", 2)
    assert segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, workers=0,
                         progress=False).ok == 2
    (tmp_path / "in" / "img01.png").write_bytes(b"truncated")  # being copied again when the new pass reads it
    other = {name: {"boxes": [[1, 1, 20, 20]]} for name in prompts}
    again = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=other, workers=0, progress=False,
                          overwrite=True)
    assert (again.ok, again.failed) == (1, 1)
    assert not (tmp_path / "out" / "img01.png").exists()  # the earlier settings' mask is not left as this run's
    plain = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=other, workers=0, progress=False)
    assert (plain.ok, plain.skipped, plain.not_retried, plain.failed) == (0, 1, 1, 0)
    _pngs(tmp_path / "fixed", 2)
    shutil.copy(tmp_path / "fixed" / "img01.png", tmp_path / "in" / "img01.png")
    retried = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=other, workers=0, progress=False,
                            retry_failed=True)
    assert (retried.ok, retried.skipped) == (1, 1) and (tmp_path / "out" / "img01.png").is_file()


def test_a_subfolder_named_images_makes_a_dataset_only_with_masks_or_labels_beside_it(tmp_path):
    from medadapt.inference.batch_inputs import find_inputs

    for name in ("images/a.png", "patient1/b.png", "c.png"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 50, np.uint8)).save(tmp_path / "in" / name)
    names = [item.name for item in find_inputs(tmp_path / "in", tmp_path / "out")]
    assert names == ["c.png", "images/a.png", "patient1/b.png"]  # an ordinary folder: every input
    (tmp_path / "in" / "labels").mkdir()
    assert [item.name for item in find_inputs(tmp_path / "in", tmp_path / "out")] == ["images/a.png"]  # a dataset


def test_a_file_name_that_is_not_utf8_is_segmented_recorded_and_resumed(tmp_path, tiny_sam):
    from medadapt.inference.batch import _append

    prompts = _pngs(tmp_path / "in", 2)
    latin1 = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name from an old archive: 'caf\udce9.png'
    try:
        shutil.copy(tmp_path / "in" / "img00.png", tmp_path / "in" / latin1)
    except (OSError, UnicodeError):
        pytest.skip("this file system takes UTF-8 names only")
    prompts[latin1] = prompts["img00.png"]
    first = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    assert (first.ok, first.failed) == (3, 0)
    assert (tmp_path / "out" / latin1).is_file() and read_manifest(tmp_path / "out")[latin1]["status"] == "ok"
    again = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    assert (again.ok, again.skipped) == (0, 3)
    _append(tmp_path / "out" / "manifest.csv", {"file": "odd\ud800.png", "status": "failed", "finished": "9"})
    assert "odd\\ud800.png" in read_manifest(tmp_path / "out")  # recorded escaped rather than ending the run


UNREADABLE = textwrap.dedent("""
    import json, sys
    from medadapt.inference import read_manifest, segment_batch
    segment_batch({src!r}, {out!r}, prompts={{"a.png": {{"boxes": [[2, 2, 30, 30]]}}}}, model="tiny_sam_vit",
                  device="cpu", workers=0, progress=False)
    print(json.dumps({{k: [r["status"], r["error"]] for k, r in read_manifest({out!r}).items()}}))
""")


def test_unreadable_entries_are_failed_lines_not_a_crash_or_a_silent_gap(tmp_path):
    """A sub-folder that may not be listed (mode 000 or 0311), or an extension-less file that may not be read to
    tell whether it is DICOM, is a failed line saying so; the other inputs are segmented. Run without root's
    permission override (setpriv), as permissions mean nothing to it."""
    import shutil as sh

    src = tmp_path / "in"
    _pngs(src, 1)
    shutil.move(src / "img00.png", src / "a.png")
    for name in ("locked", "listless"):
        _pngs(src / name, 1)
    (src / "LOCK").write_text("another user's lock file")
    command = [sys.executable, "-c", UNREADABLE.format(src=str(src), out=str(tmp_path / "out"))]
    if os.geteuid() == 0:
        if sh.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    os.chmod(src / "locked", 0o000)
    os.chmod(src / "listless", 0o311)
    os.chmod(src / "LOCK", 0o000)
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        for name, mode in (("locked", 0o755), ("listless", 0o755), ("LOCK", 0o644)):
            os.chmod(src / name, mode)
    if proc.returncode and "setpriv" in proc.stderr:
        pytest.skip(f"setpriv cannot drop the override here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rows["a.png"] == ["ok", ""]
    assert set(rows) == {"a.png", "locked", "listless", "LOCK"}, rows
    assert all(rows[n][0] == "failed" and "cannot list this folder" in rows[n][1] for n in ("locked", "listless"))
    assert rows["LOCK"][0] == "failed" and "cannot read it to tell whether it is a DICOM image" in rows["LOCK"][1]


def test_blank_images_and_blank_prompted_slices_are_written_empty(tmp_path, tiny_sam):
    """A blank (constant) prompted slice is left empty and the volume's other slices are kept, as automatic mode
    leaves a blank slice empty; a blank 2-D image gets an empty mask. Either way a warning names it."""
    src = tmp_path / "in"
    src.mkdir()
    disc, mask = _disc(48, 48, 24, 24, r=9)
    vol = np.stack([np.zeros((48, 48), np.float32), disc, disc], -1)  # slice 0: padding
    nib.save(nib.Nifti1Image(vol, np.eye(4)), src / "v.nii.gz")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(src / "blank.png")
    box = [_box(volume_slice(load_volume(src / "v.nii.gz")[0], 1) > 100)]
    prompts = {"v.nii.gz": {"slices": {"0": {"boxes": box}, "1": {"boxes": box}}},
               "blank.png": {"boxes": [[2, 2, 20, 20]]}}
    with pytest.warns(UserWarning) as caught:
        result = segment_batch(src, tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    rows = read_manifest(tmp_path / "out")
    assert (result.ok, result.failed) == (2, 0), {k: r["error"] for k, r in rows.items()}
    text = " ".join(str(w.message) for w in caught)
    assert "v.nii.gz: prompted slice(s) 0 along axis 2 are blank" in text and "blank.png is blank" in text
    labels = load_volume(tmp_path / "out" / "v.nii.gz")[0]
    assert labels[..., 0].max() == 0 and labels[..., 1].max() > 0  # the other slice is kept
    blank = load_mask(tmp_path / "out" / "blank.png")
    assert blank.shape == (30, 40) and blank.max() == 0


def test_a_bad_axis_is_refused_before_anything_is_written(tmp_path, tiny_sam):
    prompts = _pngs(tmp_path / "in", 1)
    with pytest.raises(MedAdaptError, match="axis must be 0, 1 or 2"):
        segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, axis=3, workers=0, progress=False)
    assert not (tmp_path / "out").exists()
    assert segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, axis=-1, workers=0,
                         progress=False).ok == 1
    assert json.loads((tmp_path / "out" / "segment.json").read_text())["axis"] == 2  # -1 is axis 2
    assert segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, axis=2, workers=0,
                         progress=False).skipped == 1


def _series(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True)
    uid = generate_uid()
    for k in range(n):
        img, _ = _disc(40, 44, 20, 22, r=8, seed=k)
        _dicom(folder / f"im{k}", (img * 5).astype(np.uint16), 2.5 * k, k + 1, uid)  # extension-less, as from PACS


def test_a_dicom_series_given_as_dot_is_named_after_its_folder(tmp_path, monkeypatch):
    from medadapt.inference.batch_inputs import find_inputs

    _series(tmp_path / "series_3")
    monkeypatch.chdir(tmp_path / "series_3")
    (item,) = find_inputs(".", tmp_path / "out")
    assert item.out == (tmp_path / "out" / "series_3.nii.gz").resolve()


def test_upper_case_npy_inputs_are_written(tmp_path, tiny_sam):
    img, mask = _disc(48, 48, 24, 24, r=9)
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "lower.npy", img)
    shutil.copy(tmp_path / "in" / "lower.npy", tmp_path / "in" / "UPPER.NPY")
    prompts = {name: {"boxes": [_box(mask)]} for name in ("lower.npy", "UPPER.NPY")}
    result = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    assert (result.ok, result.failed) == (2, 0), read_manifest(tmp_path / "out")["UPPER.NPY"]["error"]
    assert np.array_equal(np.load(tmp_path / "out" / "UPPER.NPY"), np.load(tmp_path / "out" / "lower.npy"))


def test_a_dicom_series_mask_is_stored_as_medadapt_predict_stores_it(tmp_path, tiny_sam):
    from medadapt.io.imaging import save_mask

    _series(tmp_path / "in" / "s1")
    prompts = {"s1": {"slices": {"1": {"boxes": [[10, 10, 34, 30]]}}}}
    assert segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, workers=0,
                         progress=False).ok == 1
    written = nib.load(tmp_path / "out" / "s1.nii.gz")
    like_predict = nib.load(save_mask(np.asarray(written.dataobj), tmp_path / "predict.nii.gz",
                                      reference=tmp_path / "in" / "s1"))  # what `medadapt predict` writes
    for key in ("qform_code", "sform_code", "xyzt_units"):
        assert int(written.header[key]) == int(like_predict.header[key]), key
    assert int(written.header["qform_code"]) == int(written.header["sform_code"]) == 1  # scanner
    np.testing.assert_allclose(written.affine, load_volume(tmp_path / "in" / "s1")[1], atol=1e-5)
