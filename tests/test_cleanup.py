"""Clean-up of automatic label maps: each class's largest 3-D component, holes filled slice by slice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medadapt.core.errors import MedAdaptError
from medadapt.inference import Segmenter, clean_labels, fill_holes, keep_largest
from medadapt.inference.cleanup import check_cleanup, fill_plane_holes


def test_each_class_keeps_its_largest_component_in_3d():
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[0:3, 1:5, 1:5] = 1  # the big class-1 block
    labels[3, 4, 4] = 1  # touches the block's corner diagonally across slices: the same component
    labels[1, 8, 8] = 1  # an island
    labels[0, 7:9, 0:2] = 2  # class 2: 4 voxels ...
    labels[3, 0, 9] = 2  # ... and 1
    out = keep_largest(labels)
    assert out[3, 4, 4] == 1 and out[1, 8, 8] == 0
    assert (out == 2).sum() == 4 and out[3, 0, 9] == 0
    assert (out[0:3, 1:5, 1:5] == 1).all()
    assert labels[1, 8, 8] == 1  # the input is left as it was
    assert np.array_equal(keep_largest(labels, values=[2]) == 1, labels == 1)  # only the classes named


def test_a_hole_takes_the_class_around_it_and_nested_classes_stay():
    plane = np.zeros((16, 16), np.uint8)
    plane[2:10, 2:10] = 2  # a myocardium ring ...
    plane[4:8, 4:8] = 3  # ... around a cavity
    plane[5, 5] = 0  # a hole in the cavity
    plane[2, 6] = 0  # a notch on the ring's outer edge: reaches the outside, not a hole
    plane[11:14, 11:14] = 1
    plane[12, 12] = 0  # one pixel enclosed by class 1
    plane[15, 0:2] = 1
    plane[14, 0] = 1  # (15, 0) is a corner of class 1 on the edge; (14, 1) is open to the rest
    out = fill_plane_holes(plane)
    assert out[5, 5] == 3  # not 2: the cavity is not given to the ring around it
    assert (out[4:8, 4:8] == 3).all()
    assert out[2, 6] == 0
    assert out[12, 12] == 1
    assert out[14, 1] == 0
    assert plane[5, 5] == 0


def test_holes_are_filled_slice_by_slice_along_the_axis():
    rng = np.random.default_rng(0)
    vol = (rng.random((9, 7, 5)) > 0.35).astype(np.uint8) * rng.integers(1, 3, (9, 7, 5)).astype(np.uint8)
    for axis in (0, 1, 2):
        want = np.stack([fill_plane_holes(np.take(vol, k, axis)) for k in range(vol.shape[axis])], axis=axis)
        assert np.array_equal(fill_holes(vol, axis), want)
    assert not np.array_equal(fill_holes(vol, 0), vol)  # the random map has holes to fill


def test_clean_labels_runs_largest_then_holes_and_refuses_unknown_steps():
    plane = np.zeros((9, 9), np.uint8)
    plane[1:8, 1:8] = 1
    plane[3:6, 3:6] = 0
    plane[4, 4] = 1  # an island inside the hole: removed first, then the hole is filled
    assert (clean_labels(plane, ["holes", "largest"])[1:8, 1:8] == 1).all()
    assert np.array_equal(clean_labels(plane, None), plane)
    assert check_cleanup("holes") == ("holes",) and check_cleanup(["holes", "largest"]) == ("largest", "holes")
    with pytest.raises(MedAdaptError, match="larggest"):
        check_cleanup(["larggest"])


def test_predict_volume_cleans_the_automatic_label_map_up():
    from test_depth_adapter import depth_model

    seg = Segmenter(depth_model(), device="cpu")
    vol = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32) * 100
    seg.set_volume(vol, axis=0)
    plain = seg.predict_volume()
    assert np.array_equal(seg.predict_volume(cleanup=["largest", "holes"]), clean_labels(plain, ["largest", "holes"]))
    with pytest.raises(MedAdaptError, match="cleanup= apply to automatic mode"):
        seg.predict_volume(boxes={2: [4, 4, 20, 20]}, cleanup=["largest"])
    with pytest.raises(MedAdaptError, match="unknown clean-up"):
        seg.predict_volume(cleanup=["biggest"])


def test_evaluate_records_the_cleanup_it_scored(tmp_path):
    from conftest import tiny_run, two_class_dataset

    from medadapt.evaluation.evaluate import evaluate_run
    from medadapt.evaluation.report import EvaluationReport

    root = two_class_dataset(tmp_path / "data", n=6)
    run = tiny_run(root, tmp_path / "runs", labeled=["000", "001", "002"], val=["003", "004", "005"])
    report = evaluate_run(run, modes=["automatic"], metrics=["dice"], cleanup=["largest"], out_dir=tmp_path / "ev")
    assert report.cleanup == ("largest",)
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["cleanup"] == ["largest"]
    assert EvaluationReport.from_json(tmp_path / "ev" / "evaluation.json").cleanup == ("largest",)
    with pytest.raises(MedAdaptError, match="--cleanup"):
        evaluate_run(run, modes=["automatic"], cleanup=["holes", "smooth"], out_dir=tmp_path / "ev2")


def test_the_command_line_refuses_a_cleanup_for_one_image_or_prompts(tmp_path, capsys):
    from PIL import Image

    from medadapt.cli import main

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--box", "1", "1", "8", "8", "--cleanup", "largest",
                 "--out", str(tmp_path / "m.png")]) == 2
    assert "--cleanup applies to a whole volume" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()
    assert main(["evaluate", "--cleanup", "largest,smooth", str(tmp_path)]) == 2  # a list, then the run
    assert "unknown clean-up ['smooth']" in capsys.readouterr().err


def test_predict_split_gives_the_predictions_evaluate_scores(tmp_path):
    from conftest import tiny_run, two_class_dataset

    from medadapt.evaluation import dice_per_class, predict_split
    from medadapt.evaluation.evaluate import evaluate_run

    root = two_class_dataset(tmp_path / "data", n=5)
    run = tiny_run(root, tmp_path / "runs", labeled=["000", "001", "002"], val=["003", "004"])
    cases = list(predict_split(run, "val", ["automatic", "box"]))
    assert [c.case_id for c in cases] == ["003", "004"]
    report = evaluate_run(run, modes=["automatic"], metrics=["dice"], out_dir=tmp_path / "ev")
    for case in cases:
        auto, box = case.predictions["automatic"], case.predictions["box"]
        assert auto.shape == case.label.shape and box.shape == (len(case.classes), *case.label.shape)
        dice = dice_per_class(auto, case.label, list(range(1, len(case.classes) + 1)))
        scored = {r.class_name: r.dice for r in report.results if r.case_id == case.case_id}
        assert scored == pytest.approx({n: dice[k + 1] for k, n in enumerate(case.classes)}, nan_ok=True)
    with pytest.raises(MedAdaptError, match="unknown evaluation mode"):
        next(predict_split(run, "val", ["scribble"]))
    with pytest.raises(MedAdaptError, match="split 'test' has no cases"):
        next(predict_split(run, "test"))
