"""Masks keep their scan's geometry: save_mask(reference=) writes a label map computed on load_volume's
canonical array back in the reference's stored orientation, with the reference's own affine."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_files import write_dicom
from pydicom.uid import generate_uid

from medadapt.core.errors import MedAdaptError
from medadapt.io import load_image, load_mask, load_volume, save_mask
from medadapt.io.imaging import volume_affine
from medadapt.io.volumes import canonical_affine, to_stored

RNG = np.random.default_rng(7)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a, (i, j) = np.deg2rad(degrees), [(1, 2), (0, 2), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    return r


def _affine(columns: np.ndarray, origin=(14.5, -33.0, 71.25)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3], a[:3, 3] = columns, origin
    return a


#: voxel-to-world matrices with anisotropic, non-unit voxels: flips, permutations and oblique ones
AFFINES = {
    "ras": np.diag([0.7, 0.9, 3.0]),
    "lpi_flipped": np.diag([-0.6, -1.1, -2.5]),
    "sagittal_permuted": np.array([[0, 0, -1.3], [0.45, 0, 0], [0, 0.8, 0]]),  # voxel axes -> A, S, L
    "coronal_flipped": np.array([[-0.6, 0, 0], [0, 0, 2.2], [0, -0.75, 0]]),
    "oblique": _rotation(2, 25) @ _rotation(0, -15) @ np.diag([-0.7, 0.8, 2.0]),
    "oblique_permuted": _rotation(1, 30) @ np.array([[0, 1.2, 0], [0, 0, -1.5], [-0.9, 0, 0]]),
}

KINDS = ["sform", "qform_only", "scanner_codes", "nifti2", "4d_trailing", "2d"]


def _reference(tmp_path: Path, orientation: str, kind: str) -> tuple[Path, np.ndarray]:
    """A scan stored as ``kind`` with ``AFFINES[orientation]``; returns it and its stored voxels."""
    shape = {"4d_trailing": (6, 7, 5, 1), "2d": (6, 7)}.get(kind, (6, 7, 5))
    data = RNG.normal(100, 40, shape).astype(np.float32)
    cls = nib.Nifti2Image if kind == "nifti2" else nib.Nifti1Image
    affine = _affine(AFFINES[orientation])
    img = cls(data, affine)
    if kind == "qform_only":
        img.set_qform(affine, code="scanner")
        img.set_sform(None, code="unknown")
    elif kind == "scanner_codes":
        img.set_sform(affine, code="mni")
        img.set_qform(affine, code="scanner")
    img.header.set_xyzt_units("mm", "sec")
    path = tmp_path / f"{orientation}_{kind}.nii.gz"
    nib.save(img, path)
    return path, data


def _threshold(volume: np.ndarray) -> np.ndarray:
    return (volume > 90).astype(np.uint8) + (volume > 130)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("orientation", list(AFFINES))
def test_a_label_map_comes_back_with_the_references_affine_and_stored_voxels(tmp_path, orientation, kind) -> None:
    ref, stored = _reference(tmp_path, orientation, kind)
    volume, affine = load_volume(ref)
    assert np.array_equal(volume_affine(ref), affine)  # the same affine from the header alone
    labels = _threshold(volume)
    out = save_mask(labels, tmp_path / "labels.nii.gz", reference=ref)

    written, original = nib.load(out), nib.load(ref)
    assert type(written) is type(original)
    assert np.array_equal(written.affine, original.affine)  # exactly, not to rounding
    assert written.get_sform(coded=True)[1] == original.get_sform(coded=True)[1]
    assert written.get_qform(coded=True)[1] == original.get_qform(coded=True)[1]
    zooms = original.header.get_zooms()[:3]  # two for a 2-D scan
    np.testing.assert_array_equal(written.header.get_zooms()[: len(zooms)], zooms)
    assert written.header.get_xyzt_units()[0] == "mm"
    assert written.get_data_dtype() == np.uint8
    # voxel [i, j, k] of the file labels voxel [i, j, k] of the stored scan
    expected = _threshold(stored.reshape(stored.shape[:3] if stored.ndim > 2 else (*stored.shape, 1)))
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), expected)
    # and reading it the usual way gives the label map and the scan's canonical affine back
    back, back_affine = load_volume(out)
    np.testing.assert_array_equal(back, labels)
    assert np.array_equal(back_affine, affine)


def test_a_2d_mask_on_a_one_slice_reference_keeps_its_display_orientation(tmp_path) -> None:
    ref, stored = _reference(tmp_path, "lpi_flipped", "2d")
    image = load_image(ref)
    mask = image > 100
    out = save_mask(mask, tmp_path / "m.nii", reference=ref)
    np.testing.assert_array_equal(load_mask(out), mask)
    assert np.array_equal(nib.load(out).affine, nib.load(ref).affine)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj)[:, :, 0], stored > 100)


def test_a_header_only_reference_is_enough(tmp_path) -> None:
    """The reference's voxels are never read: a file cut after its header still serves."""
    full, stored = _reference(tmp_path, "oblique_permuted", "sform")
    labels = _threshold(load_volume(full)[0])
    plain = tmp_path / "full.nii"
    nib.save(nib.load(full), plain)
    with plain.open("rb") as fh:
        offset = int(nib.Nifti1Header.from_fileobj(fh)["vox_offset"])
    header_only = tmp_path / "header_only.nii"
    header_only.write_bytes(plain.read_bytes()[:offset])
    with pytest.raises(MedAdaptError):
        load_volume(header_only)
    out = save_mask(labels, tmp_path / "m.nii.gz", reference=header_only)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), _threshold(stored))


