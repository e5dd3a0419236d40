"""Evaluation metrics (MONAI Dice/HD95/NSD with our empty conventions), units, and reports."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from medadapt.core.errors import MedAdaptError
from medadapt.evaluation import (
    CSV_HEADER,
    CaseResult,
    EvaluationReport,
    binary_dice,
    dice_per_class,
    hd95_per_class,
    surface_dice_per_class,
)

# --------------------------------------------------------------------------- Dice


def _two_class_2d() -> tuple[np.ndarray, np.ndarray]:
    """Class 1: pred 4 px inside an 8 px target (Dice 2*4/12). Class 2: 4 vs 4 px, 2 shared (Dice 0.5)."""
    target = np.zeros((6, 6), dtype=np.uint8)
    pred = np.zeros((6, 6), dtype=np.uint8)
    target[0:2, 0:4] = 1
    pred[0:2, 0:2] = 1
    target[4:6, 4:6] = 2
    pred[4:6, 3:5] = 2
    return pred, target


def test_dice_2d_two_classes_exact() -> None:
    pred, target = _two_class_2d()
    scores = dice_per_class(pred, target, [1, 2])
    assert list(scores) == [1, 2]
    assert scores[1] == pytest.approx(2 / 3)
    assert scores[2] == pytest.approx(0.5)
    assert all(isinstance(v, float) for v in scores.values())


def test_dice_3d_two_classes_exact() -> None:
    target = np.zeros((4, 4, 4), dtype=np.int32)
    pred = np.zeros((4, 4, 4), dtype=np.int32)
    target[0:2, 0:2, 0:2] = 1  # 8 voxels
    pred[0:2, 0:2, 1:3] = 1  # 8 voxels, 4 shared -> 2*4/16
    target[3, 3, 3] = 2  # 1 voxel
    pred[3, 3, 2:4] = 2  # 2 voxels, 1 shared -> 2*1/3
    scores = dice_per_class(pred, target, [1, 2])
    assert scores[1] == pytest.approx(0.5)
    assert scores[2] == pytest.approx(2 / 3)


def test_dice_is_volumetric_not_slice_mean() -> None:
    # Slice 0 perfect (4 vs 4), slice 1 misses a 1-voxel target: 3D Dice 2*4/9, slice mean would be 0.5.
    target = np.zeros((2, 4, 4), dtype=np.int64)
    pred = np.zeros_like(target)
    target[0, 0:2, 0:2] = 1
    pred[0, 0:2, 0:2] = 1
    target[1, 3, 3] = 1
    assert dice_per_class(pred, target, [1])[1] == pytest.approx(8 / 9)


def test_dice_empty_conventions() -> None:
    empty = np.zeros((5, 5), dtype=np.uint8)
    blob = empty.copy()
    blob[1:3, 1:3] = 1
    assert dice_per_class(empty, empty, [1]) == {1: 1.0}  # both empty: correct absence
    assert dice_per_class(blob, empty, [1]) == {1: 0.0}  # false positive on empty target
    assert dice_per_class(empty, blob, [1]) == {1: 0.0}  # missed structure
    # A class absent from both maps scores 1.0 next to a real class; never nan.
    pred, target = _two_class_2d()
    scores = dice_per_class(pred, target, [1, 2, 3])
    assert scores[3] == 1.0
    assert not any(math.isnan(v) for v in scores.values())


def test_binary_dice() -> None:
    pred, target = _two_class_2d()
    # Foreground (labels merged): pred 4 + 4 px, target 8 + 4 px, shared 4 + 2 -> 2*6/20.
    assert binary_dice(pred, target) == pytest.approx(0.6)
    assert binary_dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert binary_dice(np.ones((3, 3), bool), np.zeros((3, 3), bool)) == 0.0


def test_float_label_maps_with_integral_values_are_accepted() -> None:
    pred, target = _two_class_2d()
    assert dice_per_class(pred.astype(np.float32), target.astype(np.float64), [1])[1] == pytest.approx(2 / 3)
    with pytest.raises(MedAdaptError, match="non-integer"):
        dice_per_class(pred * 0.5, target, [1])


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(MedAdaptError, match=r"\(4, 5\).*\(4, 6\)"):
        dice_per_class(np.zeros((4, 5), int), np.zeros((4, 6), int), [1])
    with pytest.raises(MedAdaptError, match=r"\(2, 3, 3\).*\(3, 3\)"):
        hd95_per_class(np.zeros((2, 3, 3), int), np.zeros((3, 3), int), [1])
    with pytest.raises(MedAdaptError):
        binary_dice(np.zeros((3, 3)), np.zeros((3, 4)))
    assert issubclass(MedAdaptError, ValueError)


def test_bad_class_values_and_dimensions() -> None:
    a = np.zeros((4, 4), int)
    with pytest.raises(MedAdaptError, match="empty"):
        dice_per_class(a, a, [])
    with pytest.raises(MedAdaptError, match="duplicates"):
        dice_per_class(a, a, [1, 1])
    with pytest.raises(MedAdaptError, match="2D"):
        dice_per_class(np.zeros(4, int), np.zeros(4, int), [1])


# --------------------------------------------------------------------------- HD95


def _square(shape: tuple[int, int], top: int, left: int, size: int = 10) -> np.ndarray:
    m = np.zeros(shape, dtype=np.uint8)
    m[top : top + size, left : left + size] = 1
    return m


def test_hd95_shifted_squares_equals_shift_in_pixels() -> None:
    target = _square((32, 32), 10, 10)
    pred = _square((32, 32), 10, 13)  # 3 px to the right
    assert hd95_per_class(pred, target, [1]) == {1: pytest.approx(3.0)}
    pred_down = _square((32, 32), 13, 10)  # 3 px down
    assert hd95_per_class(pred_down, target, [1])[1] == pytest.approx(3.0)


def test_hd95_uses_spacing_per_axis_in_mm() -> None:
    target = _square((32, 32), 10, 10)
    # spacing (2.0, 1.0): axis 0 voxels are 2 mm, axis 1 voxels 1 mm.
    across_cols = _square((32, 32), 10, 13)
    across_rows = _square((32, 32), 13, 10)
    assert hd95_per_class(across_cols, target, [1], spacing=(2.0, 1.0))[1] == pytest.approx(3.0)
    assert hd95_per_class(across_rows, target, [1], spacing=(2.0, 1.0))[1] == pytest.approx(6.0)


def test_hd95_3d_two_classes() -> None:
    target = np.zeros((20, 20, 20), dtype=np.int16)
    pred = np.zeros_like(target)
    target[2:8, 2:8, 2:8] = 1
    pred[4:10, 2:8, 2:8] = 1  # class 1 shifted 2 along axis 0
    target[12:18, 12:18, 12:18] = 2
    pred[12:18, 12:18, 12:18] = 2  # class 2 exact
    out = hd95_per_class(pred, target, [1, 2], spacing=(3.0, 1.0, 1.0))
    assert out[1] == pytest.approx(6.0)
    assert out[2] == pytest.approx(0.0)


def test_hd95_nan_when_either_mask_empty() -> None:
    empty = np.zeros((16, 16), dtype=np.uint8)
    square = _square((16, 16), 3, 3, size=5)
    for pred, target in [(empty, square), (square, empty), (empty, empty)]:
        assert math.isnan(hd95_per_class(pred, target, [1])[1])
    # Mixed: a present class keeps its value next to an empty one.
    out = hd95_per_class(square, square, [1, 2])
    assert out[1] == pytest.approx(0.0)
    assert math.isnan(out[2])


def test_hd95_bad_spacing() -> None:
    sq = _square((16, 16), 3, 3, size=5)
    with pytest.raises(MedAdaptError, match="spacing has 3 values"):
        hd95_per_class(sq, sq, [1], spacing=(1.0, 1.0, 1.0))
    with pytest.raises(MedAdaptError, match="positive"):
        hd95_per_class(sq, sq, [1], spacing=(0.0, 1.0))


# --------------------------------------------------------------------------- NSD and units


def _shifted_cubes() -> tuple[np.ndarray, np.ndarray]:
    """A 10-voxel cube and the same cube shifted 2 voxels along axis 0 (pred, target).

    Each boundary (the voxels erosion removes) has 10^3 - 8^3 = 488 voxels. Distances from
    one boundary to the other: 0 for the 8 shared rings of 36 side-wall voxels (288),
    1 for 64 (the ring just inside the shifted face, the ring next to the far face) and 2
    for the other 136. So NSD is 288/488 below a tolerance of 1, 352/488 from 1 to
    below 2, and 1 from 2 on.
    """
    target = np.zeros((32, 32, 32), np.int64)
    target[10:20, 10:20, 10:20] = 1
    pred = np.zeros_like(target)
    pred[12:22, 10:20, 10:20] = 1
    return pred, target


@pytest.mark.parametrize("tolerance, expected", [(0, 288 / 488), (0.5, 288 / 488), (1.0, 352 / 488),
                                                 (1.5, 352 / 488), (2.0, 1.0), (5.0, 1.0)])
def test_nsd_of_a_shifted_cube_is_exact(tolerance, expected) -> None:
    pred, target = _shifted_cubes()
    assert surface_dice_per_class(pred, target, [1], tolerance) == {1: pytest.approx(expected, abs=1e-6)}


def _parallel_plates() -> tuple[np.ndarray, np.ndarray]:
    """Two one-voxel-thick plates 4 voxels apart along axis 0: every surface distance is 4 voxels on axis 0."""
    target = np.zeros((24, 32, 32), np.int64)
    target[10, 5:26, 5:26] = 1
    pred = np.zeros_like(target)
    pred[14, 5:26, 5:26] = 1
    return pred, target


def test_spacing_scales_distances_by_the_spacing_of_their_axis() -> None:
    pred, target = _parallel_plates()
    assert hd95_per_class(pred, target, [1])[1] == pytest.approx(4.0)  # pixels
    assert hd95_per_class(pred, target, [1], spacing=(2.5, 0.7, 0.7))[1] == pytest.approx(10.0)  # 4 x 2.5 mm
    assert hd95_per_class(pred, target, [1], spacing=(0.7, 2.5, 2.5))[1] == pytest.approx(2.8)  # axis order matters
    # NSD's tolerance is in the same units: 4 px is within 5 px, but 10 mm is not within 5 mm
    assert surface_dice_per_class(pred, target, [1], 5.0)[1] == pytest.approx(1.0)
    assert surface_dice_per_class(pred, target, [1], 5.0, spacing=(2.5, 0.7, 0.7))[1] == pytest.approx(0.0)
    assert surface_dice_per_class(pred, target, [1], 10.0, spacing=(2.5, 0.7, 0.7))[1] == pytest.approx(1.0)


def test_nsd_empty_conventions_and_bad_arguments() -> None:
    empty = np.zeros((16, 16), dtype=np.uint8)
    square = _square((16, 16), 3, 3, size=5)
    assert surface_dice_per_class(empty, square, [1], 1.0) == {1: 0.0}  # missed
    assert surface_dice_per_class(square, empty, [1], 1.0) == {1: 0.0}  # hallucinated
    assert math.isnan(surface_dice_per_class(empty, empty, [1], 1.0)[1])  # 0/0: excluded, like HD95
    both = surface_dice_per_class(square, square, [1, 2], 0.0)
    assert both[1] == pytest.approx(1.0) and math.isnan(both[2])
    for bad in (-1.0, math.inf, math.nan, "2", None, True):
        with pytest.raises(MedAdaptError, match="tolerance"):
            surface_dice_per_class(square, square, [1], bad)
    with pytest.raises(MedAdaptError, match="spacing has 3 values"):
        surface_dice_per_class(square, square, [1], 1.0, spacing=(1.0, 1.0, 1.0))


def test_report_with_nsd_summary_table_files_and_old_files(tmp_path) -> None:
    rep = EvaluationReport(hd95_unit="mm", metrics=("dice", "hd95", "nsd"), nsd_tolerance=2.0)
    rep.add("c1", "box", "liver", 1, 0.8, 2.0, 0.9)
    rep.add("c2", "box", "liver", 1, 0.6, 4.0, 0.7)
    rep.add("c1", "box", "spleen", 2, 1.0, math.nan, math.nan)  # absent in both: NSD excluded
    rep.add_case("c2", "box", {2: "spleen"}, {2: 0.5}, {2: 3.0}, {2: 0.4})
    liver, spleen, mean = (_row(rep.summary(), "box", c) for c in ("liver", "spleen", "mean"))
    assert liver["nsd_mean"] == pytest.approx(0.8) and liver["nsd_excluded"] == 0
    assert spleen["nsd_mean"] == pytest.approx(0.4) and spleen["nsd_excluded"] == 1
    assert mean["nsd_mean"] == pytest.approx(0.6) and mean["nsd_excluded"] == 1
    text = rep.table()
    assert "HD95 (mm)" in text and "NSD@2mm" in text and "NSD n/a" in text and "0.8000" in text
    assert "pixels" not in text
    with pytest.raises(MedAdaptError, match="pass nsd="):
        rep.add_case("c3", "box", {1: "liver"}, {1: 0.5}, {1: 3.0})
    with pytest.raises(MedAdaptError, match="nsd must be in"):
        rep.add("c3", "box", "liver", 1, 0.5, 3.0, 1.5)
    with pytest.raises(MedAdaptError, match="tolerance"):
        EvaluationReport(metrics=("dice", "nsd"))
    doc = json.loads(rep.to_json(tmp_path / "eval.json").read_text())
    assert doc["nsd_tolerance"] == 2.0 and doc["cases"][0]["nsd"] == 0.9 and doc["cases"][2]["nsd"] is None
    back = EvaluationReport.from_json(tmp_path / "eval.json")
    assert back.nsd_tolerance == 2.0 and back.metrics == rep.metrics and back.table() == text
    with rep.to_csv(tmp_path / "eval.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == [*CSV_HEADER, "nsd"] and rows[1][-1] == "0.9" and rows[3][-1] == ""
    # a version-1 file (no nsd anywhere) still reads, as Dice + HD95
    old = json.loads(_report().to_json(tmp_path / "old.json").read_text())
    old["version"] = 1
    del old["nsd_tolerance"]
    for case in old["cases"]:
        del case["nsd"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    back = EvaluationReport.from_json(tmp_path / "old.json")
    assert back.metrics == ("dice", "hd95") and back.nsd_tolerance is None and back.table() == _report().table()


def test_pixel_reports_say_so_under_the_table() -> None:
    rep = EvaluationReport(hd95_unit="px", metrics=("dice", "nsd"), nsd_tolerance=1.5)
    rep.add("c1", "box", "liver", 1, 0.8, math.nan, 0.9)
    text = rep.table()
    assert "NSD@1.5px" in text and "HD95" not in text
    assert text.splitlines()[-1].startswith("the NSD tolerance in pixels (px), not mm")


# --------------------------------------------------------------------------- report


def _report() -> EvaluationReport:
    rep = EvaluationReport(hd95_unit="mm")
    # automatic: liver dice 0.8/0.6, hd 2/4; spleen dice 0.5/0.7, hd nan/6
    rep.add("c1", "automatic", "liver", 1, 0.8, 2.0)
    rep.add("c1", "automatic", "spleen", 2, 0.5, math.nan)
    rep.add("c2", "automatic", "liver", 1, 0.6, 4.0)
    rep.add("c2", "automatic", "spleen", 2, 0.7, 6.0)
    # 1-click: liver only, one case, hd nan
    rep.add("c1", "1-click", "liver", 1, 0.9, math.nan)
    return rep


def _row(summary: list[dict], mode: str, cls: str) -> dict:
    (row,) = [r for r in summary if r["mode"] == mode and r["class"] == cls]
    return row


def test_summary_means_std_and_excluded_counts() -> None:
    summary = _report().summary()
    assert [(r["mode"], r["class"]) for r in summary] == [
        ("automatic", "liver"),
        ("automatic", "spleen"),
        ("automatic", "mean"),
        ("1-click", "liver"),
        ("1-click", "mean"),
    ]
    liver = _row(summary, "automatic", "liver")
    assert liver["value"] == 1
    assert liver["dice_mean"] == pytest.approx(0.7)
    assert liver["dice_std"] == pytest.approx(0.1)  # population std
    assert liver["hd95_mean"] == pytest.approx(3.0)
    assert (liver["n"], liver["hd95_excluded"]) == (2, 0)

    spleen = _row(summary, "automatic", "spleen")
    assert spleen["dice_mean"] == pytest.approx(0.6)
    assert spleen["hd95_mean"] == pytest.approx(6.0)  # nan excluded, not averaged as 0
    assert (spleen["n"], spleen["hd95_excluded"]) == (2, 1)

    mean = _row(summary, "automatic", "mean")
    assert mean["value"] is None
    assert mean["dice_mean"] == pytest.approx(0.65)  # mean of class means 0.7 and 0.6
    assert mean["dice_std"] == pytest.approx(0.05)
    assert mean["hd95_mean"] == pytest.approx(4.5)  # mean of 3.0 and 6.0
    assert (mean["n"], mean["hd95_excluded"]) == (2, 1)

    click = _row(summary, "1-click", "liver")
    assert click["dice_mean"] == pytest.approx(0.9)
    assert click["dice_std"] == 0.0
    assert math.isnan(click["hd95_mean"])
    assert (click["n"], click["hd95_excluded"]) == (1, 1)
    assert math.isnan(_row(summary, "1-click", "mean")["hd95_mean"])


def test_table_lists_modes_classes_and_na() -> None:
    text = _report().table()
    for word in ("automatic", "1-click", "liver", "spleen", "mean", "HD95 (mm)", "n/a", "0.7000 ± 0.1000"):
        assert word in text
    assert EvaluationReport().table() == "(no evaluation results)"


def test_add_case_from_metric_dicts() -> None:
    pred, target = _two_class_2d()
    rep = EvaluationReport(hd95_unit="px")
    added = rep.add_case(
        "img0",
        "box",
        {1: "liver", 2: "spleen"},
        dice_per_class(pred, target, [1, 2]),
        hd95_per_class(pred, target, [1, 2]),
    )
    assert [r.class_name for r in added] == ["liver", "spleen"]
    assert rep.results[0].dice == pytest.approx(2 / 3)
    assert len(rep) == 2


def test_report_rejects_bad_rows() -> None:
    rep = _report()
    with pytest.raises(MedAdaptError, match="already"):
        rep.add("c1", "automatic", "liver", 1, 0.5, 1.0)
    with pytest.raises(MedAdaptError, match="named"):
        rep.add("c3", "automatic", "kidney", 1, 0.5, 1.0)
    with pytest.raises(MedAdaptError, match="dice"):
        CaseResult("c", "box", "liver", 1, math.nan, 1.0)
    with pytest.raises(MedAdaptError, match="hd95"):
        CaseResult("c", "box", "liver", 1, 0.5, -1.0)


def test_json_round_trip(tmp_path) -> None:
    rep = _report()
    path = rep.to_json(tmp_path / "nested" / "dir" / "eval.json")
    assert path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name != "eval.json"]  # no temp file left
    doc = json.loads(path.read_text())  # strict JSON: nan stored as null
    assert doc["cases"][1]["hd95"] is None
    back = EvaluationReport.from_json(path)
    assert back.hd95_unit == "mm"
    assert len(back) == len(rep)
    for a, b in zip(rep.results, back.results):
        assert (a.case_id, a.mode, a.class_name, a.class_value, a.dice) == (
            b.case_id,
            b.mode,
            b.class_name,
            b.class_value,
            b.dice,
        )
        assert a.hd95 == b.hd95 or (math.isnan(a.hd95) and math.isnan(b.hd95))
    assert back.table() == rep.table()


def test_from_json_errors(tmp_path) -> None:
    with pytest.raises(MedAdaptError, match="not found"):
        EvaluationReport.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MedAdaptError):
        EvaluationReport.from_json(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(MedAdaptError, match="not a medadapt evaluation report"):
        EvaluationReport.from_json(other)


def test_csv_header_and_rows(tmp_path) -> None:
    rep = _report()
    path = rep.to_csv(tmp_path / "out" / "eval.csv")
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CSV_HEADER == ("case_id", "mode", "class", "value", "dice", "hd95")
    assert len(rows) == 1 + len(rep) == 6
    assert rows[1] == ["c1", "automatic", "liver", "1", "0.8", "2.0"]
    assert rows[2][-1] == ""  # nan hd95 -> empty cell


def test_table_shows_the_spread_only_where_it_is_defined() -> None:
    # automatic: two cases per class and two classes; 1-click: one case of one class
    lines = {tuple(line.split()[:2]): line for line in _report().table().splitlines() if line.strip()}
    assert "0.7000 ± 0.1000" in lines[("automatic", "liver")]  # std over 2 cases
    assert "0.6500 ± 0.0500" in lines[("automatic", "mean")]  # spread of 2 class means
    assert "0.9000" in lines[("1-click", "liver")] and "±" not in lines[("1-click", "liver")]  # one case
    assert "±" not in lines[("1-click", "mean")]  # one class: no spread of class means
    one_class = EvaluationReport()
    one_class.add("c1", "box", "liver", 1, 0.8, 1.0)
    one_class.add("c2", "box", "liver", 1, 0.6, 3.0)
    rows = {tuple(line.split()[:2]): line for line in one_class.table().splitlines() if line.strip()}
    assert "0.7000 ± 0.1000" in rows[("box", "liver")] and "±" not in rows[("box", "mean")]


def test_dice_only_report_has_no_hd95_columns(tmp_path) -> None:
    rep = EvaluationReport(hd95_unit="px", metrics=("dice",))
    rep.add("c1", "box", "liver", 1, 0.8, math.nan)
    rep.add("c2", "box", "liver", 1, 0.6, math.nan)
    assert rep.metrics == ("dice",) and not rep.has_hd95
    liver = _row(rep.summary(), "box", "liver")
    assert math.isnan(liver["hd95_mean"]) and liver["hd95_excluded"] is None  # not "2 excluded": never computed
    text = rep.table()
    assert "HD95" not in text and "n/a" not in text and "0.7000 ± 0.1000" in text
    with pytest.raises(MedAdaptError, match="without HD95"):
        rep.add("c3", "box", "liver", 1, 0.5, 2.0)
    path = rep.to_json(tmp_path / "eval.json")
    assert json.loads(path.read_text())["metrics"] == ["dice"]
    back = EvaluationReport.from_json(path)
    assert back.metrics == ("dice",) and back.table() == text
    with pytest.raises(MedAdaptError, match="metrics"):
        EvaluationReport(metrics=("hd95",))
    # a file written before reports recorded their metrics had both
    doc = json.loads(_report().to_json(tmp_path / "old.json").read_text())
    del doc["metrics"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert EvaluationReport.from_json(tmp_path / "old.json").metrics == ("dice", "hd95")


# --------------------------------------------------------------------------- evaluate_run end to end

LABELED, VAL, TEST = ["000", "001", "002", "003", "004"], ["005", "006"], ["007", "008", "009"]


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    """A one-epoch tiny run on a 2-class dataset that names a held-out test split."""
    from conftest import tiny_run, two_class_dataset

    root = two_class_dataset(tmp_path_factory.mktemp("twoclass") / "data", n=10)
    return tiny_run(root, tmp_path_factory.mktemp("runs"), labeled=LABELED, val=VAL, test=TEST)


def test_evaluate_scores_the_held_out_test_split_with_or_without_hd95(scored_run, tmp_path) -> None:
    from medadapt.evaluation.evaluate import evaluate_run

    report = evaluate_run(scored_run, split="test", modes=["automatic", "box"], metrics=["dice"])
    assert sorted({r.case_id for r in report}) == TEST
    assert report.metrics == ("dice",) and all(math.isnan(r.hd95) for r in report)
    assert {r.class_name for r in report} == {"disc", "square"}
    csv_path = scored_run / "eval_test" / "evaluation.csv"  # the default folder is named after the split
    assert len(csv_path.read_text().strip().splitlines()) == 1 + 3 * 2 * 2  # cases x modes x classes
    assert json.loads((scored_run / "eval_test" / "evaluation.json").read_text())["metrics"] == ["dice"]
    full = evaluate_run(scored_run, split="test", modes=["box"], limit=2, out_dir=tmp_path / "full")
    assert sorted({r.case_id for r in full}) == TEST[:2] and full.metrics == ("dice", "hd95", "nsd")
    assert any(not math.isnan(r.hd95) for r in full)  # box prompts give masks, so HD95 is computed
    assert any(not math.isnan(r.nsd) for r in full)
    # PNG files store no spacing: distances in pixels, and the table says so
    assert full.hd95_unit == "px" and full.nsd_tolerance == 2.0
    assert "HD95 (px)" in full.table() and "NSD@2px" in full.table() and "in pixels" in full.table()
    doc = json.loads((tmp_path / "full" / "evaluation.json").read_text())
    assert (doc["hd95_unit"], doc["nsd_tolerance"], doc["metrics"]) == ("px", 2.0, ["dice", "hd95", "nsd"])


def test_a_2d_image_is_scored_on_its_contour_not_as_a_one_slice_volume(scored_run, tmp_path, monkeypatch) -> None:
    """As a one-slice volume every foreground pixel would be surface: HD95 low and NSD about doubled."""
    import medadapt.evaluation.evaluate as ev

    seen = []
    for name in ("hd95_per_class", "surface_dice_per_class"):
        real = getattr(ev, name)
        monkeypatch.setattr(ev, name, lambda p, t, *a, real=real, **k: seen.append(p.shape) or real(p, t, *a, **k))
    report = ev.evaluate_run(scored_run, split="test", modes=["automatic", "box"], limit=1, out_dir=tmp_path / "ev")
    assert seen and all(len(shape) == 2 for shape in seen)
    case = next(r for r in report if r.mode == "box" and r.class_name == "disc")
    assert not math.isnan(case.nsd) and case.nsd < 1.0


def _nifti_twin(root, n: int = 2, seed: int = 0):
    """An nnU-Net-layout dataset of ``n`` small volumes with the disc and square classes of
    ``two_class_dataset``, voxel size 0.75 x 1.25 x 2.5 mm (x, y, z: anisotropic on every axis)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "disc", "2": "square"}}))
    affine = np.diag([0.75, 1.25, 2.5, 1.0])  # exact in float32
    xx, yy = np.mgrid[:64, :64]
    for i in range(n):
        labels = np.zeros((64, 64, 3), np.uint8)
        cx, cy = rng.integers(16, 48, 2)
        labels[(xx - cx) ** 2 + (yy - cy) ** 2 <= 8**2, 1:] = 1
        x0, y0 = rng.integers(2, 50, 2)
        box = labels[x0 : x0 + 12, y0 : y0 + 12]
        box[box == 0] = 2
        image = np.choose(labels, [60, 200, 130]) + rng.normal(0, 8, labels.shape)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / "imagesTr" / f"vol{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), root / "labelsTr" / f"vol{i}.nii.gz")
    return root


