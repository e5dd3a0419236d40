"""Hostile input to `medadapt predict`: broken and malicious images, volumes, DICOM, prompts and outputs.

Every case runs the command line in-process and asserts exit status 2, exactly one stderr line
starting `medadapt: error:` (captured at the file descriptor, so a library printing on its own shows
up), the message, and that no file under the test's folder was created, changed or removed. Cases
that should work instead assert the result. Pickles and files the other commands read:
`test_hostile_files.py`.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_files import write_dicom
from PIL import Image
from pydicom.uid import generate_uid

from medadapt.cli import main

RNG = np.random.default_rng(0)
BOX = ["--box", "2", "2", "20", "20"]


# --------------------------------------------------------------------------- the shared check
def listing(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> a hash of its bytes ('dir' for a folder)."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


#: a progress bar tqdm drew before the error ("evaluating:  50%|#####     | 1/2 ..."): not a message
PROGRESS = re.compile(r"^[\w ()-]+: +\d+%\|")


def refused(argv: list, capfd, root: Path, expect: str) -> str:
    """``medadapt ARGV`` exits 2 with one stderr line matching ``expect`` and leaves ``root`` as it was.

    The error is stderr's only line, or its last one after nothing but the progress bar of a command
    that failed part-way (a case read lazily during evaluation).
    """
    before = listing(root)
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip()]
    assert code == 2, err
    assert lines and lines[-1].startswith("medadapt: error: "), err
    assert all(PROGRESS.match(line) for line in lines[:-1]), err
    assert re.search(expect, lines[-1]), lines[-1]
    assert listing(root) == before, "files under the test folder changed"
    return lines[-1]


def predict(image, *extra, out="out.png") -> list:
    return ["predict", image, "--model", "tiny_sam_vit", *extra, "--out", Path(image).parent / out]


# --------------------------------------------------------------------------- files to break
def scan(root: Path, name: str = "scan.png") -> Path:
    arr = np.full((48, 64), 100, np.uint8)
    arr[10:30, 20:40] = 220
    Image.fromarray(arr).save(root / name)
    return root / name


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A valid PNG stream whose header declares ``width`` x ``height`` gray pixels, with 100 bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))
    return path


def volume(root: Path, name: str = "ct.nii.gz", shape=(32, 40, 6), data=None) -> Path:
    data = RNG.normal(100, 30, shape).astype(np.float32) if data is None else data
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1.0, 2.0, 1.0])), root / name)
    return root / name


def patched_nifti(root: Path, name: str, patch: dict[int, bytes]) -> Path:
    """An uncompressed NIfTI-1 file with header bytes replaced (offset -> bytes)."""
    raw = bytearray(volume(root, "plain.nii").read_bytes())
    (root / "plain.nii").unlink()
    for offset, value in patch.items():
        raw[offset:offset + len(value)] = value
    (root / name).write_bytes(bytes(raw))
    return root / name


def dicom(path: Path, pixels: np.ndarray, z: float = 0.0, series: str | None = None, **tags) -> Path:
    return write_dicom(path, pixels, z, series=series, **tags)


def pixels(rows: int = 32, cols: int = 40) -> np.ndarray:
    return RNG.integers(0, 3000, (rows, cols)).astype(np.uint16)


# --------------------------------------------------------------------------- images
def _truncated_png(root):
    data = scan(root, "full.png").read_bytes()
    (root / "full.png").unlink()
    (root / "scan.png").write_bytes(data[: len(data) // 2])
    return root / "scan.png"


def _npy(array, allow_pickle=False):
    def make(root):
        np.save(root / "scan.npy", array, allow_pickle=allow_pickle)
        return root / "scan.npy"
    return make


def _npy_declaring(shape):
    def make(root):
        with open(root / "scan.npy", "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": shape})
            fh.write(b"\0" * 100)
        return root / "scan.npy"
    return make


def _multipage_tiff(root):
    arr = np.asarray(Image.open(scan(root, "page.png")))
    (root / "page.png").unlink()
    Image.fromarray(arr).save(root / "scan.tif", save_all=True, append_images=[Image.fromarray(255 - arr)])
    return root / "scan.tif"


def _written(root, name, data):
    (root / name).write_bytes(data)
    return root / name


IMAGES = {
    "truncated_png": (_truncated_png, [], "could not read .*scan.png as an image.*truncated"),
    "zero_byte_png": (lambda r: _written(r, "scan.png", b""), [], "could not read .*scan.png as an image"),
    "text_named_png": (lambda r: _written(r, "scan.png", b"patient notes\n" * 20), [], "could not read .*scan.png"),
    "unknown_extension": (lambda r: _written(r, "scan.xyz", b"x"), [], r"unsupported image file .*extension '\.xyz'"),
    "no_extension_not_dicom": (lambda r: _written(r, "scan", b"x" * 200), [], r"extension '\(none\)'"),
    "png_declaring_1600_megapixels": (lambda r: png_declaring(r / "scan.png", 40000, 40000), [],
                                      "decompression bomb"),
    "png_declaring_100_megapixels": (lambda r: png_declaring(r / "scan.png", 10000, 10000), [],
                                     "could not read .*scan.png.*truncated"),  # no pillow warning on stderr
    "constant_image": (lambda r: _npy(np.zeros((48, 64)))(r), [], "is constant"),
    "nan_pixels": (_npy(np.where(RNG.random((48, 64)) > 0.5, np.nan, 1.0)), [], "NaN values"),
    "complex_pixels": (_npy(np.ones((48, 64), complex)), [], "is complex"),
    "channel_first_array": (_npy(np.arange(3 * 48 * 64).reshape(3, 48, 64)), [], r"shape \(3, 48, 64\)"),
    "volume_as_npy": (_npy(np.arange(8 * 48 * 64).reshape(8, 48, 64)), [], r"slice the volume"),
    "npy_declaring_160_gb": (_npy_declaring((200000, 200000)), [], r"declares an array of shape \(200000, 200000\)"),
    "npy_shorter_than_its_header": (_npy_declaring((20, 20)), [], "could not read .*scan.npy as a .npy array"),
    "multipage_tiff_without_slice": (_multipage_tiff, [], r"has 2 slices; pass slice_index=0\.\.1"),
    "multipage_tiff_slice_out_of_range": (_multipage_tiff, ["--slice", "5"], r"valid range is 0\.\.1"),
    "empty_folder": (lambda r: (r / "series").mkdir() or r / "series", [], "no DICOM images found"),
}


@pytest.mark.parametrize("case", list(IMAGES))
def test_a_broken_image_is_one_line(tmp_path, capfd, case):
    make, extra, expect = IMAGES[case]
    refused(predict(make(tmp_path), *extra, *BOX), capfd, tmp_path, expect)


@pytest.mark.parametrize("mode, expected", [("RGBA", (48, 64, 3)), ("I;16", (48, 64))])
def test_four_channel_and_16_bit_images_are_segmented(tmp_path, capfd, mode, expected):
    from medadapt.io import load_image, load_mask

    arr = np.asarray(Image.open(scan(tmp_path)))
    if mode == "RGBA":
        img = Image.fromarray(np.dstack([arr, arr, arr, np.full_like(arr, 128)]), mode="RGBA")
    else:
        img = Image.fromarray(arr.astype(np.uint16) * 250)
    img.save(tmp_path / "scan.png")
    assert load_image(tmp_path / "scan.png").shape == expected
    assert main([str(a) for a in predict(tmp_path / "scan.png", *BOX)]) == 0, capfd.readouterr().err
    assert capfd.readouterr().err == ""
    assert load_mask(tmp_path / "out.png").shape == (48, 64)


# --------------------------------------------------------------------------- volumes
def _bomb(root):
    small = volume(root, "small.nii", shape=(4, 4, 4))
    raw = bytearray(small.read_bytes())
    small.unlink()
    raw[40:48] = struct.pack("<4h", 3, 2000, 2000, 2000)  # dim[0..3]: 32 GB as float32, in a few kB of gzip
    (root / "ct.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    return root / "ct.nii.gz"


def _truncated_gzip(root):
    raw = volume(root).read_bytes()
    (root / "ct.nii.gz").write_bytes(raw[: len(raw) // 2])
    return root / "ct.nii.gz"


def _plain_named_gz(root):
    raw = volume(root).read_bytes()
    (root / "ct.nii.gz").write_bytes(gzip.decompress(raw))
    return root / "ct.nii.gz"


def _nan_slice(root):
    data = RNG.normal(100, 30, (32, 40, 6)).astype(np.float32)
    data[:, :, 3] = np.nan
    return volume(root, data=data)


VOLUMES = {
    "nifti_bomb": (_bomb, ["--slice", "0"], r"declares a volume of shape \(2000, 2000, 2000\).*MEDADAPT_MAX_VOLUME_GB"),
    "five_dimensional": (lambda r: volume(r, shape=(4, 4, 4, 2, 3)), ["--slice", "0"], "is 5-D"),
    "time_series": (lambda r: volume(r, shape=(4, 4, 4, 3)), ["--slice", "0"], "is 4-D"),
    "slice_past_the_end": (volume, ["--slice", "6"], r"slice_index=6 is out of range.*valid range is 0\.\.5"),
    "negative_slice": (volume, ["--slice", "-1"], r"slice_index=-1 is out of range"),
    "no_slice_given": (volume, [], r"has 6 slices; pass slice_index=0\.\.5"),
    "axis_3": (volume, ["--slice", "0", "--axis", "3"], "axis must be 0, 1 or 2"),
    "truncated_gzip": (_truncated_gzip, ["--slice", "2"], "could not read .*ct.nii.gz as a NIfTI file"),
    "plain_nifti_named_gz": (_plain_named_gz, ["--slice", "2"], "not a gzip file"),
    "nan_in_the_slice": (_nan_slice, ["--slice", "3"], "NaN values"),
    "data_past_the_end": (lambda r: patched_nifti(r, "ct.nii", {108: struct.pack("<f", 1e9)}), ["--slice", "2"],
                          "could not read .*ct.nii as a NIfTI file"),
    "negative_dimension": (lambda r: patched_nifti(r, "ct.nii", {42: struct.pack("<h", -5)}), ["--slice", "2"],
                           r"shape \(-5, 40, 6\); every axis needs at least one voxel"),
    "unknown_datatype": (lambda r: patched_nifti(r, "ct.nii", {70: struct.pack("<h", 1234)}), ["--slice", "2"],
                         "data code 1234 not recognized"),
    "zero_affine": (lambda r: patched_nifti(r, "ct.nii", {252: struct.pack("<hh", 0, 1), 280: b"\0" * 48}),
                    ["--slice", "2"], "degenerate affine"),
    "nan_affine": (lambda r: patched_nifti(r, "ct.nii", {252: struct.pack("<hh", 0, 1),
                                                         280: struct.pack("<12f", *[np.nan] * 12)}),
                   ["--slice", "2"], "non-finite affine"),
}


@pytest.mark.parametrize("case", list(VOLUMES))
def test_a_broken_volume_is_one_line(tmp_path, capfd, case):
    make, extra, expect = VOLUMES[case]
    refused(predict(make(tmp_path), *extra, *BOX), capfd, tmp_path, expect)


def test_the_volume_size_limit_is_the_users_and_checked(tmp_path, capfd, monkeypatch):
    ct = volume(tmp_path)
    monkeypatch.setenv("MEDADAPT_MAX_VOLUME_GB", "lots")
    refused(predict(ct, "--slice", "2", *BOX), capfd, tmp_path, "MEDADAPT_MAX_VOLUME_GB must be a positive number")
    monkeypatch.setenv("MEDADAPT_MAX_VOLUME_GB", "0.000001")
    refused(predict(ct, "--slice", "2", *BOX), capfd, tmp_path, r"more than the 1e-06 GB limit")
    monkeypatch.delenv("MEDADAPT_MAX_VOLUME_GB")


def test_header_fix_ups_are_not_printed(tmp_path, capfd):
    """nibabel repairs a zero pixdim and a wrong sizeof_hdr with a note on stderr; medadapt reads on quietly."""
    ct = patched_nifti(tmp_path, "ct.nii", {0: struct.pack("<i", 999), 80: struct.pack("<ff", 0.0, 0.0)})
    assert main([str(a) for a in predict(ct, "--slice", "2", *BOX)]) == 0
    out, err = capfd.readouterr()
    assert err == "" and "mask written to" in out and (tmp_path / "out.png").is_file()


# --------------------------------------------------------------------------- DICOM
def _series(root, sizes=((32, 40), (32, 40)), same_series=True, same_position=False):
    folder = root / "series"
    folder.mkdir()
    uid = generate_uid()
    for k, (rows, cols) in enumerate(sizes):
        dicom(folder / f"{k}.dcm", pixels(rows, cols), 0.0 if same_position else float(k),
              uid if same_series else None)
    return folder


def _truncated_dicom(root):
    raw = dicom(root / "scan.dcm", pixels()).read_bytes()
    (root / "scan.dcm").write_bytes(raw[:-1000])
    return root / "scan.dcm"


DICOMS = {
    "not_dicom_at_all": (lambda r: _written(r, "scan.dcm", b"not a dicom file" * 20), [], "is not a DICOM file"),
    "no_pixel_data": (lambda r: dicom(r / "scan.dcm", pixels(), PixelData=None), [], "has no pixel data"),
    "truncated_pixel_data": (_truncated_dicom, [], "pixel data is less than expected"),
    "header_only_fragment": (lambda r: _written(r, "scan.dcm", dicom(r / "scan.dcm", pixels()).read_bytes()[:200]), [],
                             "has no pixel data"),
    "declares_5000_gb": (lambda r: dicom(r / "scan.dcm", pixels(), Rows=65535, Columns=65535, NumberOfFrames=300),
                         ["--slice", "0"], r"declares an image of shape \(300, 65535, 65535\)"),
    "zero_rows": (lambda r: dicom(r / "scan.dcm", pixels(), Rows=0), [], "has Rows 0"),
    "frame_out_of_range": (lambda r: dicom(r / "scan.dcm", np.stack([pixels()] * 3), NumberOfFrames=3),
                           ["--slice", "3"], r"valid range is 0\.\.2"),
    "bits_allocated_13": (lambda r: dicom(r / "scan.dcm", pixels(), BitsAllocated=13), [], "Bits Allocated"),
    "series_of_mixed_sizes": (lambda r: _series(r, ((32, 40), (30, 40))), ["--slice", "0"],
                              "a series needs equal-size single-frame gray slices"),
    "two_series_in_one_folder": (lambda r: _series(r, same_series=False), ["--slice", "0"], "more than one DICOM series"),
    "series_at_one_position": (lambda r: _series(r, same_position=True), ["--slice", "0"], "all share one position"),
    "folder_without_dicom": (lambda r: (r / "series").mkdir() or _written(r / "series", "notes.txt", b"x"),
                             ["--slice", "0"], "no DICOM images found"),
}


@pytest.mark.parametrize("case", list(DICOMS))
def test_broken_dicom_is_one_line(tmp_path, capfd, case):
    make, extra, expect = DICOMS[case]
    path = make(tmp_path)
    if path.parent.name == "series" and path.is_file():
        path = path.parent
    refused(predict(path, *extra, *BOX), capfd, tmp_path, expect)


def test_a_series_over_the_size_limit_is_refused_from_its_headers(tmp_path, capfd, monkeypatch):
    folder = _series(tmp_path, ((32, 40),) * 3)
    monkeypatch.setenv("MEDADAPT_MAX_VOLUME_GB", "0.00001")
    refused(predict(folder, "--slice", "1", *BOX), capfd, tmp_path, r"declares a DICOM series of shape \(40, 32, 3\)")


# --------------------------------------------------------------------------- prompts
PROMPTS = {
    "box_outside_the_image": (["--box", "500", "500", "600", "600"], "lies outside the image"),
    "inverted_box": (["--box", "40", "30", "10", "5"], "zero or negative area"),
    "nan_box": (["--box", "nan", "1", "5", "5"], "NaN or infinite"),
    "infinite_box": (["--box", "2", "2", "inf", "20"], "NaN or infinite"),
    "point_outside_the_image": (["--point", "500", "5", "1"], "lies outside the image"),
    "nan_point": (["--point", "nan", "5", "1"], "NaN or infinite"),
    "point_label_7": (["--point", "5", "5", "7"], "point label must be 1"),
    "more_boxes_than_the_limit": ([a for i in range(1025) for a in ("--box", "2", "2", str(20 + i % 9), "20")],
                                  r"1025 prompts in one call; the limit is 1024"),
}


@pytest.mark.parametrize("case", list(PROMPTS))
def test_a_bad_prompt_is_one_line(tmp_path, capfd, case):
    args, expect = PROMPTS[case]
    refused(predict(scan(tmp_path), *args), capfd, tmp_path, expect)


# --------------------------------------------------------------------------- outputs
def test_outputs_never_replace_the_input_or_an_existing_file_unasked(tmp_path, capfd):
    image = scan(tmp_path)
    (tmp_path / "link.png").symlink_to(image)
    (tmp_path / "old_overlay.png").write_bytes(b"kept")
    (tmp_path / "a_file").write_bytes(b"kept")
    (tmp_path / "folder.png").mkdir()
    base = ["predict", image, "--model", "tiny_sam_vit", *BOX]
    for extra, expect in [
        (["--out", tmp_path / "link.png", "--overwrite"], "is the input image"),
        (["--out", tmp_path / "new.png", "--overlay", tmp_path / "old_overlay.png"], "exists: pass --overwrite"),
        (["--out", tmp_path / "folder.png", "--overwrite"], "is a folder"),
        (["--out", tmp_path / "a_file" / "mask.png"], "could not write .*a_file"),
        (["--out", tmp_path / "mask.tif"], r"must end in \.png, \.nii or \.nii\.gz"),
    ]:
        refused(base + extra, capfd, tmp_path, expect)


def test_a_missing_output_folder_is_made_and_only_the_mask_is_written(tmp_path, capfd):
    image = scan(tmp_path)
    before = listing(tmp_path)
    assert main([str(a) for a in ["predict", image, "--model", "tiny_sam_vit", *BOX,
                                  "--out", tmp_path / "new" / "deeper" / "mask.nii.gz"]]) == 0
    assert capfd.readouterr().err == ""
    after = listing(tmp_path)
    assert set(after) - set(before) == {"new", "new/deeper", "new/deeper/mask.nii.gz"}
    assert all(after[k] == v for k, v in before.items())
