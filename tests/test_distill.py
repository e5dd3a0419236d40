"""Weak-to-strong distillation: the student learns from the foundation model's pseudo-labels, is saved in
the run folder, answers automatic predictions, and its training resumes exactly."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_run, two_class_dataset

from medadapt.core.dihedral import dihedral, undo_dihedral
from medadapt.core.errors import MedAdaptError
from medadapt.inference import Segmenter
from medadapt.recipes import config_from_dict, distill, finetune, load_config
from medadapt.ssl import DistillConfig, StudentTrainer, label_slice, load_pseudo_labels, slice_bank
from medadapt.student import Student, StudentConfig, build_network, has_student, load_student, save_student

TINY_STUDENT = {"channels": [4, 8, 16], "size": 64, "res_units": 1}
QUIET = {"log": lambda m: None}


def _tiny_distill(run, *overrides, resume=False):
    """Distil the tiny run with a tiny student (seconds); its config gains a distill section via overrides."""
    base = ["distill.student.channels=[4,8,16]", "distill.student.size=64", "distill.student.res_units=1",
            "distill.iterations=6", "distill.val_every=3", "distill.batch_size=2", "distill.unlabeled_batch_size=2",
            "distill.tta=false"]
    return distill(run, [*base, *overrides], resume=resume, **QUIET)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A tiny-SAM run on two-class images (labelled 0-3, val 4-5, unlabelled 6-9), distilled."""
    tmp = tmp_path_factory.mktemp("distill")
    root = two_class_dataset(tmp / "data", n=10)
    run = tiny_run(root, tmp / "runs", labeled=["000", "001", "002", "003"], val=["004", "005"])
    cfg = (run / "config.yaml").read_text().replace("  val:", "  unlabeled: ['006', '007', '008', '009']\n  val:", 1)
    (run / "config.yaml").write_text(cfg)
    _tiny_distill(run)
    return run


# --------------------------------------------------------------------------- configs
def test_config_sections_refuse_typos_and_ranges():
    with pytest.raises(MedAdaptError, match="studnet"):
        config_from_dict({"data": {"root": "x", "classes": [1]}, "distill": {"studnet": {}}})
    with pytest.raises(MedAdaptError, match=r"distill\.student\.size: 100 is out of range"):
        DistillConfig(student={"size": 100})
    with pytest.raises(MedAdaptError, match=r"distill\.student\.network"):
        StudentConfig(network="vnet")
    with pytest.raises(MedAdaptError, match=r"distill\.threshold"):
        DistillConfig(threshold=1.5)
    with pytest.raises(MedAdaptError, match=r"distill\.iterations"):
        DistillConfig(iterations=0)
    with pytest.raises(MedAdaptError, match="multiple of 32"):  # five halvings of 48 do not come out even
        StudentConfig(channels=[4, 8, 16, 32, 64, 128], size=48)


@pytest.mark.parametrize("network", ["unet", "segresnet", "dynunet"])
def test_every_network_maps_a_stack_to_class_scores_at_its_size(network):
    cfg = StudentConfig(network=network, channels=[4, 8, 16], size=32, context=1)
    net = build_network(cfg, num_classes=2).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32)
    student = Student(cfg, ["a", "b"], [1, 2], network=net)
    planes = [np.random.default_rng(k).random((40, 50)).astype(np.float32) for k in range(3)]
    probs = student.predict_planes(planes)
    assert len(probs) == 3 and probs[0].shape == (3, 40, 50)
    assert np.allclose(probs[1].sum(0), 1.0, atol=1e-4)


