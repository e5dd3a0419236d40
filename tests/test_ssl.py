"""The semi-supervised loop: its parts, and one end-to-end run with the teacher checkpointed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from medadapt.core.errors import MedAdaptError
from medadapt.prompts import largest_components, pad_boxes
from medadapt.recipes import config_from_dict
from medadapt.ssl import (
    EMATeacher,
    box_masks,
    boxes_from_labels,
    confident_labels,
    drop_small_classes,
    paste,
    rampup,
    random_boxes,
)
from medadapt.training import LabeledBatch


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


def test_largest_component_drops_specks_and_the_smaller_blob():
    masks = torch.zeros(1, 2, 256, 256, dtype=torch.bool)
    masks[0, 0, 100:160, 40:120] = True  # the structure
    masks[0, 0, 20:40, 200:230] = True  # a smaller blob
    masks[0, 0, 250:253, 5:8] = True  # a speck
    masks[0, 0, 160:200, 120:124] = True  # touches the structure's corner: part of it (8-connected cells)
    masks[0, 1, 10:12, 10:12] = True  # a class with one tiny component keeps it
    out = largest_components(masks)  # 256 px -> a 64-cell grid
    assert out[0, 0, 100:160, 40:120].all() and out[0, 0, 160:200, 120:124].all()
    assert not out[0, 0, 20:40, 200:230].any() and not out[0, 0, 250:253, 5:8].any()
    assert torch.equal(out[0, 1], masks[0, 1])
    assert not (out & ~masks).any()  # never adds pixels
    labels = masks[:, 0].long()
    boxes, _ = boxes_from_labels(labels, 1, largest=True)
    assert boxes[0, 0].tolist() == [40, 100, 123, 199]
    assert boxes_from_labels(labels, 1)[0][0, 0].tolist() == [5, 20, 229, 252]


def test_largest_component_counts_pixels_in_the_partial_cells_of_the_last_row_and_column():
    masks = torch.zeros(130, 130, dtype=torch.bool)  # 130 px: the last column of 4-px cells holds 2 pixels
    masks[1:130, 129] = True  # a 129-pixel strip on the last column
    masks[10:28, 10:25] = True  # a 270-pixel blob
    out = largest_components(masks)
    assert out[10:28, 10:25].all() and not out[:, 129].any()
    assert torch.equal(out, largest_components(masks, grid=None))


def test_padded_boxes_grow_by_the_margin_and_stay_on_the_grid():
    boxes = torch.tensor([[[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 63.0, 10.0]]])  # 1 image x 2 classes
    out = pad_boxes(boxes, 0.1, (64, 64))
    assert out[0, 0].tolist() == [8.0, 16.0, 32.0, 63.0]  # y1 = 60 + 4, clipped to the last row
    assert out[0, 1].tolist() == [0.0, 0.0, 63.0, 11.0]
    assert torch.equal(pad_boxes(boxes, 0.0, (64, 64)), boxes)


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


def _tiny_raw(tmp_path, n: int, unlabeled: list[str], train: dict, ssl: dict, val=("2",)) -> dict:
    """A tiny-ViT semi-supervised config on n disc images: labelled 0 and 1, the given val and unlabelled."""
    root = _discs(tmp_path / "d", n)
    return {
        "backbone": "tiny_sam_vit",
        "data": {"root": str(root), "layout": "folder", "classes": [1], "labeled": ["0", "1"], "val": list(val),
                 "unlabeled": unlabeled},
        "prompts": {"automatic": True, "prompted": []},
        "train": {"batch_size": 2, "tensorboard": False, **train},
        "ssl": {"unlabeled_batch_size": 2, "rampup_epochs": 0, **ssl},
        "output": str(tmp_path), "name": "run",
    }


def test_one_semi_supervised_step_runs_and_counts_pixels(tmp_path):
    """A tiny run on the tiny random ViT: the loop runs end to end, logs pass rate and pseudo-label Dice."""
    import csv

    from medadapt.recipes import finetune

    cfg = config_from_dict(_tiny_raw(tmp_path, 8, ["4", "5", "6", "7"], {"epochs": 2}, {"threshold": 0.5},
                                     val=("2", "3")))
    run = finetune(cfg, log=lambda m: None)
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 2 and "pass_rate" in rows[0] and "pseudo_dice" in rows[0]
    assert 0.0 <= float(rows[-1]["pass_rate"]) <= 1.0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert "teacher" in state["extensions"]["ssl"]  # the EMA teacher is checkpointed with the student

    # The saved config round-trips through YAML (tuples come back as lists): resuming it must be accepted,
    # and a changed setting must be refused by name.
    raw = _tiny_raw(tmp_path / "again", 8, ["4", "5", "6", "7"], {"epochs": 3}, {"threshold": 0.5}, val=("2", "3"))
    raw["data"]["root"], raw["output"] = cfg.data["root"], cfg.output
    finetune(config_from_dict(raw), resume=True, log=lambda m: None)
    assert len(list(csv.DictReader(open(run / "log.csv")))) == 3
    raw["ssl"]["threshold"] = 0.6
    with pytest.raises(MedAdaptError, match=r"changed: ssl\.threshold\)"):
        finetune(config_from_dict(raw), resume=True, log=lambda m: None)


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


def test_refinement_iterations_ask_again_with_boxes_around_the_answers(tmp_path):
    """refine_iterations=2: the counted foreground is the answer to boxes drawn around the first answer."""
    from medadapt.prompts import boxes_of_masks
    from medadapt.ssl import refine_with_prompts

    torch.manual_seed(1)
    model = _tiny_automatic_model()
    s, m = model.processor.image_size // 16, model.processor.mask_size
    emb = torch.randn(2, model.embed_dim, s, s)
    labels = torch.zeros(2, m, m, dtype=torch.long)
    labels[:, m // 4 : m // 2, m // 4 : m // 2] = 1
    passed = torch.ones_like(labels, dtype=torch.bool)
    scale = model.processor.image_size / m

    def answer(boxes):
        sparse, dense = model.encode_prompts(boxes=boxes.reshape(-1, 4) * scale)
        return model.decode(emb.repeat_interleave(2, dim=0), sparse, dense)[0][:, 0].reshape(2, 2, m, m)

    with torch.no_grad():
        boxes, present = boxes_of_masks(largest_components(labels[:, None] == torch.tensor([1, 2])[None, :, None, None]))
        first = answer(pad_boxes(boxes, 0.1, (m, m)))
        again, found = boxes_of_masks(largest_components(first > 0))
        assert found[:, 0].all()  # the first answers are not empty, so the second pass is exercised
        second = torch.where(found[:, :, None, None], answer(pad_boxes(again, 0.1, (m, m))), first)
        second = torch.where(present[:, :, None, None], second, torch.full_like(second, -1e4))
        expected = torch.where(second.max(1).values > 0, second.max(1).indices + 1, 0)
        one, _ = refine_with_prompts(model, emb, labels, passed, 2, "replace", min_iou=1e-6, margin=0.1)
        two, ok = refine_with_prompts(model, emb, labels, passed, 2, "replace", min_iou=1e-6, margin=0.1, iterations=2)
    fg = ok & (two > 0)
    assert fg.any() and torch.equal(two[fg], expected[fg])
    assert not torch.equal(one, two)  # the second pass changed the pseudo-label
    with pytest.raises(MedAdaptError, match="refine_iterations"):
        config_from_dict(_tiny_raw(tmp_path, 4, ["2", "3"], {}, {"refine_iterations": 0}))


def test_pretrained_refiner_is_frozen_while_the_decoder_trains(tmp_path):
    """refine_decoder: pretrained keeps a frozen copy of the decoder as it was before training."""
    from medadapt.recipes import build_trainer

    cfg = config_from_dict(_tiny_raw(tmp_path, 6, ["3", "4", "5"], {"epochs": 1, "lr": 1e-2},
                                     {"threshold": 0.0, "refine": "replace", "refine_decoder": "pretrained"}))
    tr = build_trainer(cfg, tmp_path / "run", log=lambda m: None)
    ssl = tr.extensions[0]
    before = {k: v.clone() for k, v in tr.model.mask_decoder.state_dict().items()}
    tr.encode_all()
    tr.train_epoch()
    after_model = tr.model.mask_decoder.state_dict()
    refiner = ssl.refiner.state_dict()
    assert any(not torch.equal(after_model[k], before[k]) for k in before)  # the decoder trained
    assert all(torch.equal(refiner[k], before[k]) for k in before)  # the refiner did not move
    assert not any(p.requires_grad for p in ssl.refiner.parameters())
    with pytest.raises(MedAdaptError, match="refine_decoder"):
        config_from_dict({**cfg.to_dict(), "ssl": {"refine_decoder": "mine"}})
    with pytest.raises(MedAdaptError, match="refine_margin"):
        config_from_dict({**cfg.to_dict(), "ssl": {"refine_margin": 0.8}})
    with pytest.raises(MedAdaptError, match="refine_box"):
        config_from_dict({**cfg.to_dict(), "ssl": {"refine_box": "confident"}})



def test_case_stream_reads_a_few_cases_at_a_time_and_reshuffles(tmp_path):
    """Every case once per pass, at most ``cases_per_chunk`` cases read per refill, a new order each pass."""
    from medadapt.data import CaseStream, DataConfig, discover_cases, split_cases

    root = _discs(tmp_path / "d", 6)
    (root / "images" / "5.png").write_bytes(b"not a png")  # an unreadable case is skipped, by name
    cfg = DataConfig.from_dict({"root": str(root), "layout": "folder", "classes": [1],
                                "unlabeled": [str(i) for i in range(6)], "on_error": "skip"})
    cases = split_cases(cfg, discover_cases(cfg))["unlabeled"]
    reads = []
    stream = CaseStream(cases, cfg, np.random.default_rng(0), cases_per_chunk=2,
                        prepare=lambda sl: reads.append(len({s.case_id for s in sl})) or sl)
    with pytest.warns(UserWarning, match="skipping case"):
        first = [s.case_id for s in stream.take(5)]
    assert sorted(first) == ["0", "1", "2", "3", "4"]  # one pass: each readable case once
    assert max(reads) <= 2 and stream.passes == 0
    assert [p for p, _ in stream.skipped] and "5.png" in stream.skipped[0][0]
    second = [s.case_id for s in stream.take(10)]  # no second warning: the bad case left the stream
    assert stream.passes >= 1 and sorted(second[:5]) == sorted(first) and second[:5] != first
    assert len(stream) == 5


def test_a_blank_case_leaves_the_stream_without_stopping_the_run(tmp_path):
    """on_error: stop is for files that cannot be read; a volume whose slices are all blank is dropped, as the
    in-memory datasets drop blank slices, even when a chunk holds nothing else."""
    import nibabel as nib

    from medadapt.data import CaseStream, DataConfig, discover_cases, split_cases

    (tmp_path / "d" / "imagesTr").mkdir(parents=True)
    for i in range(4):
        v = np.zeros((16, 16, 3), np.float32) if i == 2 else \
            (np.random.default_rng(i).random((16, 16, 3)) * 100).astype(np.float32)
        nib.save(nib.Nifti1Image(v, np.eye(4)), str(tmp_path / "d" / "imagesTr" / f"c{i}.nii.gz"))
    cfg = DataConfig.from_dict({"root": str(tmp_path / "d"), "layout": "nnunet", "classes": [1], "unlabeled": "all"})
    cases = split_cases(cfg, discover_cases(cfg))["unlabeled"]
    stream = CaseStream(cases, cfg, np.random.default_rng(0), cases_per_chunk=1)
    taken = {s.case_id for _ in range(6) for s in stream.take(2)}
    assert taken == {"c0", "c1", "c3"} and len(stream) == 3


def test_streamed_unlabelled_cases_train_and_stay_out_of_memory(tmp_path):
    """ssl.stream: the run trains; unlabelled embeddings go to disk, not into the in-memory cache."""
    import csv

    from medadapt.recipes import build_trainer, finetune

    raw = _tiny_raw(tmp_path, 8, ["4", "5", "6", "7"], {"epochs": 3, "cache_dir": str(tmp_path / "cache")},
                    {"threshold": 0.5, "stream": True, "stream_cases": 2}, val=("2", "3"))
    run = finetune(config_from_dict(raw), log=lambda m: None)
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 3 and all(0.0 <= float(r["pass_rate"]) <= 1.0 for r in rows)

    tr = build_trainer(config_from_dict({**raw, "name": "probe"}), tmp_path / "probe", log=lambda m: None)

    ssl = tr.extensions[0]
    tr.encode_all()
    assert ssl.samples_to_encode() == [] and len(tr.cache.memory) == len(tr.train_samples) + len(tr.val_samples)
    batch = ssl.next_batch()
    emb = tr.embeddings(batch)
    assert emb.shape[0] == 2 and all(s.key not in tr.cache.memory for s in batch)
    assert all((tr.cache.dir / f"{s.key}.safetensors").is_file() for s in batch)
    with pytest.raises(MedAdaptError, match="stream_cases"):
        config_from_dict({**raw, "ssl": {"stream": True, "stream_cases": 0}})


def test_supervised_warm_up_then_the_teacher_starts_from_the_student(tmp_path):
    """ssl.start_epoch: no unlabelled pixel is counted before it; the teacher copies the student meanwhile."""
    import csv

    from medadapt.recipes import finetune

    student = torch.nn.Linear(2, 2)
    teacher = EMATeacher(student, decay=0.99)
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(0.0)
    assert torch.equal(teacher.model.weight, student.weight)

    cfg = config_from_dict(_tiny_raw(tmp_path, 6, ["3", "4", "5"], {"epochs": 3},
                                     {"threshold": 0.5, "start_epoch": 2}))
    rows = list(csv.DictReader(open(finetune(cfg, log=lambda m: None) / "log.csv")))
    rates = [float(r["pass_rate"]) for r in rows]
    assert np.isnan(rates[0]) and np.isnan(rates[1]) and 0.0 <= rates[2] <= 1.0


def test_warm_up_teacher_copies_the_student_or_averages_it(tmp_path):
    """ssl.warmup_ema_decay: 0 copies the student at every warm-up step; > 0 averages its recent steps."""
    from medadapt.recipes import build_trainer

    for decay in (0.0, 0.5):
        raw = _tiny_raw(tmp_path / str(decay), 6, ["3", "4", "5"], {"epochs": 3, "lr": 1e-2, "batch_size": 1},
                        {"threshold": 0.5, "start_epoch": 2, "warmup_ema_decay": decay})
        tr = build_trainer(config_from_dict(raw), tmp_path / str(decay) / "run", log=lambda m: None)
        ssl = tr.extensions[0]
        start = [t.clone() for t, _ in ssl.teacher.pairs]
        tr.encode_all()
        tr.train_epoch()
        assert tr.steps_per_epoch >= 2  # an average of several steps differs from the last one
        same = all(torch.equal(t, p) for t, p in ssl.teacher.pairs)
        moved = any(not torch.equal(t, t0) for (t, _), t0 in zip(ssl.teacher.pairs, start))
        assert moved and same == (decay == 0.0)
    with pytest.raises(MedAdaptError, match="warmup_ema_decay"):
        config_from_dict({**raw, "ssl": {"warmup_ema_decay": 1.0}})


class _HostReads(TorchDispatchMode):
    """Records the aten ops that make a GPU step wait: reading a value on the host (``item``, ``bool``,
    ``tolist`` all end in ``_local_scalar_dense``), an output whose shape depends on the values, and a tensor
    made from host data (``torch.tensor``: ``lift_fresh``), which on a GPU is a copy that waits for the queue.
    The same ops run on the CPU, so a CPU test sees them."""

    VALUE_READS = {"_local_scalar_dense", "equal", "is_nonzero", "nonzero", "nonzero_static", "masked_select",
                   "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave", "lift_fresh"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        bool_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] or []) if t is not None)
        if name in self.VALUE_READS or bool_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _one_step_trainer(tmp_path, ssl: dict, encoder_runs: bool):
    """A tiny trainer for one semi-supervised step (LoRA in the encoder when it runs), cache filled, and the
    unlabelled batch it will get, read in now: reading data is not the step."""
    from medadapt.recipes import build_trainer

    raw = _tiny_raw(tmp_path, 6, ["3", "4", "5"], {"epochs": 1}, ssl)
    if encoder_runs:
        raw["adapter"] = {"lora": {"rank": 2}}
    tr = build_trainer(config_from_dict(raw), tmp_path / "run", log=lambda m: None)
    ext = tr.extensions[0]
    assert (tr.cache is None) == encoder_runs
    tr.encode_all()
    unlabeled = ext.next_batch()
    ext.next_batch = lambda: unlabeled
    return tr, unlabeled, raw


def test_an_unlabelled_batch_larger_than_the_unlabelled_slices_repeats_them(tmp_path):
    """One unlabelled slice and ``unlabeled_batch_size: 4``: every step still has 4 unlabelled rows."""
    from medadapt.recipes import build_trainer

    raw = _tiny_raw(tmp_path, 4, ["3"], {"epochs": 1}, {"unlabeled_batch_size": 4})
    tr = build_trainer(config_from_dict(raw), tmp_path / "run", log=lambda m: None)
    ext = tr.extensions[0]
    assert len(ext.samples) == 1
    assert [len(ext.next_batch()) for _ in range(3)] == [4, 4, 4]


def test_random_mixing_boxes_cover_one_region_on_the_embedding_and_label_grids():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(200, (0.25, 0.5), g, "cpu", cells=64)
    small, big = box_masks(boxes, (64, 64)), box_masks(boxes, (256, 256))
    assert torch.equal(torch.nn.functional.interpolate(small[:, None], size=(256, 256), mode="nearest")[:, 0], big)


def test_the_student_as_its_own_teacher_labels_without_its_dropout(tmp_path):
    """``ssl.teacher: student`` encodes the weak view with the training model: its LoRA dropout must be off for
    the labels (and the model's modes as they were afterwards)."""
    from medadapt.recipes import build_trainer
    from medadapt.ssl.loop import _encode_in_eval

    raw = _tiny_raw(tmp_path, 6, ["3", "4", "5"], {"epochs": 1, "augment": False},
                    {"teacher": "student", "threshold": 0.3, "refine": "none"})
    raw["adapter"] = {"lora": {"rank": 2, "dropout": 0.5, "targets": ["encoder_attention"]}}
    tr = build_trainer(config_from_dict(raw), tmp_path / "run", log=lambda m: None)
    with torch.no_grad():  # LoRA's B starts at zero, where dropout before A changes nothing
        for name, p in tr.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    tr.model.train()
    pixels, _ = tr.augmented([0, 1])
    with torch.no_grad():
        assert not torch.equal(tr.model.encode(pixels), tr.model.encode(pixels))  # dropout is on in training
    modes = [m.training for m in tr.model.modules()]
    assert torch.equal(_encode_in_eval(tr.model, pixels), _encode_in_eval(tr.model, pixels))
    assert [m.training for m in tr.model.modules()] == modes


def test_the_student_as_its_own_teacher_leaves_the_frozen_encoders_batchnorm_statistics_alone(tmp_path):
    """With ``ssl.teacher: student`` the teacher's labels come from the training model itself: putting it back
    in train mode afterwards must keep BatchNorm and the frozen encoder in eval, or the TinyViT statistics
    drift and the adapter a run saves (parameters, not buffers) is not the model it validated."""
    from medadapt.recipes import build_trainer

    raw = _tiny_raw(tmp_path, 6, ["3", "4", "5"], {"epochs": 1, "augment": False},
                    {"teacher": "student", "threshold": 0.3, "refine": "none"})
    raw["backbone"], raw["adapter"] = "tiny_litemedsam", {"lora": {"rank": 2}}
    tr = build_trainer(config_from_dict(raw), tmp_path / "run", log=lambda m: None)
    assert tr.cache is None  # the encoder runs in every step
    norms = [m for m in tr.model.image_encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms, "the tiny TinyViT should hold BatchNorm layers"
    before = [m.running_mean.clone() for m in norms]
    tr.train_epoch()
    assert not any(m.training for m in norms)
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, before))