def test_evaluate_volumes_with_a_spacing_report_mm(scored_run, tmp_path, monkeypatch) -> None:
    import yaml

    from medadapt.data import DataConfig, case_spacing, discover_cases
    from medadapt.evaluation import evaluate as ev

    root = _nifti_twin(tmp_path / "vols")
    data = {"root": str(root), "layout": "nnunet", "classes": ["disc", "square"]}
    (tmp_path / "vols.yaml").write_text(yaml.safe_dump({"data": data}))
    config = DataConfig.from_dict(data)
    spacing = {c.case_id: case_spacing(c, config) for c in discover_cases(config)}
    assert set(spacing.values()) == {(2.5, 1.25, 0.75)}  # (slices, rows, columns) of the stacks
    seen = []  # the spacing each HD95/NSD call got
    real_hd95, real_nsd = ev.hd95_per_class, ev.surface_dice_per_class
    monkeypatch.setattr(ev, "hd95_per_class", lambda p, t, v, sp=None: seen.append(sp) or real_hd95(p, t, v, sp))
    monkeypatch.setattr(ev, "surface_dice_per_class",
                        lambda p, t, v, tol, sp=None: seen.append(sp) or real_nsd(p, t, v, tol, sp))
    report = ev.evaluate_run(scored_run, data=tmp_path / "vols.yaml", split="all", modes=["box"], tolerance=3.0,
                             out_dir=tmp_path / "ev")
    assert report.hd95_unit == "mm" and report.nsd_tolerance == 3.0 and len(report) == 2 * 2
    assert seen and all(tuple(sp) == (2.5, 1.25, 0.75) for sp in seen)
    assert any(not math.isnan(r.hd95) for r in report)
    text = report.table()
    assert "HD95 (mm)" in text and "NSD@3mm" in text and "pixels" not in text
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["hd95_unit"] == "mm"
    # units="px" ignores the files' spacing (for placeholder spacings such as ACDC's in-plane 1 mm)
    seen.clear()
    report = ev.evaluate_run(scored_run, data=tmp_path / "vols.yaml", split="all", modes=["box"], units="px",
                             metrics=["dice", "hd95"], limit=1, out_dir=tmp_path / "ev_px")
    assert report.hd95_unit == "px" and seen and all(sp is None for sp in seen) and "HD95 (px)" in report.table()
    # volumes next to 2-D files: pixels for all, with a warning (one mean never adds mm to pixels)
    monkeypatch.setattr(ev, "_is_volume", lambda path: path.name.startswith("007"))
    with pytest.warns(UserWarning, match="1 of 2 cases are 2-D image files"):
        mixed = ev.evaluate_run(scored_run, split="test", modes=["box"], metrics=["dice", "hd95"], limit=2,
                                out_dir=tmp_path / "ev_mixed")
    assert mixed.hd95_unit == "px"