def test_undo_dihedral_inverts_each_of_the_8_views():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    views = [dihedral(x, k) for k in range(8)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8  # 8 different views of a generic grid
    for k, v in enumerate(views):
        assert torch.equal(undo_dihedral(v, k), x)
    with pytest.raises(ValueError, match="0..7"):
        undo_dihedral(x, 8)


def test_student_tta_averages_its_views_turned_back():
    """With ``dihedral`` the answer to a turned slice is the turned answer (the 8 views are averaged, each
    turned back); ``flip`` and ``none`` are not turn-equivariant for a network that is not."""
    torch.manual_seed(0)
    cfg = StudentConfig(channels=[4, 8, 16], size=32, res_units=1)
    student = Student(cfg, ["a", "b"], [1, 2])
    img = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    turned = np.ascontiguousarray(np.rot90(img))
    answers = {}
    for tta in ("none", "flip", "dihedral"):
        student.tta = tta
        p, q = student.predict_planes([img])[0], student.predict_planes([turned])[0]
        answers[tta] = p
        assert np.allclose(p.sum(0), 1.0, atol=1e-5)
        equivariant = np.allclose(np.rot90(p, axes=(1, 2)), q, atol=1e-5)
        assert equivariant == (tta == "dihedral"), tta
    assert not np.allclose(answers["none"], answers["flip"]) and not np.allclose(answers["flip"], answers["dihedral"])
    with pytest.raises(MedAdaptError, match="none | flip | dihedral"):
        student.tta = "rot"
    with pytest.raises(MedAdaptError, match="tta"):
        StudentConfig(tta="eight")


# --------------------------------------------------------------------------- files
def test_student_round_trip_and_refusals(tmp_path):
    cfg = StudentConfig(channels=[4, 8, 16], size=32, res_units=1)
    student = Student(cfg, ["disc"], [1])
    save_student(student, tmp_path / "s", metadata={"seed": 3})
    back = load_student(tmp_path / "s")
    img = np.random.default_rng(0).random((30, 30)).astype(np.float32)
    assert np.array_equal(back.predict_planes([img])[0], student.predict_planes([img])[0])
    assert back.info["seed"] == 3 and back.class_names == ["disc"] and back.tta == "flip"
    student.tta = "dihedral"
    save_student(student, tmp_path / "d8")
    assert load_student(tmp_path / "d8").tta == "dihedral"
    desc = json.loads((tmp_path / "d8" / "student.json").read_text())
    del desc["config"]["tta"]  # a student saved before test-time augmentation was a setting: the flip it used
    (tmp_path / "d8" / "student.json").write_text(json.dumps(desc))
    assert load_student(tmp_path / "d8").tta == "flip"
    save_student(student, tmp_path / "mixed")
    save_student(Student(cfg, ["disc"], [1]), tmp_path / "other")  # the same network, other weights
    shutil.copy(tmp_path / "other" / "student.safetensors", tmp_path / "mixed" / "student.safetensors")
    with pytest.raises(MedAdaptError, match="not the weights file student.json was saved with"):
        load_student(tmp_path / "mixed")
    desc = json.loads((tmp_path / "s" / "student.json").read_text())
    desc["config"]["channels"] = [8, 16, 32]
    (tmp_path / "s" / "student.json").write_text(json.dumps(desc))
    with pytest.raises(MedAdaptError, match="does not fit the network"):
        load_student(tmp_path / "s")
    (tmp_path / "s" / "student.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(MedAdaptError, match="not a medadapt student"):
        load_student(tmp_path / "s")
    import safetensors.torch

    def fail(*args, **kwargs):
        raise OSError("disk full")

    save_student(student, tmp_path / "s")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(safetensors.torch, "save_file", fail)
        with pytest.raises(MedAdaptError, match="could not write.*disk full"):
            save_student(student, tmp_path / "s")
    assert not has_student(tmp_path / "s")  # weights not replaced: the old description is gone too


# --------------------------------------------------------------------------- pseudo-labels
def test_pseudo_labels_follow_the_answer_with_a_confidence(tiny_sam, tmp_path):
    run = tiny_run(two_class_dataset(tmp_path / "d", n=6), tmp_path / "r", labeled=["000", "001"], val=["002"])
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=run, device="cpu")
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32) * 255
    label, conf = label_slice(seg, img, refine=False, tta=False)
    seg.set_image(img)
    auto = seg.predict()
    expect = np.zeros(img.shape, np.uint8)
    for k, m in enumerate(auto.masks):
        expect[m] = k + 1
    assert np.array_equal(label, expect)
    assert conf.min() >= 0.5 - 1e-6 and conf.max() <= 1.0
    label2, conf2 = label_slice(seg, img, refine=False, tta=True)
    assert label2.shape == label.shape and not np.array_equal(conf2, conf)  # the mirrored view is averaged in


