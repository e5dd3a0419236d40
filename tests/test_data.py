"""medadapt.data on datasets synthesized in tmp_path: discovery, patient splits, classes, slices."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medadapt.core.errors import MedAdaptError
from medadapt.data import (
    DataConfig,
    SliceDataset,
    case_spacing,
    discover_cases,
    load_slices,
    load_volume_case,
    remap_labels,
    resolve_classes,
    split_cases,
    to_canonical,
)
from medadapt.io.imaging import load_image, load_mask, load_volume

SHAPE = (12, 10, 5)  # x, y, z as stored
AFFINE = np.diag([-1.5, 2.0, 3.0, 1.0])  # LAS: reorientation flips axis 0, so alignment is really tested
LABELS = {"0": "background", "1": "rv", "2": "myo", "3": "lv"}


def synth_volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) volumes where label == image // 100 except on slice 0 (all-zero padding).

    Slice 1 is non-constant but label-free; slices 2-4 hold rv and myo, slices 3-4 also lv.
    """
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 3:7, 2:] = 1
    label[6:10, 2:5, 2:] = 2
    label[1:4, 6:9, 3:] = 3
    image = 100.0 * label + 10 + rng.uniform(0, 5, SHAPE)
    image[:, :, 0] = 0
    return image.astype(np.float32), label


def save_nifti(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), path)


def build_nnunet(root: Path) -> Path:
    """pat1, pat2 (two frames each) in imagesTr, pat3 in imagesVal; nnU-Net channel suffixes."""
    for seed, (folder, pat) in enumerate([("Tr", "pat1"), ("Tr", "pat2"), ("Val", "pat3")]):
        for frame in ("frame01", "frame02"):
            image, label = synth_volume(seed)
            save_nifti(image, root / f"images{folder}" / f"{pat}_{frame}_0000.nii.gz")
            save_nifti(label, root / f"labels{folder}" / f"{pat}_{frame}.nii.gz")
    (root / "imagesTr" / "._pat1_frame01_0000.nii.gz").write_bytes(b"macOS resource fork")  # must be ignored
    splits = {"train": ["pat1", "pat2"], "val": ["pat3"], "labeled_1": ["pat1"]}
    (root / "dataset.json").write_text(json.dumps({"labels": LABELS, "splits": splits}))
    return root


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_nnunet(tmp_path_factory.mktemp("nnunet"))


def cfg(root: Path, **kw) -> DataConfig:
    kw.setdefault("classes", ["lv"])
    return DataConfig(root=str(root), **kw)


def ids(cases) -> list[str]:
    return [c.case_id for c in cases]


# --------------------------------------------------------------------------- config
def test_from_dict_rejects_unknown_and_bad_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MedAdaptError, match=r"unknown key.*'classses'.*allowed keys.*'classes'"):
        DataConfig.from_dict({"root": str(tmp_path), "classses": [1]})
    with pytest.raises(MedAdaptError, match="needs classes"):
        DataConfig.from_dict({"root": str(tmp_path)})
    with pytest.raises(MedAdaptError, match="non-empty"):
        DataConfig.from_dict({"root": str(tmp_path), "classes": []})
    with pytest.raises(MedAdaptError, match="quote them"):
        DataConfig.from_dict({"root": str(tmp_path), "classes": [1], "labeled": [10]})
    with pytest.raises(MedAdaptError, match="only for data.unlabeled"):
        DataConfig.from_dict({"root": str(tmp_path), "classes": [1], "val": "rest:train"})
    with pytest.raises(MedAdaptError, match="not both"):
        DataConfig.from_dict({"root": str(tmp_path), "classes": [1], "window": "abdomen", "percentiles": [1, 99]})
    with pytest.raises(MedAdaptError, match="on_error"):
        DataConfig.from_dict({"root": str(tmp_path), "classes": [1], "on_error": "ignore"})
    c = DataConfig.from_dict({"root": str(tmp_path), "classes": "foreground", "window": [40, 80]})
    assert c.classes == ["foreground"] and c.window_arg == (40.0, 80.0)
    monkeypatch.setenv("MEDADAPT_TEST_DATA", str(tmp_path))
    assert DataConfig.from_dict({"root": "${MEDADAPT_TEST_DATA}/acdc", "classes": [1]}).root == f"{tmp_path}/acdc"