def test_shape_and_reference_errors(tmp_path) -> None:
    ref, _ = _reference(tmp_path, "sagittal_permuted", "sform")
    labels = _threshold(load_volume(ref)[0])
    with pytest.raises(MedAdaptError, match=r"does not match reference .*build the label map on load_volume"):
        save_mask(labels[:, :, :-1], tmp_path / "bad.nii.gz", reference=ref)
    with pytest.raises(MedAdaptError, match="does not match reference"):
        save_mask(np.moveaxis(labels, 0, 2), tmp_path / "bad.nii.gz", reference=ref)  # the stored layout
    (tmp_path / "scan.png").write_bytes(b"x")
    with pytest.raises(MedAdaptError, match="not a NIfTI file .* or a DICOM series folder"):
        save_mask(labels, tmp_path / "bad.nii.gz", reference=tmp_path / "scan.png")
    with pytest.raises(MedAdaptError, match="not found"):
        save_mask(labels, tmp_path / "bad.nii.gz", reference=tmp_path / "missing.nii.gz")
    assert not (tmp_path / "bad.nii.gz").exists()


# --------------------------------------------------------------------------- DICOM series as reference
def _series(folder: Path, orientation, n: int = 4, rows: int = 5, cols: int = 6) -> np.ndarray:
    """A series whose files are named (and numbered) against their slice order; returns its pixels by position."""
    folder.mkdir()
    uid = generate_uid()
    pixels = RNG.integers(0, 400, (n, rows, cols))
    for k in range(n):
        write_dicom(folder / f"im{n - k:02d}.dcm", pixels[k], z=2.5 * k, series=uid, instance=n - k,
                    orientation=orientation, origin=(-30.0, 12.0), spacing=(0.8, 0.6))
    return pixels


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1)],
                         ids=["axial", "axial_flipped", "sagittal"])
def test_a_dicom_series_reference_gives_the_load_volume_geometry(tmp_path, orientation) -> None:
    _series(tmp_path / "series", orientation)
    volume, affine = load_volume(tmp_path / "series")
    assert np.array_equal(volume_affine(tmp_path / "series"), affine)
    labels = (volume > 200).astype(np.uint8)
    out = save_mask(labels, tmp_path / "labels.nii.gz", reference=tmp_path / "series")
    back, back_affine = load_volume(out)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(back_affine, affine, atol=1e-5)  # the sform holds float32
    written = nib.load(out)
    assert written.get_sform(coded=True)[1] == written.get_qform(coded=True)[1] == 1  # scanner
    np.testing.assert_allclose(written.header.get_zooms(), np.sqrt((affine[:3, :3] ** 2).sum(0)), rtol=1e-6)
    with pytest.raises(MedAdaptError, match="does not match reference .*a DICOM series"):
        save_mask(labels[1:], tmp_path / "bad.nii.gz", reference=tmp_path / "series")


@pytest.mark.parametrize("positions, orientations, spacings, message", [
    ([0.0, 1.0, 1.0, 2.0], None, None, "repeat a position"),  # two echoes in one series
    ([0.0, 1.0, 2.0, 4.0], None, None, "not evenly spaced"),  # a slice missing
    ([0.0, 1.0, 2.0, 3.0], [(1, 0, 0, 0, 1, 0)] * 3 + [(0, 1, 0, 0, 0, -1)], None, "oriented otherwise"),
    ([0.0, 1.0, 2.0, 3.0], None, [(0.8, 0.8)] * 3 + [(1.6, 1.6)], "one pixel size"),
], ids=["repeated", "gap", "orientation", "pixel-size"])
def test_a_series_that_is_not_one_even_stack_is_refused(tmp_path, positions, orientations, spacings, message) -> None:
    uid = generate_uid()
    tmp_path.joinpath("series").mkdir()
    for k, z in enumerate(positions):
        write_dicom(tmp_path / "series" / f"im{k:02d}.dcm", RNG.integers(0, 400, (5, 6)), z=z, series=uid,
                    instance=k + 1, orientation=(orientations or [(1, 0, 0, 0, 1, 0)] * 4)[k],
                    spacing=(spacings or [(1, 1)] * 4)[k])
    with pytest.raises(MedAdaptError, match=message):
        load_volume(tmp_path / "series")
    even = tmp_path / "even"
    even.mkdir()
    for k, z in enumerate([0.0, 1.25, 2.5, 3.75]):  # an even stack at a non-integer step still loads
        write_dicom(even / f"im{k:02d}.dcm", RNG.integers(0, 400, (5, 6)), z=z, series=uid, instance=k + 1)
    assert 4 in load_volume(even)[0].shape


# --------------------------------------------------------------------------- the inverse reorientation
@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_to_stored_undoes_the_canonical_reorientation_for_every_axis_order_and_flip(perm) -> None:
    data = RNG.integers(0, 1000, (3, 4, 5)).astype(np.int32)
    for flips in itertools.product((1, -1), repeat=3):
        columns = np.zeros((3, 3))
        for stored_axis, (world_axis, flip) in enumerate(zip(perm, flips)):
            columns[world_axis, stored_axis] = flip * (0.5 + stored_axis)
        affine = _affine(_rotation(1, 10) @ columns)
        canonical = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
        np.testing.assert_array_equal(to_stored(np.asanyarray(canonical.dataobj), affine), data)
        assert np.array_equal(canonical_affine(data.shape, affine), canonical.affine)
