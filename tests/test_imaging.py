"""Readers, writers and checks of medadapt.io.imaging, on files built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_files import write_dicom
from PIL import Image
from pydicom.uid import generate_uid

from medadapt.core.errors import MedAdaptError
from medadapt.io.imaging import (
    WINDOW_PRESETS,
    apply_window,
    clip_percentiles,
    load_image,
    load_mask,
    load_volume,
    save_mask,
    validate_image,
    volume_slice,
)
from medadapt.io.overlay import overlay, save_overlay

RNG = np.random.default_rng(0)


def ramp(h: int = 12, w: int = 16) -> np.ndarray:
    return np.arange(h * w, dtype=np.float64).reshape(h, w)


# --------------------------------------------------------------------------- 2-D files
def test_png_8bit_roundtrip(tmp_path: Path) -> None:
    a = (ramp() % 256).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == a.shape
    np.testing.assert_array_equal(out, a)


def test_png_16bit_keeps_full_range(tmp_path: Path) -> None:
    a = np.array([[0, 40000, 65535], [1, 2, 3]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "a.png")
    out = load_image(str(tmp_path / "a.png"))
    assert out[0, 1] == 40000 and out.max() == 65535


def test_png_rgb_rgba_and_palette(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png"), rgb)
    rgba = np.concatenate([rgb, np.full((8, 9, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert out.shape == (8, 9, 3)
    np.testing.assert_array_equal(out, rgb)
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    assert load_image(tmp_path / "pal.png").shape == (8, 9, 3)


def test_jpeg_and_tiff(tmp_path: Path) -> None:
    a = (ramp() % 200).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    assert load_image(tmp_path / "a.jpg").shape == a.shape
    f = ramp().astype(np.float32) - 50
    Image.fromarray(f).save(tmp_path / "a.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "a.tif"), f)


def test_a_photo_is_read_the_way_viewers_turn_it(tmp_path: Path) -> None:
    """A camera JPEG stores its pixels sideways with an EXIF Orientation; prompts come from a viewer that turns it."""
    a = np.zeros((40, 100), np.uint8)
    a[:, :10] = 255  # a bright band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to display
    Image.fromarray(a).save(tmp_path / "photo.jpg", exif=exif, quality=100)
    shown = load_image(tmp_path / "photo.jpg")
    assert shown.shape == (100, 40)
    assert shown[:10].mean() > 200 and shown[-10:].mean() < 50  # the band is on top, as displayed


def test_npy_2d_and_rgb(tmp_path: Path) -> None:
    for a in (ramp() - 1000, RNG.random((5, 6, 3))):
        np.save(tmp_path / "a.npy", a)
        np.testing.assert_allclose(load_image(tmp_path / "a.npy"), a.astype(np.float32))
    np.save(tmp_path / "vol.npy", RNG.random((4, 5, 6)))
    with pytest.raises(MedAdaptError, match="vol.npy"):
        load_image(tmp_path / "vol.npy")


def test_missing_unsupported_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(MedAdaptError, match="not found: .*nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "a.xyz").write_bytes(b"x")
    with pytest.raises(MedAdaptError, match=r"\.nii\.gz"):
        load_image(tmp_path / "a.xyz")
    (tmp_path / "bad.png").write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(MedAdaptError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    with pytest.raises(MedAdaptError, match="bad.nii.gz"):
        load_image(tmp_path / "bad.nii.gz", slice_index=0)


# --------------------------------------------------------------------------- NIfTI
def _flipped_volume(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 7x9x5 volume whose first axis runs toward the patient's Left (x flipped)."""
    data = RNG.normal(100, 30, (7, 9, 5)).astype(np.float32)
    affine = np.diag([-0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [10, -20, 30]
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path, data, affine


def test_load_volume_reorients_to_ras(tmp_path: Path) -> None:
    path, data, affine = _flipped_volume(tmp_path)
    vol, aff = load_volume(path)
    assert vol.dtype == np.float32 and vol.shape == data.shape
    np.testing.assert_array_equal(vol, data[::-1])
    assert np.all(np.diag(aff)[:3] > 0)
    # the same world point: voxel (0, j, k) of the file is voxel (6, j, k) of the canonical array
    np.testing.assert_allclose(aff @ [6, 2, 3, 1], affine @ [0, 2, 3, 1])


def test_nifti_slices_agree_and_line_up_with_labels(tmp_path: Path) -> None:
    path, data, affine = _flipped_volume(tmp_path)
    nib.save(nib.Nifti1Image((data > 100).astype(np.uint8), affine), tmp_path / "label.nii.gz")
    vol, _ = load_volume(path)
    for axis in (0, 1, 2):
        for k in (0, vol.shape[axis] - 1):
            img = load_image(path, slice_index=k, axis=axis)
            np.testing.assert_array_equal(img, volume_slice(vol, k, axis))
            lab = load_mask(tmp_path / "label.nii.gz", slice_index=k, axis=axis)
            assert lab.dtype == np.int64
            np.testing.assert_array_equal(lab, (img > 100).astype(np.int64))
    # axial display: rows run anterior -> posterior, columns patient right -> left
    np.testing.assert_array_equal(volume_slice(vol, 1), vol[:, :, 1].T[::-1, ::-1])


def test_nifti_slice_index_errors(tmp_path: Path) -> None:
    path, _, _ = _flipped_volume(tmp_path)
    with pytest.raises(MedAdaptError, match=r"slice_index=0\.\.4"):
        load_image(path)
    with pytest.raises(MedAdaptError, match=r"valid range is 0\.\.4"):
        load_image(path, slice_index=5)
    with pytest.raises(MedAdaptError, match=r"valid range is 0\.\.6"):
        load_image(path, slice_index=-1, axis=0)
    with pytest.raises(MedAdaptError, match="axis"):
        load_image(path, slice_index=0, axis=3)
    with pytest.raises(MedAdaptError, match=r"0\.\.4"):
        volume_slice(load_volume(path)[0], 9)


def _whole_volume(path: Path) -> np.ndarray:
    """The whole-volume reading every slice must agree with: squeeze, reorient to closest canonical, float32."""
    img = nib.squeeze_image(nib.load(path))
    if img.ndim == 2:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, None], img.affine, img.header)
    return nib.as_closest_canonical(img).get_fdata(dtype=np.float32)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(columns: np.ndarray) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3], a[:3, 3] = columns, [12.0, -7.0, 30.0]
    return a