# --------------------------------------------------------------------------- nnU-Net discovery and splits
def test_discover_nnunet_strips_channel_suffix(nnunet: Path) -> None:
    cases = discover_cases(cfg(nnunet))
    assert ids(cases) == [f"{p}_{f}" for p in ("pat1", "pat2", "pat3") for f in ("frame01", "frame02")]
    assert [c.patient_id for c in cases] == ["pat1", "pat1", "pat2", "pat2", "pat3", "pat3"]
    assert cases[0].image_path.name == "pat1_frame01_0000.nii.gz"
    assert cases[0].label_path == nnunet / "labelsTr" / "pat1_frame01.nii.gz"
    assert [c.subset for c in cases] == ["imagesTr"] * 4 + ["imagesVal"] * 2


def test_discover_plain_ids_and_missing_root(tmp_path: Path) -> None:
    for name in ("case_0001", "case_0002"):  # MSD-style ids that merely end in 4 digits keep them
        image, label = synth_volume(0)
        save_nifti(image, tmp_path / "imagesTr" / f"{name}.nii.gz")
        save_nifti(label, tmp_path / "labelsTr" / f"{name}.nii.gz")
    cases = discover_cases(DataConfig(root=str(tmp_path), classes=[1]))
    assert ids(cases) == ["case_0001", "case_0002"] and all(c.label_path for c in cases)
    assert resolve_classes(DataConfig(root=str(tmp_path), classes=["foreground"])) == [("foreground", 1)]
    with pytest.warns(UserWarning, match=r"'5' \(value 5\) never occurs"):  # a wrong class value is not silent
        SliceDataset(cases, DataConfig(root=str(tmp_path), classes=[1, 5]))
    with pytest.raises(MedAdaptError, match="not a folder"):
        discover_cases(DataConfig(root=str(tmp_path / "nope"), classes=[1]))
    with pytest.raises(MedAdaptError, match="imagesXX.*not found"):
        discover_cases(DataConfig(root=str(tmp_path), classes=[1], images="imagesXX"))
    for spelled in ("./imagesTr", str(tmp_path / "imagesTr"), "imagesTr/"):  # the usual folder, spelled otherwise
        assert all(c.label_path for c in discover_cases(DataConfig(root=str(tmp_path), classes=[1], images=spelled)))
    (tmp_path / "scans").mkdir()  # a custom image folder whose stems are also imagesTr's
    save_nifti(synth_volume(1)[0], tmp_path / "scans" / "case_0001.nii.gz")
    with pytest.warns(UserWarning, match="no label folder is paired with it.*set data.labels"):
        (scan,) = discover_cases(DataConfig(root=str(tmp_path), classes=[1], images="scans"))
    assert scan.label_path is None  # not labelsTr/case_0001, the label of another scan
    with pytest.warns(UserWarning, match="have no image"):  # labelsTr's other file is said to be unused
        (scan,) = discover_cases(DataConfig(root=str(tmp_path), classes=[1], images="scans", labels="labelsTr"))
    assert scan.label_path == tmp_path / "labelsTr" / "case_0001.nii.gz"  # when the user says so


def test_split_by_key_rest_and_patient_prefix(nnunet: Path) -> None:
    c = cfg(nnunet, labeled="labeled_1", unlabeled="rest:train", val="val")
    splits = split_cases(c, discover_cases(c))
    assert ids(splits["labeled"]) == ["pat1_frame01", "pat1_frame02"]  # patient pat1 -> both frames
    assert ids(splits["unlabeled"]) == ["pat2_frame01", "pat2_frame02"]
    assert ids(splits["val"]) == ["pat3_frame01", "pat3_frame02"] and splits["test"] == []

    c = cfg(nnunet, labeled=["pat2_frame01"], unlabeled="rest:all", val="imagesVal", limit_unlabeled=1)
    splits = split_cases(c, discover_cases(c))
    assert ids(splits["labeled"]) == ["pat2_frame01"]
    assert ids(splits["unlabeled"]) == ["pat1_frame01"]  # pat2 (labeled) and pat3 (val) excluded, then limit


