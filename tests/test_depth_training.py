"""Training a depth adapter from a recipe: every training slice comes with its neighbours' embeddings,
augmented views move a slice and its neighbours together, and the adapter learns."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import with_changes
from safetensors.torch import load_file

from medadapt import MedAdaptError
from medadapt.data import Slice2D
from medadapt.foundation import build_backbone
from medadapt.recipes import build_trainer, config_from_dict, finetune
from medadapt.training.depth import link_neighbours, samples_with_neighbours
from medadapt.training.samples import prepare

QUIET = {"log": lambda m: None}


def _slices(images, case="c", labelled=None):
    labelled = range(len(images)) if labelled is None else labelled
    return [Slice2D(im, (im > 0.5).astype(np.int64), case, case, k, "x") for k, im in enumerate(images)
            if k in labelled]


def test_a_view_moves_a_slice_and_its_neighbours_together():
    backbone = build_backbone("tiny_sam_vit")
    rng = np.random.default_rng(0)
    same = rng.random((32, 32)).astype(np.float32)
    volume = [same.copy() for _ in range(4)]  # identical slices: aligned views give identical pixels
    train, extra = samples_with_neighbours(backbone, _slices(volume), _slices(volume), 1, views=2, seed=0)
    assert len(train) == 3 * 4 and all(len(s.neighbours) == 3 for s in train)
    for s in train:
        inner = [k for k in s.neighbours if k is not None]
        assert set(inner) == {s.key}, "a neighbour was transformed differently from its slice"
    ends = [s.neighbours for s in train if s.index in (0, 3)]
    assert all(n[0] is None or n[2] is None for n in ends)  # the volume's ends have one side missing
    assert len({s.key for s in train[4:]}) == 8  # each augmented sample its own transform
    # different slices: the neighbours are the other slices, seen through the centre's transform
    volume = [rng.random((32, 32)).astype(np.float32) for _ in range(4)]
    train, extra = samples_with_neighbours(backbone, _slices(volume, labelled=[2]), _slices(volume), 1, views=1,
                                           seed=0)
    plain, view = train
    keys = {s.key: s for s in prepare(backbone, _slices(volume))}
    assert plain.neighbours[0] in keys and keys[plain.neighbours[0]].index == 1  # unlabelled slice 1 is encoded
    assert plain.neighbours[2] in keys and keys[plain.neighbours[2]].index == 3
    assert view.neighbours[0] not in keys and view.neighbours[0] in {e.key for e in extra}
    samples = prepare(backbone, _slices(volume))
    linked = link_neighbours(samples, samples, 2)
    assert linked[0].neighbours[:2] == (None, None) and linked[0].neighbours[2] == linked[0].key
    assert linked[1].neighbours[0] is None and linked[1].neighbours[3:] == (linked[2].key, linked[3].key)
    # the centres' views are the views a model without a depth adapter trains on: the two compare like for like
    from medadapt.training.augment import augmented_copies

    train, _ = samples_with_neighbours(backbone, _slices(volume), _slices(volume), 1, views=2, seed=5)
    assert [s.key for s in train[4:]] == [s.key for s in prepare(backbone, augmented_copies(_slices(volume), 2, 5))]
    # a constant plane (padding) is a neighbour too, encoded as inference encodes it
    volume[1][:] = 0.0
    train, extra = samples_with_neighbours(backbone, _slices(volume, labelled=[2]), _slices(volume), 1, views=0,
                                           seed=0)
    assert train[0].neighbours[0] is not None and train[0].neighbours[0] in {e.key for e in extra}


def _tube_dataset(root, n=3, seed=0):
    """nnU-Net volumes 32 x 32 x 8: a bright tube through slices 2-5 (label 1), noise elsewhere."""
    rng = np.random.default_rng(seed)
    for folder, ids in (("Tr", [f"v{i}" for i in range(n - 1)]), ("Val", [f"v{n - 1}"])):
        (root / f"images{folder}").mkdir(parents=True)
        (root / f"labels{folder}").mkdir(parents=True)
        for cid in ids:
            yy, xx = np.mgrid[:32, :32]
            cy, cx = rng.integers(10, 22, 2)
            label = np.zeros((32, 32, 8), np.uint8)
            label[..., 2:6] = (((yy - cy) ** 2 + (xx - cx) ** 2) <= 25)[..., None]
            image = 40 + 120 * label + rng.normal(0, 8, label.shape)
            nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), root / f"images{folder}" / f"{cid}_0000.nii.gz")
            nib.save(nib.Nifti1Image(label, np.eye(4)), root / f"labels{folder}" / f"{cid}.nii.gz")
    splits = {"train": [f"v{i}" for i in range(n - 1)], "val": [f"v{n - 1}"]}
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "tube"}, "splits": splits}))
    return root


def _recipe(tmp_path, **extra):
    root = _tube_dataset(tmp_path / "data") if not (tmp_path / "data").exists() else tmp_path / "data"
    cfg = {"backbone": "tiny_sam_vit",
           "data": {"root": str(root), "layout": "nnunet", "classes": ["tube"], "labeled": "train", "val": "val",
                    "axis": 2},
           "adapter": {"train": ["mask_decoder"], "depth": {"hidden": 8, "neighbours": 1}},
           "prompts": {"automatic": True, "prompted": ["box"]},
           "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "tensorboard": False, "cache_views": 1},
           "output": str(tmp_path / "runs"), "name": "depth"}
    return config_from_dict(with_changes(cfg, extra))


def test_a_recipe_trains_the_depth_adapter(tmp_path):
    tr = build_trainer(_recipe(tmp_path, name="look"), tmp_path / "look", **QUIET)
    tr.encode_all()
    inner = [s for s in tr.train_samples if s.index in (3, 4)][:2]
    emb = tr.embeddings(inner)
    assert emb.shape[:2] == (2, 3)  # each training slice with one neighbour on each side
    assert float((emb[:, 0] - emb[:, 1]).abs().max()) > 0  # and they are other slices' embeddings
    val = tr.cache.get(tr.val_samples[:4], tr.device)
    assert val.shape[:2] == (4, 3)
    run = finetune(_recipe(tmp_path), **QUIET)
    weights = load_file(str(run / "adapter" / "adapter.safetensors"))
    up = [v for k, v in weights.items() if k.startswith("depth_adapter.up.")]
    assert up and any(float(v.abs().max()) > 0 for v in up)  # zero-initialised, moved by training
    rows = (run / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[2] not in ("", "nan")  # validation ran on neighbour stacks
    # evaluation decodes each slice with its neighbours, as predict_volume does
    from medadapt.data import DataConfig, discover_cases, load_volume_case, split_cases
    from medadapt.evaluation.evaluate import _predict_slices
    from medadapt.inference import Segmenter

    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=run, device="cpu")
    with torch.no_grad():  # a strongly mixing adapter: answers without the neighbours would differ
        torch.nn.init.normal_(seg.backbone.depth_adapter.up.weight, std=2.0)
    data = DataConfig.from_dict(_recipe(tmp_path).data)
    volume, label = load_volume_case(split_cases(data, discover_cases(data))["val"][0], data)
    scored = _predict_slices(seg, list(volume), list(label), [1], ["automatic"])["automatic"]
    assert seg.volume is None  # the evaluation's volume is let go
    from medadapt.io.imaging import display_orientation

    planes = seg.predict_volume(np.stack([display_orientation(p) for p in volume]), axis=0)
    assert np.array_equal(scored, np.stack([display_orientation(p) for p in planes]))
    alone = []
    for plane in volume:
        seg.set_image(plane)
        alone.append(seg.predict().masks[0])
    assert not np.array_equal(scored > 0, np.stack(alone))  # what decoding without the neighbours gives


def test_depth_training_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(MedAdaptError, match="ssl: null"):
        finetune(_recipe(tmp_path, data__unlabeled=["v0"], ssl={}, name="ssl"), **QUIET)
    with pytest.raises(MedAdaptError, match="frozen and unadapted"):
        finetune(_recipe(tmp_path, adapter={"train": ["mask_decoder"], "depth": {"hidden": 8},
                                            "lora": {"rank": 2}}, name="lora"), **QUIET)


def test_pseudo_labels_of_a_depth_model_read_the_neighbours(tmp_path):
    """label_cases decodes each slice of a volume with its neighbours when the model has a depth adapter:
    with the adapter's output at zero it gives what slice-by-slice labelling gives, otherwise not."""
    from test_depth_adapter import depth_model

    from medadapt.inference import Segmenter
    from medadapt.ssl import label_slice
    from medadapt.ssl.foundation_labels import label_volume

    seg = Segmenter(depth_model(seed=1), device="cpu")
    yy, xx = np.mgrid[:32, :32]
    rng = np.random.default_rng(0)
    images = np.stack([40 + 120 * (((yy - 16) ** 2 + (xx - 12 - k) ** 2) <= 36) + rng.normal(0, 8, (32, 32))
                       for k in range(5)]).astype(np.float32)
    images[0] = 0.0  # a constant plane: left unlabelled
    slice_by_slice = lambda: [label_slice(seg, p, refine=False, tta=True) for p in images[1:]]  # noqa: E731
    label, conf = label_volume(seg, images, refine=False, tta=True)
    assert conf[0].max() == 0 and label[0].max() == 0
    assert not np.allclose(conf[1:], np.stack([c for _, c in slice_by_slice()]))
    with torch.no_grad():
        seg.backbone.depth_adapter.up.weight.zero_()
    label, conf = label_volume(seg, images, refine=False, tta=True)
    alone = slice_by_slice()
    assert np.array_equal(label[1:], np.stack([lab for lab, _ in alone]))
    assert np.allclose(conf[1:], np.stack([c for _, c in alone]), atol=1e-5)
    assert seg.volume is None