#: voxel-to-world matrices: identity, a flip, axis permutations with flips, and oblique ones
AFFINES = {
    "ras": np.diag([0.8, 0.9, 2.5]),
    "las": np.diag([-0.8, 0.9, 2.5]),
    "lpi": np.diag([-1.0, -1.0, -3.0]),
    "sagittal_asr": np.array([[0, 0, -1.2], [0.7, 0, 0], [0, 0.7, 0]]),  # voxel axes -> A, S, L
    "coronal_rsp": np.array([[0.6, 0, 0], [0, 0, -2.0], [0, 0.6, 0]]),
    "oblique": _rotation(2, 25) @ _rotation(0, -15) @ np.diag([-0.7, 0.8, 2.0]),
    "oblique_permuted": _rotation(1, 30) @ np.array([[0, 1.0, 0], [0, 0, -1.5], [-0.9, 0, 0]]),
}


@pytest.mark.parametrize("orientation", list(AFFINES))
@pytest.mark.parametrize("kind", ["int16_scaled", "uint8", "float64", "nifti2_int32_scaled", "4d_trailing", "2d"])
def test_one_nifti_slice_is_bit_identical_to_slicing_the_whole_volume(tmp_path, monkeypatch, orientation, kind) -> None:
    from medadapt.io import volumes

    monkeypatch.setattr(volumes, "CHUNK_BYTES", 64)  # scattered slices: read a plane or two at a time
    shape = {"4d_trailing": (5, 6, 7, 1), "2d": (5, 6)}.get(kind, (5, 6, 7))
    values = RNG.normal(0, 900, shape)
    if kind == "float64":
        data = values
    else:
        data = values.astype({"uint8": np.uint8, "nifti2_int32_scaled": np.int32}.get(kind, np.int16))
    cls = nib.Nifti2Image if kind.startswith("nifti2") else nib.Nifti1Image
    img = cls(data, _affine(AFFINES[orientation]))
    if kind.endswith("scaled"):
        img.header.set_slope_inter(0.37, -12.5)
    path = tmp_path / ("v.nii" if kind == "uint8" else "v.nii.gz")
    nib.save(img, path)
    whole = _whole_volume(path)
    np.testing.assert_array_equal(load_volume(path)[0], whole)
    for axis in (0, 1, 2):
        for k in sorted({0, whole.shape[axis] // 2, whole.shape[axis] - 1}):
            got = load_image(path, slice_index=k, axis=axis)
            expected = volume_slice(whole, k, axis)
            assert got.dtype == np.float32 and got.tobytes() == expected.tobytes(), (axis, k)
    if kind.endswith("scaled"):  # the scaling was applied, in the file's own arithmetic
        assert not np.array_equal(whole, np.round(whole))


def test_reading_one_nifti_slice_allocates_about_one_slice(tmp_path, monkeypatch) -> None:
    """A 256x256x160 int16 volume is 42 MB as float32; reading one slice allocates a small multiple of
    that slice, or of the chunk of planes read at a time when the slice is scattered through the file
    (1 MB here; indexed_gzip adds a 4 MB buffer), never the volume."""
    import tracemalloc

    from medadapt.io import volumes

    monkeypatch.setattr(volumes, "CHUNK_BYTES", 2**20)
    data = np.zeros((256, 256, 160), np.int16)
    data[64:192, 64:192, 40:120] = 300
    path = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([-0.8, 0.8, 1.5, 1.0])), path)
    volume_bytes = data.size * 4
    for axis in (2, 0, 1):
        tracemalloc.start()
        plane = load_image(path, slice_index=80, axis=axis)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert plane.shape == {2: (256, 256), 0: (160, 256), 1: (160, 256)}[axis]
        assert peak < volume_bytes / 4, (axis, peak)  # the whole-volume path allocates > volume_bytes