def test_split_errors(nnunet: Path) -> None:
    def split(**kw):
        c = cfg(nnunet, **kw)
        return split_cases(c, discover_cases(c))

    with pytest.raises(MedAdaptError, match=r"\['pat1'\].*labeled.*val"):
        split(labeled=["pat1_frame01"], val=["pat1_frame02"])  # same patient, different frames: leakage
    with pytest.raises(MedAdaptError, match=r"no case matches \['pat9', 'pat'\]"):
        split(labeled=["pat1", "pat9", "pat"])  # 'pat' is no prefix of 'pat1_...' (needs 'pat_')
    with pytest.raises(MedAdaptError, match=r"unknown split 'labeled_9'.*labeled_1"):
        split(labeled="labeled_9")
    with pytest.raises(MedAdaptError, match="unlabeled and in data.val"):
        split(unlabeled="all", val="val")


# --------------------------------------------------------------------------- classes
def test_classes_by_name_value_and_unknown(nnunet: Path, tmp_path: Path) -> None:
    assert resolve_classes(cfg(nnunet, classes=["lv", 1])) == [("lv", 3), ("rv", 1)]
    assert resolve_classes(cfg(nnunet, classes=["LV", "Myo"])) == [("lv", 3), ("myo", 2)]
    assert resolve_classes(cfg(nnunet, classes=[2])) == [("myo", 2)]
    with pytest.raises(MedAdaptError, match=r"unknown class 'aorta'.*'rv', 'myo', 'lv'"):
        resolve_classes(cfg(nnunet, classes=["aorta"]))
    with pytest.raises(MedAdaptError, match="background"):
        resolve_classes(cfg(nnunet, classes=[0]))
    with pytest.raises(MedAdaptError, match="value 7 is not in dataset.json"):
        resolve_classes(cfg(nnunet, classes=[7]))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "left ventricle": 3}}))
    assert resolve_classes(cfg(tmp_path, classes=["left_ventricle"])) == [("left ventricle", 3)]
    assert resolve_classes(cfg(tmp_path, classes=["foreground"])) == [("left ventricle", 3)]


def test_remap_labels() -> None:
    stored = np.array([[0, 1, 2, 3, 7]])
    np.testing.assert_array_equal(remap_labels(stored, [("lv", 3), ("rv", 1)]), [[0, 2, 0, 1, 0]])
    binary = np.array([[0, 255]])
    np.testing.assert_array_equal(remap_labels(binary, [("foreground", 1)], binary_255=True), [[0, 1]])
    np.testing.assert_array_equal(remap_labels(np.array([[0, 1, 255]]), [("x", 1)], binary_255=True), [[0, 1, 0]])


# --------------------------------------------------------------------------- slices
@pytest.mark.parametrize("axis", [2, 0])
def test_slices_line_up_with_images(nnunet: Path, axis: int) -> None:
    c = cfg(nnunet, classes=["lv", 1], axis=axis)
    case = discover_cases(c)[0]
    classes = [("lv", 3), ("rv", 1)]
    slices = load_slices(case, c, keep="all")
    assert slices and all(s.case_id == "pat1_frame01" and s.patient_id == "pat1" for s in slices)
    for s in slices:
        assert s.image.dtype == np.float32 and s.label.dtype == np.int64 and s.image.shape == s.label.shape
        np.testing.assert_array_equal(s.image, load_image(case.image_path, slice_index=s.index, axis=axis))
        # the label is the rule the image was built by: stored value = image // 100, then lv->1, rv->2
        np.testing.assert_array_equal(s.label, remap_labels(np.floor(s.image / 100).astype(int), classes))
    image, label = load_volume_case(case, c)
    assert image.shape[0] == load_volume(case.image_path)[0].shape[axis] and label.shape == image.shape
    for s in slices:
        np.testing.assert_array_equal(image[s.index], s.image)
        np.testing.assert_array_equal(label[s.index], s.label)
    np.testing.assert_array_equal(to_canonical(image, axis), load_volume(case.image_path)[0])