def test_a_bad_image_stops_evaluation_naming_its_case(scored_run, tmp_path) -> None:
    import nibabel as nib
    import yaml

    from medadapt.evaluation.evaluate import evaluate_run

    root = _nifti_twin(tmp_path / "vols")
    path = root / "imagesTr" / "vol1_0000.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[10:19, 10:19, 1] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), path)
    (tmp_path / "vols.yaml").write_text(yaml.safe_dump({"data": {"root": str(root), "layout": "nnunet",
                                                                 "classes": ["disc", "square"]}}))
    with pytest.raises(MedAdaptError, match=r"case vol1 \(.*vol1_0000.nii.gz\): .*81 NaN"):
        evaluate_run(scored_run, data=tmp_path / "vols.yaml", split="all", modes=["box"], metrics=["dice"],
                     out_dir=tmp_path / "ev")


def test_evaluate_a_separate_folder_or_data_yaml(scored_run, tmp_path) -> None:
    import yaml
    from conftest import two_class_dataset

    from medadapt.evaluation.evaluate import evaluate_run

    held = two_class_dataset(tmp_path / "held", n=3, seed=7)  # ids 000..002: not the run's split lists
    report = evaluate_run(scored_run, data=held, split="all", modes=["automatic"], metrics=["dice"])
    assert sorted({r.case_id for r in report}) == ["000", "001", "002"]
    written = sorted(scored_run.glob("eval_held-*_all"))  # beside the run's own eval_all, never over it
    assert len(written) == 1 and (written[0] / "evaluation.json").is_file()
    shutil.rmtree(written[0])
    # an unlabelled image in the folder is left out of --split all; a class absent from a case is scored in
    # automatic mode (an empty answer is right there) but not in box mode, which has no box to give for it
    from PIL import Image

    (held / "masks" / "002.png").unlink()
    mask = np.array(Image.open(held / "masks" / "001.png"))
    Image.fromarray(np.where(mask == 2, 0, mask).astype(np.uint8)).save(held / "masks" / "001.png")
    report = evaluate_run(scored_run, data=held, split="all", modes=["automatic", "box"], metrics=["dice"],
                          out_dir=tmp_path / "ev_absent")
    rows = {(r.case_id, r.mode, r.class_name) for r in report}
    assert {r.case_id for r in report} == {"000", "001"}
    assert ("001", "automatic", "square") in rows and ("001", "box", "square") not in rows
    assert ("001", "box", "disc") in rows and ("000", "box", "square") in rows
    # a one-pixel-wide structure on the image's last column still gets a box (at least a pixel wide, inside)
    mask = np.array(Image.open(held / "masks" / "000.png"))
    mask = np.where(mask == 2, 0, mask).astype(np.uint8)
    mask[5:15, -1] = 2
    Image.fromarray(mask).save(held / "masks" / "000.png")
    edge = evaluate_run(scored_run, data=held, split="all", modes=["box"], metrics=["dice"], limit=1,
                        out_dir=tmp_path / "ev_edge")
    assert ("000", "box", "square") in {(r.case_id, r.mode, r.class_name) for r in edge}
    with pytest.raises(MedAdaptError, match="--split all scores every labelled case"):
        evaluate_run(scored_run, data=held, split="val", modes=["automatic"], out_dir=tmp_path / "ev")
    data = yaml.safe_load((scored_run / "config.yaml").read_text())["data"]
    data.pop("test")
    (tmp_path / "no_test.yaml").write_text(yaml.safe_dump({"data": data}))
    with pytest.raises(MedAdaptError, match=r"data\.test is empty or not set"):
        evaluate_run(scored_run, data=tmp_path / "no_test.yaml", split="test", out_dir=tmp_path / "ev")
    data["test"] = ["005"]
    data["val"] = ["006"]
    (tmp_path / "test5.yaml").write_text(yaml.safe_dump(data))  # a bare data: section works too
    report = evaluate_run(scored_run, data=tmp_path / "test5.yaml", split="test", modes=["automatic"],
                          metrics=["dice"], out_dir=tmp_path / "ev")
    assert {r.case_id for r in report} == {"005"}
    data["classes"] = ["disc"]
    (tmp_path / "one_class.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(MedAdaptError, match="adapter has 2"):
        evaluate_run(scored_run, data=tmp_path / "one_class.yaml", split="test", out_dir=tmp_path / "ev_one")


def test_an_evaluation_records_what_it_scored_and_another_setting_does_not_replace_it(scored_run, tmp_path) -> None:
    """A quick ``--limit 1`` (or another split, modes, data...) into the folder of a full evaluation is refused
    unless ``overwrite``; the same settings replace it (after more training, say); the JSON says what was
    scored, and the CLI's line says it too."""
    from medadapt.evaluation.evaluate import describe_evaluation, evaluate_run

    out = tmp_path / "ev"
    full = evaluate_run(scored_run, split="test", modes=["automatic", "box"], metrics=["dice"], out_dir=out)
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["settings"]["split"] == "test" and doc["settings"]["limit"] is None and doc["settings"]["cases"] == 3
    assert doc["settings"]["prompts_from_ground_truth"] == ["box"] and doc["settings"]["student"] is False
    assert EvaluationReport.from_json(out / "evaluation.json").settings == full.settings == doc["settings"]
    for other in ({"limit": 1}, {"modes": ["box"]}, {"split": "val"}):
        with pytest.raises(MedAdaptError, match=r"holds an evaluation made with other settings \(.*\); give --out "
                                                r"DIR to keep both, or --overwrite"):
            evaluate_run(scored_run, **{"split": "test", "modes": ["automatic", "box"], "metrics": ["dice"],
                                        **other}, out_dir=out)
    assert len(EvaluationReport.from_json(out / "evaluation.json")) == len(full)  # the full one is still there
    evaluate_run(scored_run, split="test", modes=["automatic", "box"], metrics=["dice"], out_dir=out)  # the same
    quick = evaluate_run(scored_run, split="test", modes=["box"], metrics=["dice"], limit=1, out_dir=out,
                         overwrite=True)
    assert json.loads((out / "evaluation.json").read_text())["settings"]["limit"] == 1
    line = describe_evaluation(quick.settings)
    assert "split test (1 cases)" in line and "box: prompts drawn from the ground truth" in line
    assert str(out.resolve()) in line and "automatic mode" not in line
    assert "report a held-out test split" in describe_evaluation({**quick.settings, "split": "val"})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"limit": -1}, "--limit must be a number of cases >= 1"),  # [:-1] would drop the last case silently
        ({"limit": 0}, "--limit must be a number of cases >= 1"),
        ({"metrics": ["hd95"]}, "choose dice or dice,hd95,nsd"),
        ({"metrics": ["dice", "hausdorff"]}, "choose dice or dice,hd95,nsd"),
        ({"tolerance": -1.0}, "--nsd-tolerance"),
        ({"units": "cm"}, "--units 'cm': choose auto"),
        ({"units": "mm"}, "--units mm: 2 of 2 cases are 2-D image files"),  # PNGs store no spacing
        ({"split": "train"}, "unknown split 'train'"),
        ({"modes": ["boxes"]}, "unknown evaluation mode"),
    ],
)
def test_evaluate_refuses_bad_arguments(scored_run, kwargs, message) -> None:
    from medadapt.evaluation.evaluate import evaluate_run

    with pytest.raises(MedAdaptError, match=message):
        evaluate_run(scored_run, **kwargs)