def test_a_reference_geometry_is_read_without_its_voxels(tmp_path) -> None:
    """save_mask(reference=) reads the reference's header alone and writes the labels back in its stored
    orientation with that header: byte for byte what nibabel writes for the stored-orientation labels."""
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

    data = RNG.integers(0, 100, (5, 6, 7)).astype(np.int16)
    full = tmp_path / "full.nii"
    nib.save(nib.Nifti1Image(data, _affine(AFFINES["oblique_permuted"])), full)
    original = nib.load(full)
    ref = tmp_path / "ref.nii"
    with full.open("rb") as fh:
        offset = int(nib.Nifti1Header.from_fileobj(fh)["vox_offset"])
    ref.write_bytes(full.read_bytes()[:offset])  # the header alone: reading a voxel would fail
    canonical = nib.as_closest_canonical(original)
    labels = (RNG.random(canonical.shape) > 0.5).astype(np.uint8)
    out = save_mask(labels, tmp_path / "mask.nii", reference=ref)
    back = ornt_transform(io_orientation(canonical.affine), io_orientation(original.affine))
    expected = nib.Nifti1Image(apply_orientation(labels, back), original.affine, original.header)
    expected.set_data_dtype(np.uint8)
    expected.header["cal_min"], expected.header["cal_max"] = 0, 0
    nib.save(expected, tmp_path / "expected.nii")
    assert out.read_bytes() == (tmp_path / "expected.nii").read_bytes()


# --------------------------------------------------------------------------- DICOM
def _dicom(path: Path, pixels: np.ndarray, z: float, instance: int, series: str,
           orientation=(1, 0, 0, 0, 1, 0)) -> None:
    write_dicom(path, pixels, z, series=series, instance=instance, orientation=orientation, origin=(-10.0, -20.0),
                spacing=(0.5, 0.7), RescaleSlope=2, RescaleIntercept=-1024, SliceThickness=3)