def test_run_folder_holds_pseudo_labels_state_log_and_student(distilled):
    files = sorted((distilled / "distill" / "pseudo").glob("*.npz"))
    assert [f.stem for f in files] == ["006", "007", "008", "009"]
    z = load_pseudo_labels(files[0])
    assert z["image"].shape == z["label"].shape == z["confidence"].shape
    assert set(np.unique(z["label"])) <= {0, 1, 2}
    log = (distilled / "distill" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 3 and "val_dice_ema" in log[0]
    info = json.loads((distilled / "student" / "student.json").read_text())
    assert info["steps"] == 6 and info["class_names"] == ["disc", "square"]


def test_distill_refuses_to_overwrite_or_resume_with_other_settings(distilled):
    with pytest.raises(MedAdaptError, match="--resume"):
        _tiny_distill(distilled)
    with pytest.raises(MedAdaptError, match="other distill settings.*lr"):
        distill(distilled, ["distill.lr=0.5", "distill.student.channels=[4,8,16]", "distill.student.size=64",
                            "distill.student.res_units=1", "distill.iterations=6", "distill.val_every=3",
                            "distill.batch_size=2", "distill.unlabeled_batch_size=2", "distill.tta=false"],
                resume=True, **QUIET)
    with pytest.raises(MedAdaptError, match="only the distill section"):
        distill(distilled, ["train.epochs=3"], **QUIET)
    with pytest.raises(MedAdaptError, match="not a run folder"):
        distill(distilled / "student", **QUIET)


def test_distill_unlabeled_takes_all_its_cases_whatever_the_loops_limit(distilled, tmp_path):
    """``data.limit_unlabeled`` sizes the semi-supervised loop; the cases ``distill.unlabeled`` names are all
    pseudo-labelled."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(distilled / "adapter", run / "adapter")
    (run / "config.yaml").write_text(
        (distilled / "config.yaml").read_text().replace("data:\n", "data:\n  limit_unlabeled: 1\n", 1))
    _tiny_distill(run, "distill.iterations=2", "distill.val_every=2", "distill.unlabeled=['006','007','008','009']")
    assert sorted(p.stem for p in (run / "distill" / "pseudo").glob("*.npz")) == ["006", "007", "008", "009"]


def test_a_stray_file_beside_the_adapter_changes_nothing_and_a_reordered_config_is_refused(distilled, tmp_path):
    run = shutil.copytree(distilled, tmp_path / "run")
    (run / "adapter" / ".DS_Store").write_bytes(b"\0\1")  # a file browser's
    assert Segmenter.from_pretrained("tiny_sam_vit", adapter=run, device="cpu").student is not None
    shutil.rmtree(run / "distill")
    shutil.rmtree(run / "student")
    cfg = (run / "config.yaml").read_text()
    assert "classes: [disc, square]" in cfg or "- disc" in cfg
    reordered = cfg.replace("classes: [disc, square]", "classes: [square, disc]") if "classes: [disc, square]" in cfg \
        else cfg.replace("- disc\n  - square", "- square\n  - disc")
    (run / "config.yaml").write_text(reordered)
    with pytest.raises(MedAdaptError, match="in another order"):  # labelled targets would disagree with the labels
        _tiny_distill(run)


def test_refusals_that_keep_a_student_true_to_its_adapter(distilled, tmp_path):
    run = shutil.copytree(distilled, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")  # no checkpoint: a new fine-tuning there is not a resume
    with pytest.raises(MedAdaptError, match="holds the student of an earlier run"):
        finetune(load_config(run / "config.yaml", [f"output={tmp_path}", "name=run"]), **QUIET)
    with open(run / "adapter" / "adapter.json", "a") as fh:  # the fine-tuning went on: another adapter
        fh.write("\n")
    with pytest.raises(MedAdaptError, match="adapter .* changed after this distillation began"):
        _tiny_distill(run, resume=True)
    # nor does the finished student answer for the new adapter: loading the run says so
    with pytest.raises(MedAdaptError, match="distilled from an earlier adapter"):
        Segmenter.from_pretrained("tiny_sam_vit", adapter=run)
    assert Segmenter.from_pretrained("tiny_sam_vit", adapter=run, student=False).student is None
    # another adapter file in the run folder is not the student's adapter either
    for ext in (".safetensors", ".json"):
        shutil.copy(run / "adapter" / f"adapter{ext}", run / f"adapter_continued{ext}")
    with pytest.raises(MedAdaptError, match="is not the one .* was distilled from"):
        Segmenter.from_pretrained("tiny_sam_vit", adapter=run / "adapter_continued.safetensors")
    for ext in (".safetensors", ".json"):  # a copy of the student's own adapter, under another name, is it
        shutil.copy(distilled / "adapter" / f"adapter{ext}", run / f"best{ext}")
    assert Segmenter.from_pretrained("tiny_sam_vit", adapter=run / "best.safetensors").student is not None
    shutil.rmtree(run / "distill")
    with pytest.raises(MedAdaptError, match="distill.unlabeled here"):
        _tiny_distill(run, "distill.unlabeled=['004']")  # a val case: refused before anything is written
    assert not (run / "distill" / "settings.json").exists()
    cfg = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(cfg.replace("data:\n", "data:\n  scribbles: simulate\n", 1))
    with pytest.raises(MedAdaptError, match="trained from scribbles"):
        distill(run, **QUIET)


# --------------------------------------------------------------------------- predictions
def test_segmenter_answers_automatic_mode_with_the_student_and_prompts_with_the_decoder(distilled):
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=distilled, device="cpu")
    plain = Segmenter.from_pretrained("tiny_sam_vit", adapter=distilled, device="cpu", student=False)
    assert seg.student is not None and plain.student is None
    img = np.random.default_rng(1).random((64, 64)).astype(np.float32) * 255
    seg.set_image(img)
    assert seg._embedding is None  # a student answer needs no image encoding
    auto = seg.predict()
    probs = seg.student.predict_planes([img])[0]
    for k, m in enumerate(auto.masks):
        assert np.array_equal(m, probs.argmax(0) == k + 1)
    assert auto.labels == ["disc", "square"] and auto.label_values == [1, 2]
    only = seg.predict(classes=["square"])
    assert only.labels == ["square"] and np.array_equal(only.masks[0], auto.masks[1])
    plain.set_image(img)
    box = [[10, 10, 40, 40]]
    assert np.array_equal(seg.predict(boxes=box).masks, plain.predict(boxes=box).masks)
    refined = seg.predict(refine=True)
    assert refined.masks.shape == auto.masks.shape and not (refined.masks.sum(0) > 1).any()


def test_predict_volume_with_the_student_matches_its_slices(distilled):
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=distilled, device="cpu")
    rng = np.random.default_rng(2)
    vol = (rng.random((64, 64, 3)) * 255).astype(np.float32)
    vol[:, :, 2] = 7.0  # a constant (padding) slice stays background
    out = seg.predict_volume(vol, axis=2)
    assert out.shape == vol.shape and not out[:, :, 2].any()
    from medadapt.io.imaging import display_orientation, volume_slice

    plane = volume_slice(vol, 0, 2)
    seg.set_image(plane)
    lab = np.zeros(plane.shape, np.uint8)
    for m, v in zip(seg.predict().masks, [1, 2]):
        lab[m] = v
    assert np.array_equal(out[:, :, 0], display_orientation(lab))
    # One class asked for: the same pixels in 2-D and in a volume (a class left out does not hand its pixels
    # to the one asked for), with or without self-prompting.
    one = seg.predict(classes=["disc"]).masks[0]
    for refine in (False, True):
        sub = seg.predict_volume(vol, axis=2, classes=["disc"], refine=refine)[:, :, 0]
        assert np.array_equal(sub, display_orientation(one).astype(sub.dtype))


def test_a_25d_students_refined_answers_read_each_slice_with_its_neighbours(distilled, monkeypatch):
    """predict_volume(refine=True) and evaluate's self-prompted mode refine the answers a 2.5-D student gives
    with each slice's neighbours, the ones automatic mode gives: with no decoder answer accepted, the refined
    maps are the automatic ones, though the student answers a slice alone differently."""
    from medadapt.evaluation.evaluate import _predict_slices
    from medadapt.inference import student_answers

    real = student_answers.refine_student
    monkeypatch.setattr(student_answers, "refine_student",
                        lambda seg, pred, probs, idx, min_iou=0.5: real(seg, pred, probs, idx, min_iou=2.0))
    torch.manual_seed(0)
    student = Student(StudentConfig(**{**TINY_STUDENT, "context": 1}), ["disc", "square"], [1, 2])
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=distilled, device="cpu", student=False)
    seg.set_student(student)
    rng = np.random.default_rng(3)
    vol = (rng.random((5, 64, 64)) * 255).astype(np.float32)
    auto = seg.predict_volume(vol, axis=0)
    assert len(np.unique(auto)) > 1
    assert np.array_equal(seg.predict_volume(vol, axis=0, refine=True), auto)
    planes = list(vol)
    out = _predict_slices(seg, planes, [np.zeros((64, 64), np.int64)] * 5, [1, 2], ["automatic", "self-prompted"])
    assert np.array_equal(out["self-prompted"], out["automatic"])
    single = np.stack([student.predict_planes([p])[0].argmax(0) for p in planes])
    assert not np.array_equal(single, out["automatic"])  # the neighbours matter to this student
    from medadapt.io.imaging import volume_slice

    seg.set_volume(vol, axis=0)  # a plane shown from a volume is answered with its real neighbours
    for k in range(5):
        seg.show_plane(seg.volume, k)
        pred, shown = seg.predict(), np.zeros((64, 64), np.uint8)
        for m, v in zip(pred.masks, pred.label_values):
            shown[m] = v
        assert np.array_equal(shown, volume_slice(auto, k, 0))
    seg.reset_volume()
    seg.set_image(planes[2])
    with pytest.warns(UserWarning, match="reads 1 neighbouring slice"):  # a lone image: said, not hidden
        seg.predict()


def test_a_student_for_other_classes_is_refused(distilled, tmp_path):
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=distilled, device="cpu", student=False)
    other = Student(StudentConfig(**TINY_STUDENT), ["liver"], [1])
    with pytest.raises(MedAdaptError, match="answers classes"):
        seg.set_student(other)


# --------------------------------------------------------------------------- training
def _banks(n=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    vols = []
    for _ in range(n):
        img = rng.random((2, 40, 40)).astype(np.float32)
        lab = (img > 0.7).astype(np.uint8)
        vols.append((img, lab, rng.random((2, 40, 40)).astype(np.float32)))
    cfg = StudentConfig(channels=[4, 8], size=size, res_units=0)
    return cfg, slice_bank([(i, l, None) for i, l, _ in vols[:2]], cfg), slice_bank(vols[2:], cfg)


def test_student_training_resumes_exactly(tmp_path):
    scfg, lab, pse = _banks()
    cfg = DistillConfig(student=scfg, iterations=6, val_every=3, batch_size=2, unlabeled_batch_size=2,
                        threshold=0.3, consistency_threshold=0.3)
    whole = StudentTrainer(cfg, ["x"], [1], lab, pse, tmp_path / "a", seed=0, **QUIET)
    whole.run()
    first = StudentTrainer(cfg, ["x"], [1], lab, pse, tmp_path / "b", seed=0, **QUIET)
    while first.step < 3:
        first.train_step()
    first.save_state()
    torch.manual_seed(123)  # whatever ran in between must not matter
    second = StudentTrainer(cfg, ["x"], [1], lab, pse, tmp_path / "b", seed=0, **QUIET)
    second.load_state()
    second.run()
    for a, b in zip(whole.ema.state_dict().values(), second.ema.state_dict().values()):
        assert torch.equal(a, b)
    # killed after its last state was saved but before its log was written: the resumed run writes the log
    log = tmp_path / "b" / "log.csv"
    rows = log.read_text()
    log.unlink()
    third = StudentTrainer(cfg, ["x"], [1], lab, pse, tmp_path / "b", seed=0, **QUIET)
    third.load_state()
    third.run()
    assert log.read_text() == rows and rows.splitlines()[-1].startswith("6,")  # the last step's row
    (tmp_path / "b" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MedAdaptError, match="cannot resume"):
        StudentTrainer(cfg, ["x"], [1], lab, pse, tmp_path / "b", seed=0, **QUIET).load_state()
    torch.save({"step": 3}, tmp_path / "b" / "state.pt")
    with pytest.raises(MedAdaptError, match="does not fit this student"):
        StudentTrainer(cfg, ["x"], [1], lab, pse, tmp_path / "b", seed=0, **QUIET).load_state()


def test_bf16_autocast_trains_float32_weights_to_another_result(tmp_path):
    scfg, lab, pse = _banks()
    trained = {}
    for amp in ("off", "bf16"):
        cfg = DistillConfig(student=scfg, iterations=3, val_every=3, batch_size=2, unlabeled_batch_size=2, amp=amp)
        trained[amp] = StudentTrainer(cfg, ["x"], [1], lab, pse, tmp_path / amp, seed=0, **QUIET)
        trained[amp].run()
    assert trained["bf16"].amp and not trained["off"].amp
    assert all(p.dtype == torch.float32 for p in trained["bf16"].net.parameters())
    assert np.isfinite(trained["bf16"].history[-1]["loss"])
    pairs = zip(trained["off"].net.parameters(), trained["bf16"].net.parameters())
    assert any(not torch.equal(a, b) for a, b in pairs)  # the forward passes did run in bf16
    from medadapt.core.config import load_yaml

    raw = load_yaml("data: {root: x, classes: [1], unlabeled: [a]}\ndistill: {amp: off}")  # a bare off stays text
    assert config_from_dict(raw).distill.amp == "off"
    with pytest.raises(MedAdaptError, match=r"distill\.amp"):
        DistillConfig(amp="fp16")


def test_affine_views_move_images_labels_and_confidences_together(tmp_path):
    from medadapt.ssl.student_training import affine_batch

    gen = torch.Generator().manual_seed(0)
    label = torch.zeros(4, 32, 32, dtype=torch.uint8)
    label[:, 8:20, 10:24] = 1
    image = label[:, None].float() * 3 - 1  # the image is its label, so both must move alike
    conf = torch.full((4, 32, 32), 255, dtype=torch.uint8)
    same = affine_batch([image, label, conf], 0.0, 20.0, (0.85, 1.15), gen)
    assert all(torch.equal(a, b) for a, b in zip(same, [image, label, conf]))
    x, y, w = affine_batch([image, label, conf], 1.0, 30.0, (0.7, 0.8), gen)
    assert x.dtype == image.dtype and y.dtype == torch.uint8 and w.dtype == torch.uint8
    assert not torch.equal(y, label)  # rotated and zoomed out
    assert ((x[:, 0] > 0.5) == (y == 1)).float().mean() > 0.97
    assert (w == 0).any() and (w[:, 16, 16] == 255).all()  # from outside the slice: no confidence
    assert (y.flatten(1).sum(1) < label.flatten(1).sum(1)).all()  # zoomed out: the structure shrinks
    with pytest.raises(MedAdaptError, match=r"distill\.zoom"):
        DistillConfig(zoom=[1.2, 0.9])
    with pytest.raises(MedAdaptError, match=r"distill\.affine"):
        DistillConfig(affine=2.0)


def test_confidence_threshold_decides_which_pseudo_pixels_count(tmp_path):
    scfg, lab, pse = _banks()
    for threshold, expect in ((0.0, 1.0), (0.999, 0.0)):
        cfg = DistillConfig(student=scfg, iterations=1, batch_size=2, unlabeled_batch_size=4, threshold=threshold,
                            cutmix=0.0)
        parts = StudentTrainer(cfg, ["x"], [1], lab, pse, tmp_path / str(threshold), seed=0, **QUIET).train_step()
        assert parts["pseudo_share"] == pytest.approx(expect, abs=0.01)


def test_agreement_cuts_the_weight_of_pseudo_pixels_the_ema_teacher_labels_otherwise(tmp_path):
    scfg, lab, pse = _banks()
    share = {}
    for agreement in (0.0, 0.5, 1.0):  # the same seed: the same views, the same teacher, the same disagreement
        cfg = DistillConfig(student=scfg, iterations=1, batch_size=2, unlabeled_batch_size=4, threshold=0.0,
                            cutmix=0.0, rampup=0.0, agreement=agreement)
        trainer = StudentTrainer(cfg, ["x"], [1], lab, pse, tmp_path / str(agreement), seed=0, **QUIET)
        share[agreement] = trainer.train_step()["pseudo_share"]
    assert share[0.0] == pytest.approx(1.0)
    assert 0.0 < share[1.0] < 1.0  # an untrained teacher agrees with some pixels and not with others
    assert share[0.5] == pytest.approx(1 - 0.5 * (1 - share[1.0]), abs=1e-5)
    with pytest.raises(MedAdaptError, match=r"distill\.agreement"):
        DistillConfig(agreement=1.5)


def test_pseudo_decay_lowers_the_pseudo_label_weight_linearly_over_the_round(tmp_path):
    scfg, lab, pse = _banks()
    cfg = DistillConfig(student=scfg, iterations=4, batch_size=2, unlabeled_batch_size=2, pseudo_weight=2.0,
                        pseudo_decay=0.75)
    trainer = StudentTrainer(cfg, ["x"], [1], lab, pse, tmp_path, seed=0, **QUIET)
    weights = [trainer.train_step()["pseudo_weight"] for _ in range(4)]
    assert weights == pytest.approx([2.0, 1.625, 1.25, 0.875])
    with pytest.raises(MedAdaptError, match=r"distill\.pseudo_decay"):
        DistillConfig(pseudo_decay=-0.1)


# --------------------------------------------------------------------------- the mechanism
def test_student_learns_from_pseudo_labels(tmp_path, litemedsam_cache):
    """LiteMedSAM fine-tuned on 2 labelled images labels 14 images of a shifted domain; a student taught by
    those pseudo-labels beats the same student trained on the 2 labelled images alone (on 4 shifted val images)."""
    from medadapt.data.synthetic import shifted_ellipses, shifted_ellipses_config

    root = shifted_ellipses(tmp_path / "data", n_labeled=2, n=20, seed=0)
    raw = shifted_ellipses_config(root, tmp_path, seed=0, semi_supervised=False, n_labeled=2, n_val=4, n=20, epochs=3)
    raw["data"]["unlabeled"] = [f"{i:03d}" for i in range(6, 20)]
    raw["train"]["cache_views"] = 2
    raw["train"]["cache_dir"] = str(litemedsam_cache)
    raw["distill"] = {"student": {"channels": [8, 16, 32, 64], "size": 96, "res_units": 1}, "iterations": 120,
                      "val_every": 60, "batch_size": 4, "unlabeled_batch_size": 8, "tta": False}
    run = finetune(config_from_dict(raw), **QUIET)

    def last_val() -> float:
        rows = (run / "distill" / "log.csv").read_text().splitlines()
        return float(rows[-1].split(",")[rows[0].split(",").index("val_dice_ema")])

    taught = last_val()
    assert (run / "student" / "student.json").is_file()
    (run / "distill" / "state.pt").unlink()
    (run / "distill" / "settings.json").unlink()
    distill(run, ["distill.unlabeled_batch_size=0"], **QUIET)
    alone = last_val()
    assert taught > alone + 0.01, (taught, alone)


def test_refined_relabelling_gives_the_decoders_answer_to_the_students_boxes(distilled, tmp_path, monkeypatch):
    """relabel=refined: round 2's labels are the first student's masks self-prompted through the decoder (as
    predict(refine=True) answers them); a pixel keeps the student's confidence where the label is the student's
    own, and confidence 1 where the decoder changed it. The tiny decoder's answers never overlap the tiny
    student's masks by the IoU of 0.5 that a replacement needs, so this test lets every answer replace."""
    from medadapt.data import DataConfig, discover_cases
    from medadapt.inference import student_answers

    real = student_answers.refine_student
    calls = []

    def every_answer(seg, pred, probs, idx, min_iou=0.5):
        calls.append(1)
        return real(seg, pred, probs, idx, min_iou=0.0)

    monkeypatch.setattr(student_answers, "refine_student", every_answer)
    from medadapt.recipes import load_config
    from medadapt.ssl import student_label_stack

    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(distilled / "config.yaml", run / "config.yaml")
    shutil.copytree(distilled / "adapter", run / "adapter")
    shutil.copytree(distilled / "distill", run / "distill")  # a finished one-round distillation
    # relabel acts from round 2 on, so a one-round run resumes for more rounds with either
    _tiny_distill(run, "distill.rounds=2", "distill.relabel=refined", resume=True)
    assert calls  # round 2 relabelled through the decoder
    files = sorted((run / "distill" / "round2" / "pseudo").glob("*.npz"))
    assert [f.stem for f in files] == ["006", "007", "008", "009"]
    state = torch.load(run / "distill" / "state.pt", weights_only=True)
    net = build_network(StudentConfig(**TINY_STUDENT), 2)
    net.load_state_dict(state["ema"])
    first = Student(StudentConfig(**TINY_STUDENT), ["disc", "square"], [1, 2], network=net)
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=run, device="cpu", student=False)
    seg.set_student(first)
    data = DataConfig.from_dict(load_config(run / "config.yaml").data)
    images = {c.case_id: c for c in discover_cases(data)}
    agree, changed = [], 0
    for f in files:
        z = load_pseudo_labels(f)
        own, own_conf = student_label_stack(first, z["image"])
        same = z["label"] == own
        assert np.allclose(z["confidence"][same], np.round(own_conf[same] * 255) / 255, atol=1e-6)
        changed += int((~same).sum())
        assert np.all(z["confidence"][~same] == 1.0)  # where the decoder changed the student's answer
        from medadapt.data import load_volume_case

        planes, _ = load_volume_case(images[f.stem], data, with_labels=False)
        for k, plane in enumerate(planes):
            seg.set_image(plane)
            answer = seg.predict(refine=True)
            label = np.zeros(plane.shape[:2], np.uint8)
            for m, v in zip(answer.masks, answer.label_values):
                label[m] = [1, 2].index(v) + 1
            agree.append(float((label == z["label"][k]).mean()))
    assert min(agree) == 1.0, agree  # the labels are the refined answers
    assert changed > 0  # the decoder changed some of the student's pixels, so the relabelling is not the student's
    info = json.loads((run / "student" / "student.json").read_text())
    assert info["distill"]["relabel"] == "refined" and info["rounds"] == 2
    from medadapt.ssl.student_labels import relabel_cases

    with pytest.raises(MedAdaptError, match="the case of every pseudo-label file"):
        relabel_cases(first, files, tmp_path / "again", refiner=lambda: seg, cases=[images["000"], images["001"]], data=data)
    with pytest.raises(MedAdaptError, match="relabel.*student \\| refined"):
        DistillConfig(relabel="decoder")


