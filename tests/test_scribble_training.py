"""Training from scribbles: scribble label files, simulated strokes, the partial loss and its optional terms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_finetune import config, make_disc_dataset

from medadapt import MedAdaptError
from medadapt.data import DataConfig
from medadapt.data.datasets import remap_labels
from medadapt.foundation import build_backbone
from medadapt.recipes import build_trainer, config_from_dict, finetune
from medadapt.training.config import ScribbleLossConfig
from medadapt.training.scribbles import affinity_loss, pseudo_labels, stroke_clicks


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    return make_disc_dataset(tmp_path_factory.mktemp("discs"))


def test_scribble_files_read_unlabelled_pixels_as_minus_one():
    stored = np.array([[0, 255, 3], [255, 7, 0]])
    out = remap_labels(stored, [("a", 3), ("b", 7)], unlabeled=255)
    assert out.tolist() == [[0, -1, 1], [-1, 2, 0]]
    assert remap_labels(stored, [("a", 3), ("b", 7)]).tolist() == [[0, 0, 1], [0, 2, 0]]  # masks: 255 is no class
    with pytest.raises(MedAdaptError, match="data.scribbles must be one of"):
        DataConfig(root="x", classes=[1], scribbles="strokes")
    with pytest.raises(MedAdaptError, match="unlabeled_value"):
        DataConfig(root="x", classes=[1], scribbles="files", unlabeled_value="white")


def test_scribbles_refuse_ssl_and_bad_loss_settings(discs, tmp_path):
    raw = config(discs, tmp_path)
    raw["data"]["scribbles"] = "simulate"
    with pytest.raises(MedAdaptError, match="without ssl or distill"):
        config_from_dict({**raw, "ssl": {}, "data": {**raw["data"], "unlabeled": ["011"]}})
    with pytest.raises(MedAdaptError, match="scribble_loss.confidence"):
        config_from_dict({**raw, "scribble_loss": {"confidence": 1.5}})
    with pytest.raises(MedAdaptError, match="scribble_lose|unknown"):
        config_from_dict({**raw, "scribble_lose": {}})


def test_stroke_clicks_sample_only_scribbled_pixels():
    target = torch.full((16, 16), -1)
    target[4, 2:10] = 1
    target[12, 3:8] = 2
    target[0, :] = 0
    pts, lab = stroke_clicks(target, 1, 3, 4, np.random.default_rng(0))
    assert lab.tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert np.array_equal(pts, np.round(pts))  # pixel coordinates, as every other click (sample_points, the user's)
    rows, cols = pts[:, 1].astype(int), pts[:, 0].astype(int)
    assert (target[rows[:3], cols[:3]] == 1).all() and (target[rows[3:], cols[3:]] != 1).all()
    assert (target[rows, cols] >= 0).all()


def test_pseudo_labels_keep_strokes_and_leave_unscribbled_classes_out():
    model = build_backbone("tiny_sam_vit").eval()
    m = model.processor.mask_size
    target = torch.full((2, m, m), -1)
    target[0, 10:12, 10:30] = 1
    target[0, 40:42, 5:25] = 0
    target[1, 20:22, 20:40] = 2
    emb = model.encode(torch.zeros(2, 3, model.processor.image_size, model.processor.image_size))
    labels, conf = pseudo_labels(model, emb, target, 2, ScribbleLossConfig(pseudo_weight=1.0), np.random.default_rng(0))
    scribbled = target >= 0
    assert torch.equal(labels[scribbled], target[scribbled]) and bool((conf[scribbled] == 1).all())
    assert not bool((labels[0] == 2).any()) and not bool((labels[1] == 1).any())  # no stroke there: absent
    assert float(conf.min()) >= 0 and float(conf.max()) <= 1


def test_affinity_prefers_masks_that_follow_intensity_edges():
    image = torch.zeros(1, 32, 32)
    image[:, :, 16:] = 1.0
    follows = torch.full((1, 1, 32, 32), -8.0)
    follows[..., 16:] = 8.0
    crosses = torch.full((1, 1, 32, 32), -8.0)
    crosses[..., 8:24] = 8.0  # its edges cut through flat regions
    assert affinity_loss(follows, image, 0.3) < affinity_loss(crosses, image, 0.3)


def test_scribble_label_files_train_from_strokes_only(tmp_path):
    """``scribbles: files``: the trainer's targets hold -1 where the files hold the unlabelled value, and a
    run trains from them."""
    root = tmp_path / "data"
    make_disc_dataset(root, n=6, size=64)
    for path in sorted((root / "masks").glob("*.png")):
        mask = np.asarray(Image.open(path)) > 0
        strokes = np.full(mask.shape, 255, np.uint8)
        ys, xs = np.nonzero(mask)
        cy, cx = int(ys.mean()), int(xs.mean())
        strokes[cy, cx - 4 : cx + 5] = 1  # a short stroke through the disc
        strokes[2, 2:30] = 0  # and one on the background
        Image.fromarray(strokes).save(path)
    raw = config(root, tmp_path / "runs", epochs=1)
    raw["data"].update(scribbles="files", labeled=[f"{i:03d}" for i in range(4)], val=["004", "005"])
    trainer = build_trainer(config_from_dict(raw), tmp_path / "runs" / "t", log=lambda m: None)
    targets = torch.stack([s.target for s in trainer.train_samples])
    assert (targets == -1).float().mean() > 0.9 and (targets == 1).any() and (targets == 0).any()
    loss = trainer.loss(list(range(len(trainer.train_samples))))
    assert torch.isfinite(loss) and loss.requires_grad


def test_training_from_simulated_scribbles_learns_the_discs(discs, tmp_path, litemedsam_cache):
    """Real LiteMedSAM: strokes simulated from the masks (about 2% of the pixels) train an automatic model
    that segments whole discs on the validation images."""
    raw = config(discs, tmp_path, "litemedsam", epochs=5, lr=3e-4, cache_dir=str(litemedsam_cache))
    raw["data"]["scribbles"] = "simulate"
    run = finetune(config_from_dict(raw), log=lambda m: None)
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert history[-1]["val_dice"] > 0.8, history


def test_simulated_background_strokes_reach_away_from_the_objects():
    from scipy import ndimage

    from medadapt.prompts.scribbles import simulate_scribble_labels

    labels = np.zeros((96, 96), np.int64)
    labels[40:56, 40:56] = 1
    far = ndimage.distance_transform_edt(labels == 0) > 20
    near_only = simulate_scribble_labels(labels, np.random.default_rng(0))
    with_background = simulate_scribble_labels(labels, np.random.default_rng(0), background=2)
    assert not ((near_only == 0) & far).any()
    assert ((with_background == 0) & far).sum() > 30
    assert (with_background[labels == 1] != 0).all() and (with_background[labels == 0] != 1).all()


def test_padding_and_outside_pixels_are_unmarked_in_scribbles_but_background_in_masks():
    from medadapt.training.augment import random_view
    from medadapt.training.samples import to_model_frame

    model = build_backbone("tiny_sam_vit")
    proc = model.processor
    _, meta = proc.preprocess(np.zeros((32, 64), np.float32))  # wide: the bottom of the square is padding
    strokes = np.full((32, 64), -1)
    strokes[10, 5:40] = 1
    mask = (strokes == 1).astype(np.int64)
    sparse = to_model_frame(strokes, meta, proc.image_size, proc.mask_size)
    dense = to_model_frame(mask, meta, proc.image_size, proc.mask_size)
    bottom = proc.mask_size * 3 // 4  # inside the padded half
    assert (sparse[bottom:] == -1).all() and (dense[bottom:] == 0).all() and (sparse == 1).any()
    image = np.random.default_rng(0).random((32, 64)).astype(np.float32)
    _, view = random_view(image, strokes, np.random.default_rng(1), rotate_deg=30, shift=0.2)
    assert set(np.unique(view)) <= {-1, 1} and (view == -1).mean() > 0.9  # nothing became a background stroke


def test_thin_strokes_on_a_large_image_reach_the_decoder_grid_and_a_class_stroke_beats_a_background_one():
    from medadapt.training.samples import to_model_frame

    proc = build_backbone("tiny_litemedsam").processor  # input 256, grid 256: a 1024 image shrinks 4x at once
    _, meta = proc.preprocess(np.zeros((1024, 1024), np.float32))
    strokes = np.full((1024, 1024), -1)
    strokes[101:104, 100:900] = 1  # a 3-pixel stroke between the rows nearest sampling takes
    strokes[202, 100:900] = 2  # a 1-pixel class stroke ...
    strokes[203, 100:900] = 0  # ... beside a background stroke, in the same grid cells
    grid = to_model_frame(strokes, meta, proc.image_size, proc.mask_size)
    assert (grid == 1).sum() >= 190 and (grid == 2).sum() >= 190


def test_pseudo_label_and_affinity_terms_train_end_to_end(tmp_path):
    """The optional terms (pseudo-labels gated by agreement with the automatic head, affinity) run a whole
    epoch on the tiny model and give a finite loss."""
    make_disc_dataset(tmp_path / "data", n=12, size=64)
    raw = config(tmp_path / "data", tmp_path / "runs", epochs=1)
    raw["data"]["scribbles"] = "simulate"
    raw["scribble_loss"] = {"pseudo_weight": 1.0, "affinity_weight": 0.5, "ramp_epochs": 0}
    run = finetune(config_from_dict(raw), log=lambda m: None)
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert len(history) == 1 and np.isfinite(history[0]["loss"]) and history[0]["loss"] > 0