def test_a_monochrome1_radiograph_is_read_as_displayed(tmp_path: Path) -> None:
    """MONOCHROME1: the lowest value shows white. Read as a viewer shows it: brighter is higher."""
    px = np.array([[100, 3000], [3000, 3000]], dtype=np.uint16)
    write_dicom(tmp_path / "cr.dcm", px, PhotometricInterpretation="MONOCHROME1")
    out = load_image(tmp_path / "cr.dcm")
    assert out[0, 0] > out[0, 1]  # stored low, shown bright
    write_dicom(tmp_path / "ct.dcm", px)
    assert load_image(tmp_path / "ct.dcm")[0, 0] < load_image(tmp_path / "ct.dcm")[0, 1]


def test_dicom_file_in_hu(tmp_path: Path) -> None:
    px = np.array([[0, 512, 1000], [2000, 600, 700]], dtype=np.uint16)
    _dicom(tmp_path / "a.dcm", px, 0.0, 1, generate_uid())
    out = load_image(tmp_path / "a.dcm")
    np.testing.assert_array_equal(out, px * 2.0 - 1024)
    assert out[0, 1] == 0.0  # 512 * 2 - 1024: water
    windowed = load_image(tmp_path / "a.dcm", window="brain")
    assert windowed.min() == 0 and windowed.max() == 80


def test_dicom_series_sorted_and_consistent(tmp_path: Path) -> None:
    series = generate_uid()
    planes = [RNG.integers(0, 3000, (6, 8)).astype(np.uint16) for _ in range(4)]
    # written out of order; the file names say nothing about the position
    for name, k in zip("dbac", range(4)):
        _dicom(tmp_path / f"{name}.dcm", planes[k], z=3.0 * k, instance=k + 1, series=series)
    (tmp_path / "README.txt").write_text("not dicom")
    vol, aff = load_volume(tmp_path)
    assert vol.shape == (8, 6, 4)  # RAS: columns, rows, slices inferior -> superior
    for k in range(4):
        # an axial slice is displayed as the DICOM viewer shows it
        np.testing.assert_array_equal(volume_slice(vol, k), planes[k] * 2.0 - 1024)
        np.testing.assert_array_equal(load_image(tmp_path, slice_index=k), volume_slice(vol, k))
    np.testing.assert_allclose(np.abs(np.diag(aff)[:3]), [0.7, 0.5, 3.0])
    np.testing.assert_allclose(aff[2, 3], 0.0)
    # one slice without a position among positioned ones: placing it would be a guess, so the series is refused
    import pydicom

    ds = pydicom.dcmread(tmp_path / "b.dcm")
    del ds.ImagePositionPatient
    ds.save_as(tmp_path / "b.dcm")
    with pytest.raises(MedAdaptError, match="has no ImagePositionPatient while other slices"):
        load_volume(tmp_path)


@pytest.mark.parametrize("orientation", [(0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1), (0.8, 0.6, 0, 0, 0, -1)],
                         ids=["sagittal", "coronal", "oblique"])
def test_a_dicom_series_slice_matches_the_whole_series_on_every_axis(tmp_path: Path, orientation) -> None:
    series = generate_uid()
    for k in range(5):
        _dicom(tmp_path / f"{k}.dcm", RNG.integers(0, 3000, (6, 8)).astype(np.uint16), 2.0 * k, k + 1, series,
               orientation)
    vol, _ = load_volume(tmp_path)
    for axis in (0, 1, 2):
        for k in (0, vol.shape[axis] - 1):
            assert load_image(tmp_path, slice_index=k, axis=axis).tobytes() == volume_slice(vol, k, axis).tobytes()


# --------------------------------------------------------------------------- intensity
def test_window_presets_and_errors() -> None:
    hu = np.array([[-2000.0, -600.0, 0.0], [40.0, 80.0, 3000.0]])
    assert WINDOW_PRESETS["lung"] == (-600, 1500) and WINDOW_PRESETS["soft_tissue"] == WINDOW_PRESETS["abdomen"]
    brain = apply_window(hu, "brain")
    assert brain.dtype == np.float32 and brain.min() == 0 and brain.max() == 80
    np.testing.assert_array_equal(apply_window(hu, (50, 100)), np.clip(hu, 0, 100))
    with pytest.raises(MedAdaptError, match="known presets: .*lung"):
        apply_window(hu, "kidney")
    with pytest.raises(MedAdaptError, match="width"):
        apply_window(hu, (40, 0))
    with pytest.raises(MedAdaptError, match="level, width"):
        apply_window(hu, (1, 2, 3))


