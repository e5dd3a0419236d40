"""The command line: thin wrappers, real files, one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import disc_image
from PIL import Image

from medadapt.cli import main
from medadapt.io.imaging import load_mask


@pytest.fixture()
def disc_png(tmp_path):
    image, mask = disc_image()
    path = tmp_path / "disc.png"
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)
    return path, mask


def test_models_lists_backbones(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "litemedsam" in out and "256 px" in out and "sam_vit_h" in out and "1024 px" in out


def test_predict_writes_mask_and_overlay(disc_png, tmp_path, capsys):
    path, mask = disc_png
    out, ov = tmp_path / "out" / "mask.png", tmp_path / "overlay.png"
    code = main(["predict", str(path), "--box", "75", "45", "165", "135", "--out", str(out), "--overlay", str(ov)])
    assert code == 0, capsys.readouterr().err
    written = load_mask(out) > 0
    inter = (written & mask).sum()
    assert 2 * inter / (written.sum() + mask.sum()) > 0.9
    assert Image.open(ov).size == (240, 180)


def test_predict_several_boxes_writes_a_label_map_to_nifti(disc_png, tmp_path):
    path, _ = disc_png
    out = tmp_path / "labels.nii.gz"
    assert main(["predict", str(path), "--box", "75", "45", "165", "135", "--box", "0", "0", "60", "60",
                 "--point", "120", "90", "1", "--out", str(out)]) == 0
    labels = load_mask(out)
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 1).sum() > 1000


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "missing.png", "--box", "1", "1", "5", "5", "--out", "m.png"], "not found"),
        (["predict", "{img}", "--box", "1", "1", "1", "5", "--out", "{tmp}/m.png"], "zero or negative area"),
        (["predict", "{img}", "--point", "5", "5", "2", "--out", "{tmp}/m.png"], "0 (background)"),
        (["predict", "{img}", "--box", "1", "1", "5", "5", "--out", "{tmp}/m.jpg"], ".png, .nii or .nii.gz"),
        (["predict", "{img}", "--out", "{tmp}/m.png"], "at least one prompt"),
        (["predict", "{img}", "--box", "1", "1", "5", "5", "--refine", "--out", "{tmp}/m.png"], "--refine refines"),
        (["evaluate", "{tmp}", "--text", "LV cavity"], "--text takes TEXT=CLASS"),
        (["evaluate", "{tmp}", "--text", "LV cavity= "], "--text takes TEXT=CLASS"),
    ],
)
def test_user_errors_exit_2_with_one_line(disc_png, tmp_path, capsys, args, message):
    path, _ = disc_png
    args = [a.format(img=path, tmp=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medadapt: error:") and message in err and "\n" not in err


def test_text_class_pairs_split_at_the_last_equals_sign():
    from medadapt.cli import split_pair

    assert split_pair(" a=b = left ventricle ") == ("a=b", "left ventricle")


def test_installed_entry_point_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "medadapt", "predict", str(tmp_path / "nope.nii.gz"), "--slice", "3",
         "--box", "1", "1", "5", "5", "--out", str(tmp_path / "m.png")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "not found" in proc.stderr


def test_demo_segments_bundled_images(tmp_path, capsys):
    from medadapt.demo import run_demo

    rows = run_demo(out_dir=tmp_path / "demo", device="cpu", finetune=False)
    assert len(rows) >= 12
    assert np.mean([r["dice"] for r in rows]) > 0.8  # real pretrained weights on real images
    assert len(list((tmp_path / "demo").glob("*_overlay.png"))) == 10
    assert "mean Dice" in capsys.readouterr().out