def test_keep_labeled_drops_empty_and_constant_slices(nnunet: Path) -> None:
    c = cfg(nnunet, classes=["lv"], labeled="labeled_1")
    cases = split_cases(c, discover_cases(c))["labeled"]
    everything = SliceDataset(cases, c, keep="all")
    assert len(everything) == 8 and everything.dropped == {"constant": 2, "filtered": 0}  # z=0 padding, per frame
    assert 0 not in [s.index for s in everything]
    labeled = SliceDataset(cases, c)  # slice_filter 'labeled': only z=3, 4 hold lv
    assert [s.index for s in labeled] == [3, 4, 3, 4]
    assert labeled.dropped == {"constant": 2, "filtered": 4}
    assert labeled.class_names == ["lv"] and labeled.label_values == [3] and labeled.skipped == []
    assert all(s.label.max() == 1 for s in labeled)
    # rv alone (z=2) covers 16 pixels, rv + lv (z=3, 4) 25: min_foreground=17 keeps only the latter
    assert [s.index for s in SliceDataset(cases, cfg(nnunet, classes=["rv", "lv"]))] == [2, 3, 4, 2, 3, 4]
    strict = SliceDataset(cases, cfg(nnunet, classes=["rv", "lv"], min_foreground=17))
    assert [s.index for s in strict] == [3, 4, 3, 4]
    unlabeled = SliceDataset(cases, c, keep="all", with_labels=False)
    assert len(unlabeled) == 8 and all(s.label is None for s in unlabeled)
    with pytest.raises(MedAdaptError, match="keep='all'"):
        SliceDataset(cases, c, with_labels=False)


def test_window_and_spacing(nnunet: Path) -> None:
    c = cfg(nnunet, classes=["lv"], window=[150, 100])  # clip to [100, 200]: slice 1 becomes constant
    case = discover_cases(c)[0]
    slices = load_slices(case, c, keep="all")
    assert [s.index for s in slices] == [2, 3, 4]
    assert all(s.image.min() >= 100 and s.image.max() <= 200 for s in slices)
    assert case_spacing(case, c) == (3.0, 2.0, 1.5)