@pytest.mark.parametrize("encoder_runs", [False, True], ids=["cached-embeddings", "encoder-runs"])
def test_the_semi_supervised_step_never_reads_a_value_on_the_host(tmp_path, encoder_runs):
    """No host synchronisation inside the step: the loss, its backward and the teacher update, on both paths
    (cached embeddings; and the encoder running, with pixel perturbations), with every stage switched on."""
    with _HostReads() as probe:  # the probe itself catches a host read and a tensor from host data
        float(torch.ones(2).sum())
        torch.tensor([1.0, 2.0])
        torch.ones(4)[torch.ones(4) > 0]
    assert probe.seen == ["_local_scalar_dense", "lift_fresh", "index"]

    ssl = {"threshold": 0.5, "refine": "replace", "refine_decoder": "pretrained", "refine_iterations": 2,
           "refine_margin": 0.05, "cutmix": 1.0, "copy_paste": 1.0, "adaptive_threshold": True, "geometric": 1.0}
    tr, _, _ = _one_step_trainer(tmp_path, ssl, encoder_runs)
    ext = tr.extensions[0]
    batch = [tr.train_samples[0], tr.train_samples[1]]
    target = torch.stack([s.target for s in batch])
    labeled = {"labeled_emb": tr.embeddings(batch)} if not encoder_runs else {}
    if encoder_runs:
        labeled["labeled_pixels"], target = tr.augmented([0, 1])
    with _HostReads() as probe:
        loss = ext.loss(LabeledBatch(target, embeddings=labeled.get("labeled_emb"), pixels=labeled.get("labeled_pixels")))
        loss.backward()
        ext.after_step()
    assert probe.seen == []
    assert loss.requires_grad and float(loss.detach()) > 0  # it computed something to learn from