def test_later_rounds_learn_from_the_previous_students_labels(distilled, tmp_path):
    """rounds=2: the first student relabels the unlabelled cases, and the second starts from it."""

    from medadapt.ssl import student_label_stack

    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(distilled / "config.yaml", run / "config.yaml")
    shutil.copytree(distilled / "adapter", run / "adapter")
    shutil.copytree(distilled / "distill" / "pseudo", run / "distill" / "pseudo")
    _tiny_distill(run, "distill.rounds=2")
    files = sorted((run / "distill" / "round2" / "pseudo").glob("*.npz"))
    assert [f.stem for f in files] == ["006", "007", "008", "009"]
    state = torch.load(run / "distill" / "state.pt", weights_only=True)
    assert state["step"] == 6  # round 1 finished; its EMA teacher labelled round 2's slices
    net = build_network(StudentConfig(**TINY_STUDENT), 2)
    net.load_state_dict(state["ema"])
    first = Student(StudentConfig(**TINY_STUDENT), ["disc", "square"], [1, 2], network=net)
    z = load_pseudo_labels(files[0])
    label, conf = student_label_stack(first, z["image"])
    assert np.array_equal(z["label"], label)
    assert np.allclose(z["confidence"], np.round(conf * 255) / 255, atol=1e-6)
    log = (run / "distill" / "round2" / "log.csv").read_text().splitlines()
    assert len(log) == 3 and "val_dice_ema" in log[0]
    info = json.loads((run / "student" / "student.json").read_text())
    assert info["rounds"] == 2 and info["steps"] == 6
    second = load_student(run / "student")
    fresh = build_network(StudentConfig(**TINY_STUDENT), 2)
    gap = lambda a, b: sum(float((x - y).abs().sum()) for x, y in zip(a.state_dict().values(),  # noqa: E731
                                                                       b.state_dict().values()))
    assert 0 < gap(second.network, net) < gap(fresh, net) / 5  # round 2 started from round 1's student
    # a round 2 interrupted before its first state: the resumed run keeps round 1 and the relabelled files
    stamp = {f.name: f.stat().st_mtime_ns for f in files}
    (run / "distill" / "round2" / "state.pt").unlink()
    shutil.rmtree(run / "student")
    _tiny_distill(run, "distill.rounds=2", resume=True)
    assert {f.name: f.stat().st_mtime_ns for f in files} == stamp
    again = load_student(run / "student")
    assert gap(again.network, second.network) == 0  # the same round 2 as the uninterrupted run
    # more rounds continue a finished run; fewer are refused
    _tiny_distill(run, "distill.rounds=3", resume=True)
    assert json.loads((run / "student" / "student.json").read_text())["rounds"] == 3
    assert (run / "distill" / "round3" / "log.csv").is_file()
    with pytest.raises(MedAdaptError, match="other distill settings.*rounds"):
        _tiny_distill(run, "distill.rounds=2", resume=True)