def test_clip_percentiles() -> None:
    a = np.arange(1001, dtype=np.float64)
    out = clip_percentiles(a, 1, 99)
    assert out.min() == 10 and out.max() == 990
    for low, high in ((-1, 50), (60, 50), (0, 101)):
        with pytest.raises(MedAdaptError, match="0 <= low < high <= 100"):
            clip_percentiles(a, low, high)


# --------------------------------------------------------------------------- validate_image
def test_validate_image_accepts_and_converts() -> None:
    assert validate_image(np.arange(6).reshape(2, 3)).dtype == np.float32
    assert validate_image(RNG.random((4, 5, 1))).shape == (4, 5)
    assert validate_image(RNG.random((4, 5, 4))).shape == (4, 5, 3)
    assert validate_image(np.eye(3, dtype=bool)).max() == 1


@pytest.mark.parametrize(
    ("array", "pattern"),
    [
        (np.zeros((2, 3, 4, 5)), "slice_index"),
        (np.where(np.eye(4) > 0, np.nan, 1.0), "contains 4 NaN values"),
        (np.full((4, 4), 7.0), r"is constant \(all values = 7\)"),
        (np.zeros((0, 5)), "empty"),
        (np.ones((3, 3)) * (1 + 1j), "complex"),
        (np.ones((3, 6, 6)), "channel-first"),
    ],
)
def test_validate_image_errors(array: np.ndarray, pattern: str) -> None:
    with pytest.raises(MedAdaptError, match=pattern):
        validate_image(array, name="scan")


# --------------------------------------------------------------------------- masks
def test_save_and_load_png_masks(tmp_path: Path) -> None:
    m = np.zeros((5, 6), bool)
    m[1:3, 2:5] = True
    save_mask(m, tmp_path / "sub" / "bool.png")  # creates the folder
    np.testing.assert_array_equal(load_mask(tmp_path / "sub" / "bool.png"), m * 255)
    labels = np.arange(30).reshape(5, 6) * 11  # up to 319: needs 16 bits
    save_mask(labels, tmp_path / "labels.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "labels.png"), labels)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp files left


def test_save_mask_nifti_with_reference(tmp_path: Path) -> None:
    path, _, _ = _flipped_volume(tmp_path)
    vol, aff = load_volume(path)
    labels = (vol > 100).astype(np.uint8) + (vol > 130)
    out = save_mask(labels, tmp_path / "pred.nii.gz", reference=path)
    back, back_aff = load_volume(out)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(back_aff, aff)
    np.testing.assert_array_equal(load_mask(out, slice_index=2), volume_slice(labels, 2))
    with pytest.raises(MedAdaptError, match="does not match reference"):
        save_mask(labels[:, :, :2], tmp_path / "bad.nii.gz", reference=path)


def test_save_mask_2d_nifti_roundtrip(tmp_path: Path) -> None:
    m = RNG.integers(0, 3, (5, 7))
    save_mask(m, tmp_path / "m.nii")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.nii"), m)


def test_save_mask_errors(tmp_path: Path) -> None:
    with pytest.raises(MedAdaptError, match=r"supported extensions: \.png, \.nii, \.nii\.gz"):
        save_mask(np.ones((3, 3), bool), tmp_path / "m.jpg")
    with pytest.raises(MedAdaptError, match="non-integer"):
        save_mask(np.full((3, 3), 0.5), tmp_path / "m.png")
    (tmp_path / "m.jpg").write_bytes(b"x")
    with pytest.raises(MedAdaptError, match="JPEG"):
        load_mask(tmp_path / "m.jpg")


# --------------------------------------------------------------------------- overlay
def test_overlay(tmp_path: Path) -> None:
    image = ramp(20, 30)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 5:15] = True
    base = overlay(image, None)
    out = overlay(image, mask, boxes=[4, 4, 16, 16], points=[[25, 10], [27, 3]], point_labels=[1, 0])
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert base[0, 0].tolist() == [0, 0, 0] and base[-1, -1].tolist() == [255, 255, 255]
    assert not np.array_equal(out[10, 10], base[10, 10])  # tinted
    np.testing.assert_array_equal(out[18, 1], base[18, 1])  # untouched
    assert out[10, 25, 1] > out[10, 25, 0]  # positive point: green
    assert out[3, 27, 0] > out[3, 27, 1]  # negative point: red
    stack = np.stack([mask, ~mask])
    assert overlay(RNG.random((20, 30, 3)), stack).shape == (20, 30, 3)
    with pytest.raises(MedAdaptError, match="masks have shape"):
        overlay(image, np.zeros((10, 10), bool))
    saved = save_overlay(tmp_path / "o.png", image, mask)
    np.testing.assert_array_equal(np.asarray(Image.open(saved)), overlay(image, mask))