@pytest.mark.parametrize("encoder_runs", [False, True], ids=["cached-embeddings", "encoder-runs"])
def test_a_turned_strong_view_comes_with_its_pseudo_label_turned(tmp_path, encoder_runs):
    """ssl.geometric: the student's view is turned / flipped, and the teacher's pseudo-label with it. With cached
    embeddings the view is the encoder's answer to the turned image (encoded once, geometric_views per slice),
    which is not the turned embedding; when the encoder runs, the pixels are turned before it."""
    from medadapt.ssl.geometry import dihedral_each, view_sample

    ssl = {"threshold": 0.5, "geometric": 1.0, "geometric_views": 2, "cutmix": 0.0, "copy_paste": 0.0,
           "intensity": 0.0}
    tr, unlabeled, raw = _one_step_trainer(tmp_path, ssl, encoder_runs)
    ext = tr.extensions[0]
    if not encoder_runs:  # every unlabelled slice's two views are encoded up front
        assert len(ext.cached_views()) == 2 * len(ext.samples)
        assert all(v.key in tr.cache.memory for v in ext.cached_views())
    seen = {}
    draw, mix = ext.draw_views, ext._mix
    ext.draw_views = lambda batch: seen.setdefault("ks", draw(batch))
    ext._mix = lambda x, labels, passed, *rest: seen.setdefault("mixed", (x, labels, passed)) and mix(
        x, labels, passed, *rest)
    if encoder_runs:
        pixels, target = tr.augmented([0, 1])
        ext.loss(LabeledBatch(target, pixels=pixels))
    else:
        batch = tr.train_samples[:2]
        ext.loss(LabeledBatch(torch.stack([s.target for s in batch]), embeddings=tr.embeddings(batch)))
    ks, (x, labels, passed) = seen["ks"], seen["mixed"]
    assert all(k in ext.allowed_views(s) for s, k in zip(unlabeled, ks)) and all(ks)
    pixels = torch.stack([s.pixels for s in unlabeled])
    if encoder_runs:
        weak = ext.teacher_model().encode(pixels)
        assert torch.equal(x, dihedral_each(pixels, ks))
    else:
        weak = tr.embeddings(unlabeled)
        assert torch.equal(x, tr.embeddings([view_sample(s, k) for s, k in zip(unlabeled, ks)]))
        assert not torch.allclose(x, dihedral_each(weak, ks), atol=1e-3)  # the encoder is no symmetry
    want_labels, want_passed = ext.pseudo_labels(weak)
    assert torch.equal(labels, dihedral_each(want_labels, ks)) and torch.equal(passed, dihedral_each(want_passed, ks))
    assert not torch.equal(labels, want_labels)  # (the turned pseudo-labels differ from the unturned ones)
    with pytest.raises(MedAdaptError, match="geometric_views"):
        config_from_dict({**raw, "ssl": {"geometric_views": 8}})


