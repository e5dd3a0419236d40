"""write_dicom_seg: a label map on load_volume(series) comes back, through highdicom, as a DICOM-SEG whose
frames lie on the right source images in their own row/column layout."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_files import write_dicom
from pydicom.uid import generate_uid

from medadapt.core.errors import MedAdaptError
from medadapt.io import load_volume, write_dicom_seg

hd = pytest.importorskip("highdicom")

RNG = np.random.default_rng(3)

ORIENTATIONS = {
    "axial": (1, 0, 0, 0, 1, 0),
    "axial_flipped": (-1, 0, 0, 0, 1, 0),
    "sagittal": (0, 1, 0, 0, 0, -1),
    "coronal": (1, 0, 0, 0, 0, -1),
    "oblique": (np.cos(0.4), np.sin(0.4), 0, -np.sin(0.4) * np.cos(0.3), np.cos(0.4) * np.cos(0.3), np.sin(0.3)),
}


def _series(folder: Path, orientation=ORIENTATIONS["axial"], n: int = 5, rows: int = 6, cols: int = 7,
            **tags) -> tuple[np.ndarray, list[str]]:
    """A CT series whose file names and instance numbers run against its slice order.

    Returns the pixels and SOPInstanceUIDs of its images in slice order (along the slice normal)."""
    folder.mkdir()
    study, frame_of_reference, uid = generate_uid(), generate_uid(), generate_uid()
    tags = {"StudyInstanceUID": study, "FrameOfReferenceUID": frame_of_reference, "SeriesNumber": 4, **tags}
    tags = {key: value for key, value in tags.items() if value is not None}  # None: leave the tag out
    pixels = RNG.integers(0, 400, (n, rows, cols))
    sops = []
    for k in range(n):
        f = write_dicom(folder / f"im{n - k:02d}.dcm", pixels[k], z=2.5 * k, series=uid, instance=n - k,
                        orientation=tuple(float(v) for v in orientation), origin=(-30.0, 12.0),
                        spacing=(0.8, 0.6), **tags)
        sops.append(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
    return pixels, sops


def _classify(values: np.ndarray) -> np.ndarray:
    """Labels 1 and 3 (2 unused) from intensities: the same rule on the volume and on each image."""
    return np.where(values > 300, 3, np.where(values > 150, 1, 0)).astype(np.uint8)


def _frames(seg) -> list[tuple[int, str, np.ndarray]]:
    """(segment number, referenced source SOPInstanceUID, pixels) per stored frame."""
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    out = []
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        sources = [s.ReferencedSOPInstanceUID for d in item.DerivationImageSequence for s in d.SourceImageSequence]
        assert len(sources) == 1
        out.append((number, sources[0], pixels[i]))
    return out


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_frames_lie_on_their_source_images(tmp_path, orientation) -> None:
    pixels, sops = _series(tmp_path / "ct", ORIENTATIONS[orientation])
    volume, _ = load_volume(tmp_path / "ct")
    labels = _classify(volume)
    out = write_dicom_seg(labels, tmp_path / "ct", tmp_path / "seg" / "labels.dcm",
                          ["kidney", "tumour", "cyst"], label_values=[1, 3, 5])

    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 3  # every listed class, present or not
    assert [seg.get_segment_description(n).SegmentLabel for n in (1, 2, 3)] == ["kidney", "tumour", "cyst"]
    assert seg.SegmentationType == "BINARY"
    assert {s[2] for s in seg.get_source_image_uids()} == set(sops)
    # one frame per (image, segment) that segment touches, each referencing its own image, in the image's layout
    expected = {(number, sops[k]): _classify(pixels[k]) == value
                for k in range(len(sops)) for number, value in ((1, 1), (2, 3), (3, 5))
                if (_classify(pixels[k]) == value).any()}
    frames = _frames(seg)
    assert sorted((n, s) for n, s, _ in frames) == sorted(expected)
    for number, sop, frame in frames:
        np.testing.assert_array_equal(frame, expected[number, sop])
    # and highdicom's own per-instance reading agrees, empty images included
    by_instance = seg.get_pixels_by_source_instance(sops, assert_missing_frames_are_empty=True)
    for k in range(len(sops)):
        for number, value in ((1, 1), (2, 3), (3, 5)):
            np.testing.assert_array_equal(by_instance[k, :, :, number - 1], _classify(pixels[k]) == value)
    assert not [p.name for p in (tmp_path / "seg").iterdir() if p.name.startswith(".")]  # no temp files left


def test_patient_and_study_come_from_the_series(tmp_path) -> None:
    _series(tmp_path / "ct", PatientID="P-007", PatientName="Doe^Jane", StudyDate="20240102",
            AccessionNumber="A1", SeriesNumber=3)
    source = pydicom.dcmread(next((tmp_path / "ct").iterdir()), stop_before_pixels=True)
    labels = load_volume(tmp_path / "ct")[0] > 200
    seg = hd.seg.segread(write_dicom_seg(labels, tmp_path / "ct", tmp_path / "seg.dcm", ["lesion"],
                                         algorithm="kidney-adapter"))
    assert seg.number_of_segments == 1
    assert (seg.PatientID, str(seg.PatientName), seg.StudyDate, seg.AccessionNumber) == \
        ("P-007", "Doe^Jane", "20240102", "A1")
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID and seg.SeriesNumber == 1003
    assert seg.SeriesDescription == "kidney-adapter segmentation" and seg.Manufacturer == "medadapt"
    algorithm = seg.get_segment_description(1).SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "kidney-adapter"


def test_an_anonymised_series_without_patient_tags_or_thickness_is_written(tmp_path) -> None:
    _series(tmp_path / "ct")  # no PatientID, StudyDate ... nor SliceThickness
    labels = load_volume(tmp_path / "ct")[0] > 200
    seg = hd.seg.segread(write_dicom_seg(labels, tmp_path / "ct", tmp_path / "seg.dcm", {1: "lesion"}))
    assert seg.PatientID == "" and seg.number_of_segments == 1
    thickness = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness
    assert float(thickness) == pytest.approx(2.5)


def test_mapping_and_default_label_values(tmp_path) -> None:
    pixels, sops = _series(tmp_path / "ct", ORIENTATIONS["sagittal"])
    labels = _classify(load_volume(tmp_path / "ct")[0])
    for classes, values in (({3: "tumour", 1: "kidney"}, None), (["kidney", "x", "tumour"], None)):
        seg = hd.seg.segread(write_dicom_seg(labels, tmp_path / "ct", tmp_path / "seg.dcm", classes, values))
        names = [seg.get_segment_description(n).SegmentLabel for n in range(1, seg.number_of_segments + 1)]
        assert names == list(classes.values() if isinstance(classes, dict) else classes)
        tumour = names.index("tumour") + 1
        got = seg.get_pixels_by_source_instance(sops, segment_numbers=[tumour], assert_missing_frames_are_empty=True)
        np.testing.assert_array_equal(got[..., 0], _classify(pixels) == 3)


def test_an_empty_mask_is_refused_unless_allowed(tmp_path) -> None:
    _series(tmp_path / "ct", n=3)
    empty = np.zeros(load_volume(tmp_path / "ct")[0].shape, np.uint8)
    with pytest.raises(MedAdaptError, match="nothing to segment.*allow_empty=True"):
        write_dicom_seg(empty, tmp_path / "ct", tmp_path / "seg.dcm", ["lesion"])
    assert not (tmp_path / "seg.dcm").exists()
    seg = hd.seg.segread(write_dicom_seg(empty, tmp_path / "ct", tmp_path / "seg.dcm", ["lesion"], allow_empty=True))
    assert seg.number_of_segments == 1 and not seg.pixel_array.any()


def test_clear_errors(tmp_path, monkeypatch) -> None:
    _series(tmp_path / "ct", n=3)
    labels = (load_volume(tmp_path / "ct")[0] > 200).astype(np.uint8)
    out = tmp_path / "seg.dcm"
    with pytest.raises(MedAdaptError, match=r"does not match the DICOM series .*load_volume\(folder\)\[0\]"):
        write_dicom_seg(labels[:, :, :2], tmp_path / "ct", out, ["lesion"])
    with pytest.raises(MedAdaptError, match=r"label values \[2\] that no class names"):
        write_dicom_seg(labels * 2, tmp_path / "ct", out, ["lesion"])
    with pytest.raises(MedAdaptError, match="2 class_names but 1 label_values"):
        write_dicom_seg(labels, tmp_path / "ct", out, ["a", "b"], [1])
    with pytest.raises(MedAdaptError, match="label_values must be whole numbers >= 1"):
        write_dicom_seg(labels, tmp_path / "ct", out, ["a"], [0])
    with pytest.raises(MedAdaptError, match="non-integer"):
        write_dicom_seg(labels * 0.5, tmp_path / "ct", out, ["a"])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("not an image")
    with pytest.raises(MedAdaptError, match="no DICOM images found"):
        write_dicom_seg(labels, tmp_path / "notes", out, ["lesion"])
    with pytest.raises(MedAdaptError, match="is a file; pass the folder"):
        write_dicom_seg(labels, next((tmp_path / "ct").iterdir()), out, ["lesion"])
    with pytest.raises(MedAdaptError, match="does not exist"):
        write_dicom_seg(labels, tmp_path / "missing", out, ["lesion"])
    _series(tmp_path / "no_frame_of_reference", n=3, FrameOfReferenceUID=None)
    with pytest.raises(MedAdaptError, match="lack FrameOfReferenceUID"):
        write_dicom_seg(labels, tmp_path / "no_frame_of_reference", out, ["lesion"])
    assert not out.exists()
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    with pytest.raises(MedAdaptError, match=r"pip install medadapt\[dicom-seg\]"):
        write_dicom_seg(labels, tmp_path / "ct", out, ["lesion"])


def test_predict_writes_a_dicom_seg_for_a_series(tmp_path, capsys) -> None:
    """``medadapt predict SERIES --box ... --out seg.dcm``: the propagated object as a DICOM-SEG on the series."""
    from medadapt.cli import main

    folder = tmp_path / "ct"
    folder.mkdir()
    uid, study, frame, sops = generate_uid(), generate_uid(), generate_uid(), []
    block = np.zeros((4, 40, 48), bool)
    block[:, 12:28, 14:34] = True
    for k in range(4):
        pixels = np.where(block[k], 300, 20).astype(np.int16)
        f = write_dicom(folder / f"im{k:02d}.dcm", pixels, z=2.0 * k, series=uid, instance=k + 1,
                        StudyInstanceUID=study, FrameOfReferenceUID=frame)
        sops.append(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
    out = tmp_path / "seg.dcm"
    assert main(["predict", str(folder), "--model", "tiny_sam_vit", "--box", "1", "14", "12", "33", "27",
                 "--out", str(out)]) == 0
    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 1 and seg.get_segment_description(1).SegmentLabel == "object"
    assert {s[2] for s in seg.get_source_image_uids()} == set(sops)
    assert main(["predict", str(folder), "--model", "tiny_sam_vit", "--box", "1", "14", "12", "33", "27",
                 "--out", str(tmp_path / "seg.png")]) == 2
    assert "DICOM-SEG (.dcm) for a DICOM series" in capsys.readouterr().err
    assert main(["predict", str(folder), "--model", "tiny_sam_vit", "--box", "1", "14", "12", "33", "27",
                 "--out", str(folder / "seg.dcm")]) == 2  # it would join the series
    assert "inside the series folder" in capsys.readouterr().err and not (folder / "seg.dcm").exists()


def test_segment_writes_a_dicom_seg_per_series_when_asked(tmp_path, capsys) -> None:
    """``medadapt segment IN OUT --series-format dicom-seg``: each series gets NAME.seg.dcm on its own images;
    a folder made with NIfTI outputs is not resumed with the other format."""
    from medadapt.cli import main

    sops = {}
    for name, shift in (("a", 0), ("b", 6)):
        folder = tmp_path / "in" / name
        folder.mkdir(parents=True)
        uid, study, frame = generate_uid(), generate_uid(), generate_uid()
        block = np.zeros((3, 40, 48), bool)
        block[:, 12 + shift:28 + shift, 14:34] = True
        sops[name] = []
        for k in range(3):
            f = write_dicom(folder / f"im{k:02d}.dcm", np.where(block[k], 300, 20).astype(np.int16), z=2.0 * k,
                            series=uid, instance=k + 1, StudyInstanceUID=study, FrameOfReferenceUID=frame)
            sops[name].append(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
    prompts = tmp_path / "prompts.json"
    prompts.write_text('{"a": {"slices": {"1": {"boxes": [[14, 12, 33, 27]]}}}, '
                       '"b": {"slices": {"1": {"boxes": [[14, 18, 33, 33], [2, 2, 10, 10]]}}}}')
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "in"), str(out), "--model", "tiny_sam_vit", "--prompts", str(prompts),
            "--workers", "0", "--no-progress"]
    assert main([*args, "--series-format", "dicom-seg"]) == 0
    assert sorted(p.name for p in out.glob("*.dcm")) == ["a.seg.dcm", "b.seg.dcm"]
    one, two = hd.seg.segread(out / "a.seg.dcm"), hd.seg.segread(out / "b.seg.dcm")
    assert one.number_of_segments == 1 and one.get_segment_description(1).SegmentLabel == "object"
    assert [two.get_segment_description(n).SegmentLabel for n in (1, 2)] == ["object 1", "object 2"]
    assert {s[2] for s in one.get_source_image_uids()} == set(sops["a"])
    assert {s[2] for s in two.get_source_image_uids()} == set(sops["b"])
    capsys.readouterr()
    assert main(args) == 2  # the same folder with NIfTI outputs: refused, not mixed
    assert "series_format" in capsys.readouterr().err