# --------------------------------------------------------------------------- folder layout
def build_folder(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for k, stem in enumerate(["010_HC", "010_2HC", "011_HC", "012_HC"]):
        mask = np.zeros((20, 24), bool)
        mask[4 + k : 12 + k, 5:15] = True
        image = np.where(mask, 180, 30) + rng.integers(0, 20, mask.shape)
        for folder, array in (("images", image.astype(np.uint8)), ("masks", mask.astype(np.uint8) * 255)):
            (root / folder).mkdir(exist_ok=True)
            Image.fromarray(array).save(root / folder / f"{stem}.png")
    return root


def test_folder_layout_case_pattern_and_binary_masks(tmp_path: Path) -> None:
    root = build_folder(tmp_path)
    c = DataConfig(root=str(root), classes=["foreground"], case_pattern=r"(\d+)_",
                   labeled=["010"], val=["011"], unlabeled="rest:all")
    cases = discover_cases(c)
    assert ids(cases) == ["010_2HC", "010_HC", "011_HC", "012_HC"]
    assert [c_.patient_id for c_ in cases] == ["010", "010", "011", "012"]
    splits = split_cases(c, cases)
    assert ids(splits["labeled"]) == ["010_2HC", "010_HC"] and ids(splits["unlabeled"]) == ["012_HC"]
    for classes in (["foreground"], [1]):
        ds = SliceDataset(splits["labeled"], DataConfig(root=str(root), classes=classes))
        assert len(ds) == 2
        for s in ds:
            assert s.index is None and s.image.shape == (20, 24)
            np.testing.assert_array_equal(s.label, (s.image > 100).astype(np.int64))  # 0/255 -> 0/1
    ds255 = SliceDataset(splits["val"], DataConfig(root=str(root), classes=[255]))
    assert ds255.class_names == ["255"] and ds255[0].label.max() == 1
    with pytest.raises(MedAdaptError, match=r"\['010'\].*labeled.*val"):
        split_cases(DataConfig(root=str(root), classes=[1], case_pattern=r"(\d+)_",
                               labeled=["010_HC"], val=["010_2HC"]), cases)
    with pytest.raises(MedAdaptError, match="no slices left"):
        SliceDataset(splits["labeled"], DataConfig(root=str(root), classes=[2]))


# --------------------------------------------------------------------------- unreadable files
def test_corrupt_image_stop_or_skip(tmp_path: Path, nnunet: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(nnunet, root)
    bad = root / "imagesTr" / "pat2_frame01_0000.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a gzip stream")
    c = cfg(root, labeled="train")
    cases = split_cases(c, discover_cases(c))["labeled"]
    with pytest.raises(MedAdaptError, match="pat2_frame01_0000.nii.gz"):
        SliceDataset(cases, c)
    skip = cfg(root, labeled="train", on_error="skip")
    with pytest.warns(UserWarning, match="pat2_frame01_0000.nii.gz"):
        ds = SliceDataset(cases, skip)
    assert [Path(p).name for p, _ in ds.skipped] == ["pat2_frame01_0000.nii.gz"]
    assert {s.case_id for s in ds} == {"pat1_frame01", "pat1_frame02", "pat2_frame02"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the good cases load without any warning
        SliceDataset([x for x in cases if x.case_id != "pat2_frame01"], skip)


# --------------------------------------------------------------------------- selection by range / pattern / every
def build_exams(root: Path, exams: list[str], *, twins: tuple[str, ...] = ()) -> Path:
    """A folder dataset of exams ``NNN_HC.png`` (``NNN_2HC.png`` too for ``twins``), 0/255 masks, RGB images."""
    rng = np.random.default_rng(2)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for exam in exams:
        for stem in [f"{exam}_HC", *([f"{exam}_2HC"] if exam in twins else [])]:
            mask = np.zeros((16, 16), np.uint8)
            mask[4:12, 4:12] = 255
            image = np.stack([mask // 2 + rng.integers(0, 40, mask.shape, dtype=np.uint8)] * 3, axis=-1)
            Image.fromarray(image).save(root / "images" / f"{stem}.png")
            Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return root


def exam_split(root: Path, **kw) -> dict[str, list[str]]:
    c = DataConfig.from_dict({"root": str(root), "classes": [1], "case_pattern": r"^(\d+)_", **kw})
    return {k: ids(v) for k, v in split_cases(c, discover_cases(c)).items()}


def test_selection_by_range_pattern_exclude_and_every(tmp_path: Path) -> None:
    root = build_exams(tmp_path, [f"{i:03d}" for i in range(12)], twins=("001", "010"))
    s = exam_split(root, labeled={"range": ["000", "002"]}, unlabeled={"range": ["003", "009"]},
                   val={"range": ["10", "11"]})  # numbers compare as numbers: '10' is exam '010'
    assert s["labeled"] == ["000_HC", "001_2HC", "001_HC", "002_HC"]  # a patient's every image
    assert s["unlabeled"] == [f"{i:03d}_HC" for i in range(3, 10)]
    assert s["val"] == ["010_2HC", "010_HC", "011_HC"]
    s = exam_split(root, labeled=["000"], unlabeled={"split": "all", "exclude": ["000", "011"], "every": 3})
    assert s["unlabeled"] == ["001_2HC", "001_HC", "004_HC", "007_HC", "010_2HC", "010_HC"]  # every 3rd patient
    s = exam_split(root, labeled={"pattern": r"00[02]_HC"}, val={"pattern": r"01\d"})  # whole case or patient id
    assert s["labeled"] == ["000_HC", "002_HC"] and s["val"] == ["010_2HC", "010_HC", "011_HC"]
    s = exam_split(root, labeled={"split": ["000", "001", "002", "003"], "every": 2}, unlabeled="rest:all",
                   limit_unlabeled=2)
    assert s["labeled"] == ["000_HC", "002_HC"] and s["unlabeled"] == ["001_2HC", "001_HC"]
    s = exam_split(root, labeled=["000"], unlabeled={"split": "rest:all", "range": ["001", "003"]})
    assert s["unlabeled"] == ["001_2HC", "001_HC", "002_HC", "003_HC"]


def test_selection_every_k_counts_patients_in_numeric_order(tmp_path: Path) -> None:
    root = build_exams(tmp_path, ["p1", "p2", "p9", "p10", "p11"])  # no case_pattern: the case id is the patient

    def patients(spec) -> set[str]:
        c = DataConfig.from_dict({"root": str(root), "classes": [1], "labeled": spec})
        return {x.patient_id for x in split_cases(c, discover_cases(c))["labeled"]}

    # p1 < p2 < p9 < p10 < p11, not the text order p1, p10, p11, p2, p9
    assert patients({"every": 2}) == {"p1_HC", "p9_HC", "p11_HC"}
    assert patients({"range": ["p2", "p10"]}) == {"p2_HC", "p9_HC", "p10_HC"}  # 'p10_HC' is within 'p10'


def test_selection_on_dataset_json_splits(nnunet: Path) -> None:
    c = cfg(nnunet, labeled={"split": "train", "exclude": "labeled_1"}, unlabeled={"split": "train", "every": 2},
            val={"split": "val", "pattern": r".*_frame01"})
    splits = split_cases(c, discover_cases(c))
    assert ids(splits["labeled"]) == ["pat2_frame01", "pat2_frame02"]
    assert ids(splits["unlabeled"]) == ["pat1_frame01", "pat1_frame02"]
    assert ids(splits["val"]) == ["pat3_frame01"]


def test_selection_errors_are_one_line_and_name_the_key(tmp_path: Path, nnunet: Path) -> None:
    def bad(match: str, **kw) -> None:
        with pytest.raises(MedAdaptError, match=match) as err:
            c = DataConfig.from_dict({"root": str(nnunet), "classes": ["lv"], **kw})
            split_cases(c, discover_cases(c))
        assert "\n" not in str(err.value)

    bad(r"unknown key\(s\) \['evry', 'ranges'\] in data.unlabeled.*'every'", unlabeled={"ranges": ["a", "b"], "evry": 2})
    bad(r"data.labeled is an empty selection", labeled={})
    bad(r"data.labeled.range must be \[first, last\]", labeled={"range": ["pat1"]})
    bad(r"data.labeled.range.*quote them", labeled={"range": [1, 2]})
    bad(r"data.labeled.range: first id 'pat3' sorts after last id 'pat1'", labeled={"range": ["pat3", "pat1"]})
    bad(r"data.val.pattern '\(' is not a valid regex", val={"pattern": "("})
    bad(r"data.labeled.every must be an integer >= 1", labeled={"every": 0})
    bad(r"data.labeled.every must be an integer >= 1", labeled={"every": True})
    bad(r"data.labeled.exclude must be split names or ids", labeled={"exclude": []})
    bad(r"data.val.*'rest:<split>' is only for data.unlabeled", val={"split": "rest:train"})
    bad(r"data.labeled.split must be a split name or a list of ids", labeled={"split": {"range": ["a", "b"]}})
    bad(r"data.labeled: the selection .* keeps no case \(split 'all': 6 cases; range: 0\)",
        labeled={"range": ["zz1", "zz2"]})
    bad(r"data.labeled.exclude: no case matches \['pat7'\]", labeled={"exclude": ["pat7"]})
    bad(r"unknown split 'trian'", labeled={"split": "trian"})
    bad(r"patients \['pat1'\] are in both data.labeled and data.val", labeled={"range": ["pat1", "pat2"]},
        val={"pattern": "pat1_.*"})


def test_selection_round_trips_through_to_dict(tmp_path: Path) -> None:
    spec = {"every": 4, "exclude": "labeled_7", "split": "train"}
    c = DataConfig.from_dict({"root": str(tmp_path), "classes": [1], "unlabeled": spec})
    assert c.unlabeled == {"split": "train", "exclude": ["labeled_7"], "every": 4}  # checked, in the order applied
    assert DataConfig.from_dict(c.to_dict()) == c


# --------------------------------------------------------------------------- classes named in the folder layout
def test_folder_classes_by_name_list_or_mapping(tmp_path: Path) -> None:
    """A new user's RGB images with 0/255 masks: `classes: [polyp]` or `{polyp: 1}` without a dataset.json."""
    root = build_exams(tmp_path, ["000", "001"])
    base = {"root": str(root), "layout": "folder", "labeled": ["000_HC"]}
    for classes in (["polyp"], {"polyp": 1}, {1: "polyp"}, {"polyp": 255}):
        c = DataConfig.from_dict({**base, "classes": classes})
        assert [n for n, _ in resolve_classes(c)] == ["polyp"]
        ds = SliceDataset(split_cases(c, discover_cases(c))["labeled"], c)
        assert ds.class_names == ["polyp"] and ds[0].image.shape == (16, 16, 3)
        assert ds[0].label.sum() == 64 and set(np.unique(ds[0].label)) == {0, 1}  # 255 -> target 1
    assert resolve_classes(DataConfig(root=str(root), classes=["polyp", "adenoma"])) == [("polyp", 1), ("adenoma", 2)]
    assert resolve_classes(DataConfig(root=str(root), classes={"polyp": 2, "adenoma": 1})) == [
        ("polyp", 2), ("adenoma", 1)]
    with pytest.raises(MedAdaptError, match="mapping must give each class name a label value"):
        DataConfig(root=str(root), classes={"polyp": "big"})
    with pytest.raises(MedAdaptError, match="background"):
        resolve_classes(DataConfig(root=str(root), classes={"polyp": 0}))
    with pytest.raises(MedAdaptError, match="value 1 twice"):
        resolve_classes(DataConfig(root=str(root), classes=["polyp", 1]))


def test_class_mapping_with_dataset_json(nnunet: Path) -> None:
    assert resolve_classes(cfg(nnunet, classes={"LV cavity": 3, "RV": 1})) == [("LV cavity", 3), ("RV", 1)]
    with pytest.raises(MedAdaptError, match="value 7 is not in dataset.json"):
        resolve_classes(cfg(nnunet, classes={"aorta": 7}))
    with pytest.raises(MedAdaptError, match=r"unknown class 'aorta'.*\{aorta: VALUE\}"):
        resolve_classes(cfg(nnunet, classes=["aorta"]))  # with dataset.json labels a name must be one of them


def test_a_label_on_another_voxel_grid_is_refused_and_large_label_values_stay_exact(tmp_path: Path) -> None:
    """A label volume saved with another affine (here the x axis flipped, as a converter may write it) would be
    the mirror image of the structure: it is refused, naming both files. Atlas label values beyond float32's
    exact whole numbers (2^24) keep their identity."""
    image, label = synth_volume(0)
    save_nifti(image, tmp_path / "imagesTr" / "case1.nii.gz")
    (tmp_path / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(label, np.diag([1.5, 2.0, 3.0, 1.0])), tmp_path / "labelsTr" / "case1.nii.gz")
    config = DataConfig(root=str(tmp_path), classes=[1, 2, 3])
    (case,) = discover_cases(config)
    with pytest.raises(MedAdaptError, match="not the same voxel grid.*resample or re-save"):
        load_volume_case(case, config)
    big = np.where(label > 0, 614454276 + label.astype(np.int64), 0).astype(np.uint32)
    nib.save(nib.Nifti1Image(big, AFFINE), tmp_path / "labelsTr" / "case1.nii.gz")  # same grid now
    config = DataConfig(root=str(tmp_path), classes=[614454277, 614454278])
    _, remapped = load_volume_case(case, config)
    assert np.array_equal(np.bincount(remapped.ravel(), minlength=3)[1:],
                          [(label == 1).sum(), (label == 2).sum()])  # float32 merged both into 614454272
    k = int(np.argmax(big.any(axis=(0, 1))))
    assert set(np.unique(load_mask(tmp_path / "labelsTr" / "case1.nii.gz", slice_index=k))) <= {
        0, 614454277, 614454278, 614454279}
    assert 614454277 in load_mask(tmp_path / "labelsTr" / "case1.nii.gz", slice_index=k)


def test_a_mask_pairs_with_one_image_and_data_labels_names_imagesTr_labels_only(tmp_path: Path, nnunet: Path) -> None:
    (tmp_path / "folder").mkdir()
    root = build_folder(tmp_path / "folder")
    # image x has no mask; x_seg.png is image x_seg's own mask, not x's by the suffix rule
    shutil.copy(root / "images" / "011_HC.png", root / "images" / "x.png")
    shutil.copy(root / "images" / "011_HC.png", root / "images" / "x_seg.png")
    shutil.copy(root / "masks" / "011_HC.png", root / "masks" / "x_seg.png")
    found = {c.case_id: c.label_path for c in discover_cases(cfg(root, classes=[1], layout="folder"))}
    assert found["x"] is None and found["x_seg"].name == "x_seg.png"
    # data.labels spelt out as the default: imagesVal still pairs with labelsVal beside it
    cases = discover_cases(cfg(nnunet, labels="labelsTr"))
    assert {c.case_id: c.label_path.parent.name for c in cases}["pat3_frame01"] == "labelsVal"


def test_a_sub_folder_of_pngs_is_not_taken_for_a_dicom_series(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    root = build_folder(tmp_path / "folder")
    (root / "images" / "train").mkdir()
    shutil.copy(root / "images" / "011_HC.png", root / "images" / "train" / "a.png")
    with pytest.raises(MedAdaptError, match="read as one DICOM series"):
        discover_cases(cfg(root, classes=[1], layout="folder"))


# --------------------------------------------------------------------------- patients nobody named
def test_cases_that_look_like_one_patients_exams_warn_without_a_case_pattern(tmp_path: Path) -> None:
    """``010_HC`` and ``010_2HC`` with no ``case_pattern`` and no split naming ``010`` are two patients to the
    splits (a test frame's twin could be trained on): a warning says to set ``data.case_pattern``."""
    root = build_exams(tmp_path / "hc", ["010", "011", "012", "013"], twins=("010", "011", "012", "013"))
    plain = DataConfig.from_dict({"root": str(root), "classes": [1], "labeled": {"every": 2}})
    with pytest.warns(UserWarning, match=r"4 case-id prefixes \('010', '011', '012', \.\.\.\).*data.case_pattern"):
        split_cases(plain, discover_cases(plain))
    for quiet in ({"case_pattern": r"^(\d+)_"}, {"labeled": ["010", "011"], "val": ["012", "013"]}):
        c = DataConfig.from_dict({"root": str(root), "classes": [1], "labeled": {"every": 2}, **quiet})
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # named patients, or a pattern: nothing to warn about
            split_cases(c, discover_cases(c))
    one_each = build_exams(tmp_path / "brats", [], twins=())
    for k in range(8):  # ids that share only the dataset's name are one patient each
        shutil.copy(root / "images" / "010_HC.png", one_each / "images" / f"BraTS2021_{k:05d}.png")
        shutil.copy(root / "masks" / "010_HC.png", one_each / "masks" / f"BraTS2021_{k:05d}.png")
    c = DataConfig.from_dict({"root": str(one_each), "classes": [1], "labeled": {"every": 2}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_cases(c, discover_cases(c))


def test_every_orders_ids_that_differ_only_in_zero_padding_the_same_way_each_time(tmp_path: Path) -> None:
    root = build_exams(tmp_path, ["p9", "p09", "p10", "p010"])  # p9 == p09 and p10 == p010 as numbers
    c = DataConfig.from_dict({"root": str(root), "classes": [1], "labeled": {"every": 2}})
    assert ids(split_cases(c, discover_cases(c))["labeled"]) == ["p010_HC", "p09_HC"]  # p09, p9, p010, p10


def test_an_unlabelled_nnunet_folder_of_numbered_scans_is_not_read_as_one_multichannel_case(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    image, label = synth_volume(0)
    save_nifti(image, root / "imagesTr" / "pat1_0000.nii.gz")
    save_nifti(label, root / "labelsTr" / "pat1.nii.gz")
    for k in range(4):  # no labelsTs: six scans named scan_0000 ... scan_0003
        save_nifti(image, root / "imagesTs" / f"scan_{k:04d}.nii.gz")
    c = cfg(root, layout="nnunet")
    assert ids(discover_cases(c)) == ["pat1", "scan_0000", "scan_0001", "scan_0002", "scan_0003"]
    (root / "dataset.json").write_text(json.dumps({"labels": LABELS, "channel_names": {str(k): f"MR{k}" for k in
                                                                                         range(4)}}))
    with pytest.warns(UserWarning, match="4 channels"):  # dataset.json says four channels: one case of four
        assert ids(discover_cases(c)) == ["pat1", "scan"]


def test_a_blank_2d_image_is_dropped_as_constant_like_a_blank_slice(tmp_path: Path) -> None:
    root = build_exams(tmp_path, ["001", "002", "003"])
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images" / "002_HC.png")  # a blank frame
    c = DataConfig.from_dict({"root": str(root), "classes": [1], "labeled": "all"})
    ds = SliceDataset(split_cases(c, discover_cases(c))["labeled"], c)
    assert len(ds) == 2 and ds.dropped["constant"] == 1 and not ds.skipped