def test_semi_supervised_beats_supervised_only_on_a_domain_shift(tmp_path, litemedsam_cache):
    """The mechanism, end to end, with the real LiteMedSAM: unlabelled images of the shifted domain help.

    ``medadapt.data.synthetic``: 2 labelled source-domain images, 30 unlabelled
    and 8 validation images of a shifted domain; same labels, schedule and
    seed in both arms. Measured with 1 thread on seeds 0-2: supervised-only
    0.82 against semi-supervised 0.95-0.97 (mean of the last 3 epochs;
    ``benchmarks/results/synthetic/ssl_domain_shift/summary.md``), so a 5-point margin
    leaves room for run-to-run variation between thread counts.
    """
    import csv

    from medadapt.data.synthetic import shifted_ellipses, shifted_ellipses_config
    from medadapt.recipes import finetune

    root = shifted_ellipses(tmp_path / "data")
    result = {}
    for semi in (False, True):
        raw = shifted_ellipses_config(root, tmp_path, 0, semi_supervised=semi)
        raw["train"]["cache_dir"] = str(litemedsam_cache)
        run = finetune(config_from_dict(raw), log=lambda m: None)
        result[semi] = list(csv.DictReader(open(run / "log.csv")))
    last3 = {k: np.mean([float(r["val_dice"]) for r in rows[-3:]]) for k, rows in result.items()}
    assert last3[True] >= last3[False] + 0.05, last3
    # the promptable refinement is what makes the pseudo-labels good: better than the student's own answers
    pseudo = [float(r["pseudo_dice"]) for r in result[True][2:]]
    assert min(pseudo) > float(result[True][1]["val_dice"]), (pseudo, result[True][1])
    # the first round's teacher is the warmed-up student: 0.77 to 0.9 on CPUs with different float kernels
    # (AVX2 against AVX512/AMX); from the second round on, above 0.9 on each
    assert min(pseudo[1:]) > 0.85, pseudo
