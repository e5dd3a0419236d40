"""The semi-supervised loop: its parts, and one end-to-end run with the teacher checkpointed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medadapt.errors import MedAdaptError
from medadapt.ssl import (
    EMATeacher, box_masks, boxes_from_labels, confident_labels, drop_small_classes, paste, rampup,
)
from medadapt.training import config_from_dict


def test_confident_labels_follow_the_inference_rule_and_threshold():
    logits = torch.tensor([[[[4.0, -4.0]]], [[[-4.0, 0.3]]]]).permute(1, 0, 2, 3)  # B=1, C=2, 1x2 pixels
    labels, passed = confident_labels(logits, threshold=0.9)
    assert labels.tolist() == [[[1, 2]]]  # pixel 0: class 1 (logit 4); pixel 1: class 2 (0.3 > 0)
    assert passed.tolist() == [[[True, False]]]  # class 2 at 0.3 is not confident
    low = torch.full((1, 2, 1, 2), -5.0)
    labels, passed = confident_labels(low, threshold=0.9)
    assert labels.tolist() == [[[0, 0]]] and passed.all()  # confident background


def test_boxes_from_labels_and_small_classes():
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[0, 2:5, 3:9] = 1
    labels[1, 10:12, 1:2] = 2
    boxes, present = boxes_from_labels(labels, 2)
    assert present.tolist() == [[True, False], [False, True]]
    assert boxes[0, 0].tolist() == [3, 2, 8, 4] and boxes[1, 1].tolist() == [1, 10, 1, 11]
    passed = drop_small_classes(labels, torch.ones_like(labels, dtype=torch.bool), 2, min_pixels=5)
    assert passed[0].all() and not passed[1, 10:12, 1].any() and passed[1, 0, 0]


def test_pasted_boxes_cover_the_same_region_on_every_grid():
    """An embedding mix (64 grid) and its label mix (256 grid) must agree about which item is where."""
    boxes = torch.tensor([[0.25, 0.5, 0.75, 1.0]])
    small, big = box_masks(boxes, (64, 64)), box_masks(boxes, (256, 256))
    up = torch.nn.functional.interpolate(small[None], size=(256, 256), mode="nearest")[0]
    assert torch.equal(up, big)
    a, b = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    mixed = paste(a, b, boxes)
    assert mixed[0, :, 2:6, 4:].eq(1).all() and mixed.sum() == 3 * 16
    la, lb = torch.zeros(1, 8, 8, dtype=torch.long), torch.full((1, 8, 8), 2)
    assert paste(la, lb, boxes).sum() == 2 * 16


def test_ema_teacher_tracks_trainable_parameters_only():
    student = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    student[0].requires_grad_(False)
    teacher = EMATeacher(student, decay=0.5)
    with torch.no_grad():
        student[1].weight.add_(2.0)
        student[0].weight.add_(2.0)
    before = teacher.model[1].weight.clone()
    teacher.update()
    assert torch.allclose(teacher.model[1].weight, 0.5 * before + 0.5 * student[1].weight)
    assert not torch.allclose(teacher.model[0].weight, student[0].weight)  # frozen part is not averaged
    assert rampup(0, 5) < 0.01 and rampup(5, 5) == 1.0 and rampup(2.5, 5) == pytest.approx(np.exp(-1.25))


def test_config_errors():
    base = {"data": {"root": "x", "labeled": ["a"]}, "prompts": {"automatic": True}}
    with pytest.raises(MedAdaptError, match="needs unlabelled cases"):
        config_from_dict({**base, "ssl": {}})
    with pytest.raises(MedAdaptError, match="ssl.teacher"):
        config_from_dict({**base, "data": {**base["data"], "unlabeled": ["b"]}, "ssl": {"teacher": "best"}})
    with pytest.raises(MedAdaptError, match="unknown key"):
        config_from_dict({**base, "data": {**base["data"], "unlabeled": ["b"]}, "ssl": {"treshold": 0.5}})


def _discs(root, n):
    """n 64 x 64 images of a bright disc on a dark background, with 0/255 masks."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for i in range(n):
        cy, cx = rng.integers(20, 44, 2)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= 100
        Image.fromarray((np.where(m, 200, 50) + rng.normal(0, 5, (64, 64))).clip(0, 255).astype(np.uint8)).save(
            root / "images" / f"{i}.png")
        Image.fromarray((m * 255).astype(np.uint8)).save(root / "masks" / f"{i}.png")
    return root