def test_evaluate_command_metrics_dice_prints_no_hd95(scored_run, tmp_path, capsys) -> None:
    from medadapt.cli import main

    code = main(["evaluate", str(scored_run), "--split", "test", "--modes", "automatic", "--metrics", "dice",
                 "--limit", "1", "--out", str(tmp_path / "ev")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "HD95" not in captured.out and "disc" in captured.out and "square" in captured.out
    rows = {tuple(line.split()[:2]): line for line in captured.out.splitlines() if line.strip()}
    assert "±" not in rows[("automatic", "disc")] + rows[("automatic", "square")]  # one case: no std
    assert "±" in rows[("automatic", "mean")]  # two classes: the spread of their means


def test_a_data_config_with_the_classes_in_another_order_is_refused(scored_run, tmp_path) -> None:
    import yaml

    from medadapt.evaluation.evaluate import evaluate_run

    data = yaml.safe_load((scored_run / "config.yaml").read_text())["data"]
    names = data["classes"]
    (tmp_path / "swapped.yaml").write_text(yaml.safe_dump({"data": {**data, "classes": names[::-1]}}))
    with pytest.raises(MedAdaptError, match="in another order"):
        evaluate_run(scored_run, data=tmp_path / "swapped.yaml", split="test", out_dir=tmp_path / "ev")


@pytest.mark.parametrize("field, value", [("version", "2"), ("cleanup", "largest")])
def test_a_hand_edited_report_is_one_line(tmp_path, field, value) -> None:
    rep = EvaluationReport(hd95_unit="px", metrics=("dice",))
    rep.add_case("a", "automatic", {1: "x"}, {1: 0.5}, {1: math.nan}, None)
    path = rep.to_json(tmp_path / "r.json")
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, field: value}))
    with pytest.raises(MedAdaptError, match="malformed evaluation report"):
        EvaluationReport.from_json(path)