def test_compare_peer_goes_on_from_the_first_round_that_scores_higher_on_val(distilled, tmp_path):
    """compare_peer: round 1 is trained again without the foundation's labels, and the rounds go on from the EMA
    teacher that scores higher on val; with poisoned pseudo-labels (every pixel a square, fully confident) that is
    the one without them, and round 2 relabels from it and gives the labels no weight."""
    import yaml

    from medadapt.ssl import student_label_stack

    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(distilled / "config.yaml", run / "config.yaml")
    shutil.copytree(distilled / "adapter", run / "adapter")
    shutil.copytree(distilled / "distill" / "pseudo", run / "distill" / "pseudo")
    for f in (run / "distill" / "pseudo").glob("*.npz"):
        with np.load(f) as z:
            image, label, conf = z["image"], z["label"], z["confidence"]
        np.savez(f, image=image, label=np.full_like(label, 2), confidence=np.full_like(conf, 255))
    steps = ["distill.iterations=30", "distill.val_every=15", "distill.rounds=2", "distill.compare_peer=true"]
    _tiny_distill(run, *steps)
    rows = lambda p: list(csv.DictReader((p / "log.csv").read_text().splitlines()))  # noqa: E731
    with_labels, without = (float(rows(p)[-1]["val_dice_ema"]) for p in (run / "distill", run / "distill" / "peer"))
    info = json.loads((run / "student" / "student.json").read_text())
    assert info["first_round"] == {"foundation": with_labels, "peer": without, "chosen": "peer"}
    assert without > with_labels  # the poisoned labels cost the student with them
    peer_state = torch.load(run / "distill" / "peer" / "state.pt", weights_only=True)
    peer_net = build_network(StudentConfig(**TINY_STUDENT), 2)
    peer_net.load_state_dict(peer_state["ema"])
    peer = Student(StudentConfig(**TINY_STUDENT), ["disc", "square"], [1, 2], network=peer_net)
    z = load_pseudo_labels(run / "distill" / "round2" / "pseudo" / "006.npz")
    assert np.array_equal(z["label"], student_label_stack(peer, z["image"])[0])  # round 2 relabelled from the peer
    assert {row["pseudo_weight"] for row in rows(run / "distill" / "round2")} == {"0.0"}
    # the choice needs a validation split
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    del cfg["data"]["val"]
    bare = tmp_path / "bare"
    shutil.copytree(run / "adapter", bare / "adapter")
    (bare / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(MedAdaptError, match="compare_peer chooses on the validation split"):
        _tiny_distill(bare, *steps)


def test_distillation_carves_the_test_split_the_run_is_scored_on(tmp_path):
    """``distill.unlabeled`` listing other ids than the run's ``unlabeled`` must not regroup cases into other
    patients: the ``every``-carved test split is the run's, and none of its cases is distilled on."""
    import warnings

    import nibabel as nib

    from medadapt.data import DataConfig, discover_cases, split_cases
    from medadapt.ssl import distillation_splits

    root = tmp_path / "acdc"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for p in range(1, 13):
        for frame in ("frame01", "frame12"):
            nib.save(nib.Nifti1Image(rng.random((8, 8, 2)).astype(np.float32), np.eye(4)),
                     root / "imagesTr" / f"patient{p:03d}_{frame}_0000.nii.gz")
            nib.save(nib.Nifti1Image(np.ones((8, 8, 2), np.uint8), np.eye(4)),
                     root / "labelsTr" / f"patient{p:03d}_{frame}.nii.gz")
    data = DataConfig.from_dict({"root": str(root), "classes": [1], "labeled": ["patient001"], "val": ["patient002"],
                                 "test": {"split": "imagesTr", "exclude": ["patient001", "patient002"], "every": 3},
                                 "unlabeled": ["patient004"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # patients named nowhere: the frames' warning is tested in test_data
        run = split_cases(data, discover_cases(data))
        splits = distillation_splits(data, DistillConfig(unlabeled="rest:imagesTr"))
    test = {c.case_id for c in run["test"]}
    assert {c.case_id for c in splits["test"]} == test
    assert not test & {c.case_id for c in splits["unlabeled"]} and len(splits["unlabeled"]) > 2


def test_evaluate_scores_the_students_tta_asked_for_and_records_it(distilled, tmp_path):
    from medadapt.evaluation.evaluate import describe_evaluation, evaluate_run

    out = tmp_path / "eval"
    report = evaluate_run(distilled, split="val", modes=["automatic"], out_dir=out, student_tta="dihedral",
                          metrics=["dice"])
    assert report.settings["student"] and report.settings["student_tta"] == "dihedral"
    from medadapt.student import read_student_info

    assert report.settings["student_weights"] == read_student_info(distilled)["weights_sha256"]
    assert "dihedral test-time augmentation" in describe_evaluation(report.settings)
    with pytest.raises(MedAdaptError, match="student_tta: 'dihedral' there, 'flip' now"):
        evaluate_run(distilled, split="val", modes=["automatic"], out_dir=out, metrics=["dice"])
    with pytest.raises(MedAdaptError, match="--student-tta 'all'"):
        evaluate_run(distilled, split="val", modes=["automatic"], out_dir=out, student_tta="all")
    with pytest.warns(UserWarning, match="no distilled student answers here"):
        evaluate_run(distilled, split="val", modes=["automatic"], out_dir=tmp_path / "e3", metrics=["dice"],
                     student=False, student_tta="dihedral")
    plain = evaluate_run(distilled, split="val", modes=["automatic"], out_dir=tmp_path / "e2", metrics=["dice"],
                         student=False)
    assert plain.settings["student_tta"] is None and plain.settings["student_weights"] is None
    # another student's scores (an earlier round) are replaced without a refusal: more training, same settings
    saved = json.loads((out / "evaluation.json").read_text())
    saved["settings"]["student_weights"] = "0" * 64
    (out / "evaluation.json").write_text(json.dumps(saved))
    again = evaluate_run(distilled, split="val", modes=["automatic"], out_dir=out, student_tta="dihedral",
                         metrics=["dice"])
    assert again.settings["student_weights"] == report.settings["student_weights"]


def test_distill_run_takes_where_the_data_is_and_nothing_else_outside_its_section(distilled, tmp_path):
    with pytest.raises(MedAdaptError, match=r"only the distill section .*data\.root=\.\.\..*\['train.lr=0.1'\]"):
        distill(distilled, ["train.lr=0.1"])
    moved = tmp_path / "moved_data"
    with pytest.raises(MedAdaptError, match="moved_data"):  # taken as given: here, a folder that is not there
        _tiny_distill(distilled, f"data.root={moved}", resume=True)


def test_a_student_in_a_volume_reads_the_planes_as_the_adapter_was_trained_to_see_them(distilled):
    """An adapter trained with data.percentiles: the student answers each plane of a volume clipped as the
    decoder sees it, the same answer as the clipped plane given alone."""
    from medadapt.io.imaging import clip_percentiles, display_orientation, volume_slice

    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=distilled, device="cpu")
    seg.intensity = {"window": None, "percentiles": [20, 80]}  # as an adapter trained with them records
    vol = (np.random.default_rng(3).random((64, 64, 2)) * 255).astype(np.float32)
    out = seg.predict_volume(vol, axis=2)
    plane = clip_percentiles(volume_slice(vol, 0, 2), 20, 80)
    seg.set_image(plane)
    lab = np.zeros(plane.shape, np.uint8)
    for m, v in zip(seg.predict().masks, [1, 2]):
        lab[m] = v
    assert np.array_equal(out[:, :, 0], display_orientation(lab))
    seg.intensity = None
    assert not np.array_equal(seg.predict_volume(vol, axis=2), out)  # raw planes answer otherwise


def test_flip_tta_still_switches_the_mirrored_view():
    student = Student(StudentConfig(channels=[4, 8, 16], size=32, res_units=1), ["a"], [1])
    with pytest.warns(DeprecationWarning, match="Student.tta"):
        student.flip_tta = False
    assert student.tta == "none" and student.flip_tta is False


def test_an_evaluation_records_the_student_that_answered_also_for_a_run_copied_without_its_config(distilled,
                                                                                                   tmp_path):
    import yaml

    from medadapt.evaluation.evaluate import evaluate_run

    copy = tmp_path / "copy"
    shutil.copytree(distilled, copy, ignore=shutil.ignore_patterns("config.yaml", "eval_*", "distill"))
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"data": {"root": str(distilled.parent.parent / "data"), "layout": "folder",
                                             "classes": ["disc", "square"], "val": ["004", "005"]}}))
    report = evaluate_run(copy, data=data, split="val", modes=["automatic"], metrics=["dice"], out_dir=tmp_path / "e")
    assert report.settings["student"] and report.settings["student_tta"] == "flip"
    assert report.settings["student_weights"] == json.loads((copy / "student" / "student.json").read_text())[
        "weights_sha256"]
    # an evaluation written when text prompts were listed among the ground truth's is replaced, not refused
    saved = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    saved["settings"]["prompts_from_ground_truth"] = ["text:round thing"]
    (tmp_path / "e" / "evaluation.json").write_text(json.dumps(saved))
    evaluate_run(copy, data=data, split="val", modes=["automatic"], metrics=["dice"], out_dir=tmp_path / "e")