def test_one_semi_supervised_step_runs_and_counts_pixels(tmp_path):
    """A tiny run on the tiny random ViT: the loop runs end to end, logs pass rate and pseudo-label Dice."""
    import csv

    from medadapt.training import finetune

    root = _discs(tmp_path / "d", 8)
    cfg = config_from_dict({
        "backbone": "tiny_sam_vit",
        "data": {"root": str(root), "layout": "folder", "classes": [1], "labeled": ["0", "1"], "val": ["2", "3"],
                 "unlabeled": ["4", "5", "6", "7"]},
        "prompts": {"automatic": True, "prompted": []},
        "train": {"epochs": 2, "batch_size": 2, "tensorboard": False},
        "ssl": {"unlabeled_batch_size": 2, "threshold": 0.5, "rampup_epochs": 0},
        "output": str(tmp_path), "name": "run",
    })
    run = finetune(cfg, log=lambda m: None)
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 2 and "pass_rate" in rows[0] and "pseudo_dice" in rows[0]
    assert 0.0 <= float(rows[-1]["pass_rate"]) <= 1.0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert "teacher" in state  # the EMA teacher is checkpointed with the student


def _tiny_automatic_model():
    from medadapt.adapters import AdapterConfig, AutomaticConfig, apply
    from medadapt.foundation import build_backbone

    model = build_backbone("tiny_sam_vit")
    apply(model, AdapterConfig(automatic=AutomaticConfig(["a", "b"], [1, 2])))
    return model.eval()


def test_refinement_agree_filters_and_replace_takes_the_box_answer():
    """agree keeps the labels and only drops pixels; replace labels a class with the decoder's box answer."""
    from medadapt.ssl import boxes_from_labels, refine_with_prompts

    torch.manual_seed(0)
    model = _tiny_automatic_model()
    s = model.processor.image_size // 16
    emb = torch.randn(2, model.embed_dim, s, s)
    m = model.processor.mask_size
    labels = torch.zeros(2, m, m, dtype=torch.long)
    labels[:, m // 4 : m // 2, m // 4 : m // 2] = 1
    labels[0, m // 2 : 3 * m // 4, m // 2 : 3 * m // 4] = 2
    passed = torch.ones_like(labels, dtype=torch.bool)
    with torch.no_grad():
        same, kept = refine_with_prompts(model, emb, labels, passed, 2, "agree")
        assert torch.equal(same, labels) and not (kept & ~passed).any()
        # the refined map, computed here from the same box prompts
        boxes, present = boxes_from_labels(labels, 2)
        sparse, dense = model.encode_prompts(boxes=boxes.reshape(4, 4) * (model.processor.image_size / m))
        low = model.decode(emb.repeat_interleave(2, dim=0), sparse, dense)[0][:, 0].reshape(2, 2, m, m)
        low = torch.where(present[:, :, None, None], low, torch.full_like(low, -1e4))
        refined = torch.where(low.max(1).values > 0, low.max(1).indices + 1, 0)
        assert torch.equal(kept, passed & (refined == labels))
        new, ok = refine_with_prompts(model, emb, labels, passed, 2, "replace", min_iou=1e-6)
    fg = ok & (new > 0)
    assert torch.equal(new[fg], refined[fg])  # counted foreground is the box answer
    assert not (new[1] == 2).any()  # a class absent from the coarse labels never appears
    assert torch.equal(ok | (new > 0), ok)  # every labelled pixel counts


def test_pretrained_refiner_is_frozen_while_the_decoder_trains(tmp_path):
    """refine_decoder: pretrained keeps a frozen copy of the decoder as it was before training."""
    from medadapt.training.finetune import Trainer

    root = _discs(tmp_path / "d", 6)
    cfg = config_from_dict({
        "backbone": "tiny_sam_vit",
        "data": {"root": str(root), "layout": "folder", "classes": [1], "labeled": ["0", "1"], "val": ["2"],
                 "unlabeled": ["3", "4", "5"]},
        "prompts": {"automatic": True, "prompted": []},
        "train": {"epochs": 1, "batch_size": 2, "lr": 1e-2, "tensorboard": False},
        "ssl": {"unlabeled_batch_size": 2, "threshold": 0.0, "rampup_epochs": 0, "refine": "replace",
                "refine_decoder": "pretrained"},
        "output": str(tmp_path), "name": "run",
    })
    tr = Trainer(cfg, tmp_path / "run", log=lambda m: None)
    before = {k: v.clone() for k, v in tr.model.mask_decoder.state_dict().items()}
    tr.encode_all()
    tr.train_epoch()
    after_model = tr.model.mask_decoder.state_dict()
    refiner = tr.ssl.refiner.state_dict()
    assert any(not torch.equal(after_model[k], before[k]) for k in before)  # the decoder trained
    assert all(torch.equal(refiner[k], before[k]) for k in before)  # the refiner did not move
    assert not any(p.requires_grad for p in tr.ssl.refiner.parameters())
    with pytest.raises(MedAdaptError, match="refine_decoder"):
        config_from_dict({**cfg.to_dict(), "ssl": {"refine_decoder": "mine"}})