# --------------------------------------------------------------------------- phone photos, drawn masks, odd files
def test_a_phone_jpeg_with_a_second_picture_is_the_photo_as_viewers_show_it(tmp_path):
    photo = np.zeros((40, 60, 3), np.uint8)
    photo[:, :30] = 200
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(photo).save(tmp_path / "phone.jpg", format="MPO", save_all=True, quality=100,
                                append_images=[Image.fromarray(photo // 2)], exif=exif.tobytes())
    with Image.open(tmp_path / "phone.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
    image = load_image(tmp_path / "phone.jpg")
    assert image.shape == (60, 40, 3) and image[:30].mean() > image[30:].mean() + 100  # bright half on top


def test_masks_drawn_on_a_transparent_layer_read_as_drawn(tmp_path):
    truth = np.zeros((20, 30), bool)
    truth[5:10, 8:20] = True
    white = np.full((20, 30, 4), 255, np.uint8)
    white[..., 3] = truth * 255  # white strokes, transparent elsewhere (stored white)
    Image.fromarray(white, "RGBA").save(tmp_path / "white.png")
    black = np.zeros((20, 30, 2), np.uint8)
    black[..., 1] = truth * 255  # black strokes on a transparent layer
    Image.fromarray(black, "LA").save(tmp_path / "black.png")
    for name in ("white.png", "black.png"):
        assert np.array_equal(load_mask(tmp_path / name) > 0, truth), name


def test_a_16_bit_colour_png_is_refused_rather_than_read_at_8_bits(tmp_path):
    import struct
    import zlib

    grey = (np.arange(20 * 30).reshape(20, 30) * 97).astype(np.uint16)
    raw = b"".join(b"\x00" + np.stack([grey[y]] * 3, -1).astype(">u2").tobytes() for y in range(20))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    (tmp_path / "rgb16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30, 20, 16, 2, 0, 0, 0))
                                         + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with pytest.raises(MedAdaptError, match="16-bit colour PNG, which would be read at 8 bits"):
        load_image(tmp_path / "rgb16.png")


def test_one_sagittal_plane_stored_as_nifti_is_that_image(tmp_path):
    from medadapt.data import DataConfig, SliceDataset, discover_cases

    affine = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])  # its one voxel runs left-right
    plane = np.random.default_rng(0).normal(size=(64, 48, 1)).astype(np.float32)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(plane, affine), tmp_path / "imagesTr" / "sag.nii.gz")
    nib.save(nib.Nifti1Image((plane > 0).astype(np.uint8), affine), tmp_path / "labelsTr" / "sag.nii.gz")
    assert load_image(tmp_path / "imagesTr" / "sag.nii.gz").shape == (48, 64)  # not 48 strips of 64 x 1
    config = DataConfig(root=str(tmp_path), layout="nnunet", classes=[1], labeled="all")
    with pytest.raises(MedAdaptError, match="one plane across axis 0 .* set data.axis: 0"):
        SliceDataset(discover_cases(config), config)
    assert len(SliceDataset(discover_cases(config), DataConfig(**{**config.__dict__, "axis": 0}))) == 1
