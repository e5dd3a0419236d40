"""What a batch is made of, on awkward folders and lists: linked folders, list files of links, a DICOMDIR, an empty
``imagesTs/``, entries that cannot be looked at, outputs two inputs want, a one-plane NIfTI, inputs that went away,
a record that cannot come back from its reader. The tiny random SAM runs them: only what is written matters."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medadapt.cli import main
from medadapt.core.errors import MedAdaptError
from medadapt.inference import read_manifest, segment_batch
from medadapt.inference.batch_inputs import find_inputs, read_prompts
from medadapt.io.imaging import load_image


def _png(path: Path, h: int = 40, w: int = 40, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(path)


BOX = {"boxes": [[4, 4, 30, 30]]}


def test_linked_folders_are_followed_once_each(tmp_path):
    _png(tmp_path / "store" / "more" / "b.png")
    _png(tmp_path / "in" / "a.png")
    os.symlink(tmp_path / "store" / "more", tmp_path / "in" / "linked")
    os.symlink(tmp_path / "in", tmp_path / "in" / "loop")  # a link back up: no endless walk, no second a.png
    assert [i.name for i in find_inputs(tmp_path / "in", tmp_path / "out")] == ["a.png", "linked/b.png"]
    _png(tmp_path / "in" / "zreal" / "c.png")
    os.symlink(tmp_path / "in" / "zreal", tmp_path / "in" / "alink")  # sorts first; the real folder names it
    assert [i.name for i in find_inputs(tmp_path / "in", tmp_path / "out")] == ["a.png", "zreal/c.png",
                                                                                "linked/b.png"]
    (tmp_path / "twice.txt").write_text("in/a.png\nin/./a.png\n")
    with pytest.warns(UserWarning, match="listed more than once"):
        assert [i.name for i in find_inputs(tmp_path / "twice.txt", tmp_path / "out")] == ["a.png"]


def test_a_list_names_its_files_as_listed_and_fails_the_missing_ones_alone(tmp_path, monkeypatch, tiny_sam):
    for i in (1, 2):
        _png(tmp_path / "annex" / f"SHA256-{i}.png", seed=i)
        os.symlink(tmp_path / "annex" / f"SHA256-{i}.png", tmp_path / f"patient{i}.png")
    listed = tmp_path / "list.txt"
    listed.write_text("\ufeffpatient1.png\npatient2.png\nmissing.png\n", encoding="utf-8")  # a BOM, as Notepad saves
    items = find_inputs(listed, tmp_path / "out")
    assert [(i.name, i.out.name) for i in items] == [("patient1.png", "patient1.png"), ("patient2.png", "patient2.png"),
                                                     ("missing.png", "missing.png")]
    prompts = {"patient1.png": BOX, "patient2.png": BOX}
    result = segment_batch(listed, tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    rows = read_manifest(tmp_path / "out")
    assert (result.ok, result.failed) == (2, 1) and "not found" in rows["missing.png"]["error"]
    monkeypatch.setenv("HOME", str(tmp_path))  # "~/list.txt" from Python is the list, not an image named so
    assert [i.name for i in find_inputs("~/list.txt", tmp_path / "out2")][:2] == ["patient1.png", "patient2.png"]
    (tmp_path / "none.txt").write_text("gone1.png\ngone2.png\n")
    with pytest.raises(MedAdaptError, match="none of the 2 listed inputs exists"):
        find_inputs(tmp_path / "none.txt", tmp_path / "out3")


def test_a_dicomdir_is_no_image_and_an_empty_imagests_is_skipped(tmp_path):
    _png(tmp_path / "cd" / "a.png")
    (tmp_path / "cd" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # a CD's index, no pixels
    assert [i.name for i in find_inputs(tmp_path / "cd", tmp_path / "out")] == ["a.png"]
    ds = tmp_path / "Dataset001"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (ds / sub).mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(0, 1, (16, 16, 3)).astype(np.float32), np.eye(4)),
             ds / "imagesTr" / "case0_0000.nii.gz")
    assert [i.name for i in find_inputs(ds, tmp_path / "out2")] == ["imagesTr/case0_0000.nii.gz"]
    from medadapt.data import DataConfig, discover_cases

    with pytest.warns(UserWarning, match="imagesTs is empty"):  # training reads the dataset's other folders too
        assert [c.case_id for c in discover_cases(DataConfig(root=str(ds), classes=["x"], layout="nnunet"))] == ["case0"]


def test_an_entry_that_cannot_be_looked_at_is_its_own_failed_line(tmp_path, monkeypatch, tiny_sam):
    _png(tmp_path / "in" / "a.png")
    _png(tmp_path / "in" / "half" / "b.png")
    is_dir = Path.is_dir

    def searchless(self):  # as in a folder that can be listed but not entered (chmod 644)
        if self.name == "b.png":
            raise PermissionError(13, "Permission denied", str(self))
        return is_dir(self)

    monkeypatch.setattr(Path, "is_dir", searchless)
    result = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts={"a.png": BOX}, workers=0,
                           progress=False)
    rows = read_manifest(tmp_path / "out")
    assert (result.ok, result.failed) == (1, 1) and "Permission denied" in rows["half/b.png"]["error"]


def test_an_output_stays_with_the_input_that_wrote_it(tmp_path, tiny_sam):
    _png(tmp_path / "in" / "scan.png", 40, 40)
    segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts={"scan.png": BOX}, workers=0, progress=False)
    _png(tmp_path / "in" / "scan.jpg", 64, 80)  # added later; sorts first, and would write scan.png too
    again = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts={"scan.png": BOX}, workers=0,
                          progress=False)
    rows = read_manifest(tmp_path / "out")
    assert (again.skipped, again.failed) == (1, 1) and rows["scan.png"]["status"] == "ok"
    assert "also the output of scan.png" in rows["scan.jpg"]["error"]
    assert np.asarray(Image.open(tmp_path / "out" / "scan.png")).shape == (40, 40)


def test_a_volume_needs_prompts_on_some_slice(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    items = find_inputs(tmp_path, tmp_path / "out")
    with pytest.raises(MedAdaptError, match=r"slices is empty"):
        read_prompts({"vol.nii.gz": {"slices": {}}}, items)


def test_a_nifti_of_one_coronal_plane_is_segmented_as_that_image(tmp_path, tiny_sam):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(rng.normal(100, 20, (64, 1, 48)).astype(np.float32), np.eye(4)),
             tmp_path / "in" / "xray.nii.gz")
    shown = load_image(tmp_path / "in" / "xray.nii.gz")  # what `medadapt predict` shows and prompts are drawn on
    prompts = {"xray.nii.gz": {"slices": {"0": {"boxes": [[8, 10, 40, 50]]}}}}
    result = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    assert result.ok == 1, read_manifest(tmp_path / "out")
    written = np.asarray(nib.load(tmp_path / "out" / "xray.nii.gz").dataobj)
    assert written.shape == (64, 1, 48) and shown.shape == (48, 64)
    tiny_sam.set_image(shown)
    expected = tiny_sam.predict(boxes=[[8, 10, 40, 50]]).masks[0]
    assert 0 < expected.sum() == (written > 0).sum()  # the box answered on the plane, not on 1-pixel strips
    from medadapt.inference.segment import segment_volume_file

    segment_volume_file(tmp_path / "in" / "xray.nii.gz", out=tmp_path / "one.nii.gz", boxes=[[0, 8, 10, 40, 50]],
                        model="tiny_sam_vit", device="cpu")
    alone = np.asarray(nib.load(tmp_path / "one.nii.gz").dataobj)  # `medadapt predict` on the file: the same plane
    assert alone.shape == (64, 1, 48) and (alone > 0).any()


def test_overwrite_removes_the_outputs_of_inputs_that_are_gone(tmp_path, tiny_sam):
    for n in ("a.png", "b.png"):
        _png(tmp_path / "in" / n)
    prompts = {"a.png": BOX, "b.png": BOX}
    segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    (tmp_path / "in" / "b.png").unlink()
    with pytest.warns(UserWarning, match="removed the outputs of 1 inputs that are gone: b.png"):
        segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts={"a.png": BOX}, multimask=True,
                      overwrite=True, workers=0, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png"]
    assert read_manifest(tmp_path / "out")["b.png"]["status"] == "removed"


def test_a_record_that_cannot_come_back_from_its_reader_fails_that_file_alone(tmp_path, tiny_sam, monkeypatch):
    from medadapt.inference import batch_reading

    for i in range(4):
        _png(tmp_path / "in" / f"img{i}.png", seed=i)
    read = batch_reading.Reader.__getitem__

    class Unsendable:  # as a record too large to pass back: pickling it fails in the reader process
        def __reduce__(self):
            raise MemoryError("cannot allocate the pickle")

    def reading(self, i):
        record = read(self, i)
        return {**record, "extra": Unsendable()} if i == 1 else record

    monkeypatch.setattr(batch_reading.Reader, "__getitem__", reading)
    with pytest.raises(MemoryError):
        pickle.dumps(Unsendable())
    result = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts={f"img{i}.png": BOX for i in range(4)},
                           workers=1, progress=False)
    rows = read_manifest(tmp_path / "out")
    assert (result.ok, result.failed) == (3, 1) and "passed back from the reader" in rows["img1.png"]["error"]


def test_a_rank_says_how_many_inputs_it_left_to_the_others(tmp_path, monkeypatch, capsys):
    for i in range(8):
        _png(tmp_path / "in" / f"img{i}.png", seed=i)
    (tmp_path / "p.json").write_text(json.dumps({f"img{i}.png": BOX for i in range(8)}))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")  # left over from a torchrun job
    args = ["segment", str(tmp_path / "in"), str(tmp_path / "out"), "--prompts", str(tmp_path / "p.json"),
            "--model", "tiny_sam_vit", "--workers", "0", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    assert "2 written" in (out := capsys.readouterr().out) and "6 left to the other ranks (this is rank 0 of 4" in out


def test_a_folder_of_radiographs_is_one_image_per_file_and_a_series_stays_one_volume(tmp_path, tiny_sam):
    """DICOM files that are each a series of their own (radiographs, exported one per study) are 2-D images; the
    files of one series are its slices; a report without pixels beside the radiographs is left out."""
    from dicom_files import write_dicom
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(0)
    xr = tmp_path / "in" / "xrays"
    xr.mkdir(parents=True)
    for name in ("chest_a.dcm", "chest_b"):  # extension-less, as from a PACS export
        write_dicom(xr / name, rng.integers(0, 900, (40, 40)))
    report = write_dicom(xr / "report.dcm", rng.integers(0, 9, (4, 4)))
    import pydicom

    ds = pydicom.dcmread(report)
    for tag in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(ds, tag)
    ds.Modality, ds.SOPClassUID = "SR", "1.2.840.10008.5.1.4.1.1.88.11"  # a basic text structured report
    ds.save_as(report)
    uid = generate_uid()
    (tmp_path / "in" / "ct").mkdir()
    for k in range(3):
        write_dicom(tmp_path / "in" / "ct" / f"s{k}", rng.integers(0, 900, (40, 40)), 2.0 * k, series=uid,
                    instance=k + 1)
    items = {i.name: i for i in find_inputs(tmp_path / "in", tmp_path / "out")}
    assert set(items) == {"xrays/chest_a.dcm", "xrays/chest_b", "ct"}
    assert not items["xrays/chest_b"].volume and items["ct"].volume
    prompts = {"xrays/chest_a.dcm": BOX, "xrays/chest_b": BOX, "ct": {"slices": {"1": BOX}}}
    result = segment_batch(tmp_path / "in", tmp_path / "out", tiny_sam, prompts=prompts, workers=0, progress=False)
    assert (result.ok, result.failed) == (3, 0), read_manifest(tmp_path / "out")
    assert load_image(tmp_path / "out" / "xrays" / "chest_b.png").shape == (40, 40)
    assert (tmp_path / "out" / "ct.nii.gz").is_file()


def test_outputs_that_differ_in_case_only_clash_where_the_file_system_cannot_keep_both(tmp_path, monkeypatch):
    from medadapt.inference import batch_inputs

    _png(tmp_path / "in" / "Scan.png")
    _png(tmp_path / "in" / "sub" / "scan.png", seed=1)
    _png(tmp_path / "in" / "scan.PNG", seed=2)  # -> scan.png, as Scan.png's output on a case-blind disk
    made = tmp_path / "probe_a"
    made.write_text("")
    assert batch_inputs.case_blind(tmp_path) == (tmp_path / "PROBE_A").exists()  # the probe tells what the disk does
    assert not list(tmp_path.glob(".medadapt-case-*"))  # and leaves nothing behind
    if not batch_inputs.case_blind(tmp_path):
        assert not [i.error for i in find_inputs(tmp_path / "in", tmp_path / "out") if i.error]
    monkeypatch.setattr(batch_inputs, "case_blind", lambda folder: True)
    items = {i.name: i for i in find_inputs(tmp_path / "in", tmp_path / "out")}
    assert not items["Scan.png"].error and not items["sub/scan.png"].error
    assert "also the output of Scan.png (this file system does not tell names apart by case)" in items["scan.PNG"].error


def test_a_damaged_file_beside_radiographs_is_not_left_out_unseen(tmp_path):
    from dicom_files import write_dicom

    rng = np.random.default_rng(0)
    xr = tmp_path / "in" / "xrays"
    xr.mkdir(parents=True)
    for name in ("a.dcm", "b.dcm", "c.dcm"):
        write_dicom(xr / name, rng.integers(0, 900, (40, 40)))
    data = (xr / "c.dcm").read_bytes()
    (xr / "c.dcm").write_bytes(data[:200])  # the header cut short
    items = find_inputs(tmp_path / "in", tmp_path / "out")
    assert [i.name for i in items] == ["xrays"]  # read as a series, whose reading names the damaged file
    (xr / "c.dcm").write_bytes(data[: len(data) - 400])  # the pixels cut short: an image of its own, to fail alone
    assert [i.name for i in find_inputs(tmp_path / "in", tmp_path / "out")] == ["xrays/a.dcm", "xrays/b.dcm",
                                                                                 "xrays/c.dcm"]
