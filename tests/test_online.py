"""Online learning with replay: the on-disk buffer, and a learner that fine-tunes the real LiteMedSAM decoder from
accepted masks while a segmenter serves."""

from __future__ import annotations

import copy
import json
import shutil
import threading

import numpy as np
import pytest
import torch
from conftest import disc_image

from medadapt import MedAdaptError
from medadapt.foundation import build_backbone
from medadapt.inference import Segmenter
from medadapt.training import OnlineConfig, OnlineLearner, ReplayBuffer

FAST = {"batch_size": 1, "prompted": []}  # automatic loss only: the cheapest real step


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.fixture(scope="module")
def base():
    """The pretrained float32 LiteMedSAM, never adapted: each test serves a copy of it."""
    return build_backbone("litemedsam")


@pytest.fixture(scope="module")
def scenes(base):
    """Two images, each with its embedding, geometry and labels: a bright disc (1) and a grey square (2)."""
    seg = Segmenter(copy.deepcopy(base), device="cpu")
    out = []
    for seed, center in ((0, (70, 90)), (1, (100, 150))):
        image, disc = disc_image(h=160, w=220, center=center, radius=30, seed=seed)
        label = disc.astype(np.int64)
        y, x = (20, 20) if center[1] > 120 else (90, 150)
        label[y : y + 35, x : x + 35] = 2
        image = np.where(label == 2, 110.0, image).astype(np.float32)
        seg.set_image(image)
        emb, meta = seg.embedding()
        out.append({"image": image, "label": label, "embedding": emb.clone(), "meta": meta})
    return out


def serving(base) -> Segmenter:
    return Segmenter(copy.deepcopy(base), device="cpu")


def proposal_dice(seg: Segmenter, scene: dict, name: str = "disc", value: int = 1) -> float:
    """Dice of the automatic proposal for ``name`` on the image set last (``scene``'s)."""
    pred = seg.predict(classes=[name])
    return dice(pred.masks[0], scene["label"] == value)


# ---------------------------------------------------------------------------------------------------- buffer
def _sample(seed: int, classes: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 8, 4, 4, generator=g), torch.randint(0, classes + 1, (16, 16), generator=g)


def test_buffer_adds_atomically_reopens_and_replaces(tmp_path, monkeypatch):
    buf = ReplayBuffer(tmp_path / "buf")
    for i in range(3):
        emb, tgt = _sample(i)
        assert buf.add(emb, tgt, ["disc", "square"], prompts={"points": np.array([[3.0, 4.0]]), "labels": (1,)},
                       image_id=f"img{i}") == i
    again = ReplayBuffer(tmp_path / "buf")
    assert len(again) == 3 and [r["image_id"] for r in again.records] == ["img0", "img1", "img2"]
    s = again.get(1)
    emb, tgt = _sample(1)
    assert s.embedding.dtype == torch.float16 and torch.allclose(s.embedding.float(), emb[0], atol=1e-2)
    assert torch.equal(s.target, tgt) and s.target.dtype == torch.int64
    assert s.classes == ["disc", "square"] and s.record["prompts"] == {"points": [[3.0, 4.0]], "labels": [1]}
    assert s.record["present"] == ["disc", "square"]

    # the same image accepted again (a corrected mask): replaced, and now the newest; its old file is gone
    old_file = again.records[0]["file"]
    emb, tgt = _sample(9, classes=1)
    assert again.add(emb, tgt, ["disc"], image_id="img0") == 2
    assert [r["image_id"] for r in again.records] == ["img1", "img2", "img0"]
    assert not (tmp_path / "buf" / "samples" / old_file).exists()
    assert torch.equal(ReplayBuffer(tmp_path / "buf").get(-1).target, tgt)

    # a crash while writing the index: add raises, the buffer and the folder are as before (no stray file)
    def broken(*args, **kwargs):
        raise MedAdaptError("disk full")

    monkeypatch.setattr(ReplayBuffer, "_write_index", lambda self, records: broken())  # after the sample file
    with pytest.raises(MedAdaptError, match="disk full"):
        again.add(*_sample(5), ["disc", "square"], image_id="img5")
    monkeypatch.undo()
    assert len(again) == 3 and len(list((tmp_path / "buf" / "samples").iterdir())) == 3
    # a sample file the index never named (killed before the index was written) is removed on reopening
    (tmp_path / "buf" / "samples" / "stray.safetensors").write_bytes(b"partial")
    reopened = ReplayBuffer(tmp_path / "buf")
    assert len(reopened) == 3 and sorted(p.name for p in (tmp_path / "buf" / "samples").iterdir()) == sorted(
        r["file"] for r in reopened.records)


def test_buffer_sampling_mixes_old_samples_only_with_replay(tmp_path):
    buf = ReplayBuffer(tmp_path / "buf")
    for i in range(6):
        buf.add(*_sample(i), ["disc", "square"])
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert buf.sample(4, rng, replay=False) == [5, 5, 5, 5]
        assert buf.sample(4, rng, newest=2, replay=False) == [4, 5, 4, 5]
    seen = set()
    for _ in range(20):
        batch = buf.sample(4, rng, replay=True)
        assert batch[0] == 5 and len(set(batch[1:])) == 3 and set(batch[1:]) <= {0, 1, 2, 3, 4}
        seen |= set(batch[1:])
    assert seen == {0, 1, 2, 3, 4}
    a, b = buf.sample(4, np.random.default_rng(7)), buf.sample(4, np.random.default_rng(7))
    assert a == b  # seeded
    small = ReplayBuffer(tmp_path / "small")
    small.add(*_sample(0), ["disc", "square"])
    small.add(*_sample(1), ["disc", "square"])
    assert small.sample(4, rng) == [1, 0, 0, 0]  # one older sample, drawn with replacement
    with pytest.raises(MedAdaptError, match="empty"):
        ReplayBuffer(tmp_path / "none").sample(2, rng)


def test_buffer_refuses_bad_samples(tmp_path):
    buf = ReplayBuffer(tmp_path / "buf")
    emb, tgt = _sample(0)
    with pytest.raises(MedAdaptError, match="values 0..2"):
        buf.add(emb, tgt, ["disc"])  # label 2 but one class
    with pytest.raises(MedAdaptError, match="twice"):
        buf.add(emb, tgt, ["disc", "disc"])
    with pytest.raises(MedAdaptError, match="whole label values"):
        buf.add(emb, tgt.float(), ["disc", "square"])
    with pytest.raises(MedAdaptError, match="1 x C x h x w"):
        buf.add(torch.zeros(2, 8, 4, 4), tgt, ["disc", "square"])
    with pytest.raises(MedAdaptError, match="NaN"):
        buf.add(torch.full((1, 8, 4, 4), float("nan")), tgt, ["disc", "square"])
    with pytest.raises(MedAdaptError, match="plain lists"):
        buf.add(emb, tgt, ["disc", "square"], prompts={"points": [[float("inf"), 1.0]]})
    assert len(buf) == 0
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.json").write_text("{not json")
    with pytest.raises(MedAdaptError, match="not valid JSON"):
        ReplayBuffer(tmp_path / "bad")


# ---------------------------------------------------------------------------------------------------- learner
def test_learner_creates_classes_and_its_proposal_improves(base, scenes, tmp_path):
    seg = serving(base)
    learner = OnlineLearner(seg, tmp_path / "run", OnlineConfig(**FAST))
    assert seg.classes == [] and learner.model is None
    with pytest.raises(MedAdaptError, match="add an accepted mask first"):
        learner.step()
    s = scenes[0]
    learner.add(s["embedding"], s["meta"], s["label"] == 1, ["disc"], prompts={"box": [60, 40, 120, 100]},
                image_id="a")
    assert seg.classes == ["disc"] and learner.label_values == [1] and learner.version == 1
    assert seg.backbone.adapter_config.train == ["mask_decoder"]
    seg.set_image(s["image"])
    start = proposal_dice(seg, s)
    before = {n: p.clone() for n, p in seg.backbone.named_parameters() if n.startswith("mask_decoder.")}
    learner.step(8)
    assert learner.steps == 8 and learner.last_batch == [0]
    unchanged = seg.backbone.mask_decoder.output_upscaling[0].weight
    assert torch.equal(unchanged, before["mask_decoder.output_upscaling.0.weight"])  # serving waits for publish
    assert learner.publish() == 2
    end = proposal_dice(seg, s)
    assert start < 0.5 and end > 0.85, (start, end)  # measured: 0.13 -> 0.94 after 6 steps
    assert not torch.equal(seg.backbone.mask_decoder.output_upscaling[0].weight,
                           before["mask_decoder.output_upscaling.0.weight"])


def test_new_class_keeps_learned_rows_and_replay_draws_old_samples(base, scenes, tmp_path):
    seg = serving(base)
    learner = OnlineLearner(seg, tmp_path / "run", OnlineConfig(**{**FAST, "batch_size": 2}))
    s0, s1 = scenes
    learner.add(s0["embedding"], s0["meta"], s0["label"] == 1, ["disc"], image_id="a")
    learner.step(1)
    learner.publish()
    tokens = seg.backbone.class_prompts.tokens.detach().clone()
    trained = learner.model.class_prompts.tokens.detach().clone()
    hyper = seg.backbone.class_prompts.hypernets[0].layers[0].weight.detach().clone()
    # the second image labels both classes (value 1 disc, 2 square)
    learner.add(s1["embedding"], s1["meta"], s1["label"], ["disc", "square"], image_id="b")
    assert seg.classes == ["disc", "square"] and learner.label_values == [1, 2]
    assert seg.backbone.adapter_config.automatic.class_names == ["disc", "square"]
    assert seg.backbone.class_prompts.tokens.shape[0] == 2 and learner.model.class_prompts.tokens.shape[0] == 2
    assert torch.equal(seg.backbone.class_prompts.tokens[0], tokens[0])
    assert torch.equal(learner.model.class_prompts.tokens[0], trained[0])
    assert torch.equal(seg.backbone.class_prompts.hypernets[0].layers[0].weight, hyper)
    assert not torch.equal(seg.backbone.class_prompts.tokens[1], tokens[0])  # a row of its own
    seg.set_image(s1["image"])
    assert seg.predict().labels == ["disc", "square"]
    learner.step(1)
    assert learner.last_batch == [1, 0]  # newest first, then the older sample drawn by replay
    learner.config.replay = False
    learner.step(1)
    assert learner.last_batch == [1, 1]


def test_new_classes_keep_the_label_values_of_the_users_files(base, scenes, tmp_path):
    """A mask file that marks the disc 255 keeps 255 once the model learns the disc: its automatic answers
    write the value the files hold (a value taken already goes to the next free one)."""
    seg = serving(base)
    learner = OnlineLearner(seg, tmp_path / "run", OnlineConfig(**FAST))
    s0, s1 = scenes
    learner.add(s0["embedding"], s0["meta"], s0["label"] == 1, ["disc"], image_id="a", label_values=[255])
    assert learner.label_values == [255]
    learner.add(s1["embedding"], s1["meta"], s1["label"], ["disc", "square"], image_id="b", label_values=[255, 7])
    assert seg.classes == ["disc", "square"] and learner.label_values == [255, 7]
    learner.add(s1["embedding"], s1["meta"], s1["label"] * (s1["label"] == 1), ["disc", "ring"], image_id="c",
                label_values=[255, 7])  # 7 is the square's already
    assert learner.label_values == [255, 7, 256]
    with pytest.raises(MedAdaptError, match="one distinct value >= 1"):
        learner.add(s0["embedding"], s0["meta"], s0["label"] == 1, ["disc"], label_values=[0])
    learner.stop()
    # killed before any save: a learner restarted from the buffer alone gives the classes the files' values
    shutil.rmtree(tmp_path / "run" / "adapter", ignore_errors=True)
    restarted = OnlineLearner(serving(base), tmp_path / "run", OnlineConfig(**FAST))
    assert restarted.class_names == ["disc", "square", "ring"] and restarted.label_values == [255, 7, 256]


def test_a_sample_accepted_again_while_a_step_reads_it_gives_its_replacement(tmp_path, monkeypatch):
    buf = ReplayBuffer(tmp_path / "buf", cache_size=0)  # nothing kept in memory: every get reads the file
    emb, tgt = _sample(0)
    buf.add(emb, tgt, ["disc", "square"], image_id="x")
    new_emb, new_tgt = _sample(1)
    load = ReplayBuffer._load

    def accepted_meanwhile(self, record):  # the user accepts "x" again while a training step reads it
        if not accepted:
            accepted.append(self.add(new_emb, new_tgt, ["disc", "square"], image_id="x"))
        return load(self, record)

    accepted = []

    monkeypatch.setattr(ReplayBuffer, "_load", accepted_meanwhile)
    got = buf.get(0)
    assert torch.equal(got.target, new_tgt.long()) and len(buf) == 1


def test_background_worker_publishes_and_saves(base, scenes, tmp_path):
    seg = serving(base)
    learner = OnlineLearner(seg, tmp_path / "run", OnlineConfig(**FAST, steps_per_sample=2))
    threads = torch.get_num_threads()
    learner.start()
    try:
        assert learner.running and torch.get_num_threads() == threads
        s = scenes[0]
        learner.add(s["embedding"], s["meta"], s["label"] == 1, ["disc"], image_id="a")
        assert learner.wait_idle(timeout=240)
        assert learner.steps == 2 and learner.version >= 2 and learner.error is None
        with learner.lock:  # the serving side decodes while the worker waits
            seg.set_image(s["image"])
            assert seg.predict().labels == ["disc"]
        assert (tmp_path / "run" / "adapter" / "adapter.json").is_file()
    finally:
        done = threading.Event()
        threading.Thread(target=lambda: (learner.stop(timeout=120), done.set()), daemon=True).start()
        assert done.wait(150), "stop() did not return"
    assert not learner.running
    learner.stop()  # stopping again does nothing


def test_the_worker_waits_while_the_serving_side_is_busy(base, scenes, tmp_path):
    learner = OnlineLearner(serving(base), tmp_path / "run", OnlineConfig(**FAST, steps_per_sample=1))
    busy = threading.Event()
    busy.set()
    learner.pause = busy.is_set
    learner.start()
    try:
        s = scenes[0]
        learner.add(s["embedding"], s["meta"], s["label"] == 1, ["disc"], image_id="a")
        assert not learner.wait_idle(timeout=1.5) and learner.steps == 0  # the user is working: no step
        busy.clear()
        assert learner.wait_idle(timeout=240) and learner.steps == 1 and not learner.training
    finally:
        learner.stop(timeout=120)


def test_save_loads_with_from_pretrained_and_reopening_resumes(base, scenes, tmp_path):
    seg = serving(base)
    learner = OnlineLearner(seg, tmp_path / "run", OnlineConfig(**FAST))
    with pytest.raises(MedAdaptError, match="nothing to save"):
        learner.save()
    s = scenes[0]
    learner.add(s["embedding"], s["meta"], s["label"] == 1, ["disc"], image_id="a")
    learner.step(3)
    path = learner.save()
    assert path == tmp_path / "run" / "adapter" and learner.version == 2  # save published the steps
    info = json.loads((path / "adapter.json").read_text())
    assert info["metadata"]["class_names"] == ["disc"] and info["metadata"]["online"]["steps"] == 3
    seg.set_image(s["image"])
    served = seg.predict()
    loaded = Segmenter.from_pretrained("litemedsam", adapter=path, device="cpu", precision="float32")
    loaded.set_image(s["image"])
    pred = loaded.predict()
    assert pred.labels == ["disc"] and pred.label_values == [1]
    # the same weights: the logits differ only by the inference optimisation (folded BatchNorm)
    assert np.abs(pred.logits - served.logits).max() < 0.02 * np.abs(served.logits).max()

    resumed = OnlineLearner(serving(base), tmp_path / "run", OnlineConfig(**FAST))
    assert resumed.class_names == ["disc"] and len(resumed.buffer) == 1 and resumed.steps == 3
    assert torch.equal(resumed.segmenter.backbone.class_prompts.tokens, seg.backbone.class_prompts.tokens)
    resumed.step(1)
    with pytest.raises(MedAdaptError, match="already has an adapter"):
        OnlineLearner(seg, tmp_path / "run")  # the checkpoint is loaded onto a bare backbone only


def test_learner_refuses_bad_input(base, scenes, tmp_path):
    with pytest.raises(MedAdaptError, match="unknown key"):
        OnlineConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(MedAdaptError, match="online.lr"):
        OnlineConfig(lr=2.0)
    with pytest.raises(MedAdaptError, match="nothing to train"):
        OnlineConfig(train_classes=False, prompted=[])
    with pytest.raises(MedAdaptError, match="online.prompted"):
        OnlineConfig(prompted=["scribble"])
    with pytest.raises(MedAdaptError, match="optimised for inference"):
        OnlineLearner(Segmenter(copy.deepcopy(base), device="cpu", precision="float32"), tmp_path / "x")
    seg = serving(base)
    learner = OnlineLearner(seg, tmp_path / "run", OnlineConfig(**FAST))
    s = scenes[0]
    emb, meta, label = s["embedding"], s["meta"], s["label"]
    with pytest.raises(MedAdaptError, match="original image size"):
        learner.add(emb, meta, label[:100], ["disc", "square"])
    with pytest.raises(MedAdaptError, match="values 0..2"):
        learner.add(emb, meta, label, ["disc"])
    with pytest.raises(MedAdaptError, match="whole label values"):
        learner.add(emb, meta, label.astype(np.float32), ["disc", "square"])
    with pytest.raises(MedAdaptError, match="class names"):
        learner.add(emb, meta, label, [])
    with pytest.raises(MedAdaptError, match="1 x C x h x w"):
        learner.add(emb[:, :128], meta, label, ["disc", "square"])
    with pytest.raises(MedAdaptError, match="ImageMeta"):
        learner.add(emb, (160, 220), label, ["disc", "square"])
    with pytest.raises(MedAdaptError, match="plain lists"):
        learner.add(emb, meta, label, ["disc", "square"], prompts={"box": object()})
    assert len(learner.buffer) == 0 and seg.classes == []  # nothing was created by a refused sample
    with pytest.raises(MedAdaptError, match="whole number of steps"):
        learner.step(0)


def test_proposal_clicks_train_the_correction_of_the_automatic_proposal(base, scenes, tmp_path):
    from medadapt.training.prompted import proposal_loss

    seg = serving(base)
    learner = OnlineLearner(seg, tmp_path / "run", OnlineConfig(**{**FAST, "proposal_clicks": 2}))
    s = scenes[0]
    learner.add(s["embedding"], s["meta"], s["label"] == 1, ["disc"], image_id="a")
    model, emb = learner.model, s["embedding"].float()
    m = model.processor.mask_size
    target = np.zeros((1, m, m), bool)
    target[0, 60:140, 60:140] = True
    right = torch.where(torch.from_numpy(target), 10.0, -10.0)
    rng = np.random.default_rng(0)
    assert float(proposal_loss(model, emb, right, target, 2, rng)) == 0.0  # nothing to click on: no term
    wrong = torch.full((1, m, m), -10.0)
    loss = proposal_loss(model, emb, wrong, target, 2, rng)
    assert loss.requires_grad and float(loss.detach()) > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mask_decoder.parameters())
    # in the learner, the term starts from the class tokens' own answer, with or without the automatic loss
    before = learner.step(2)
    assert np.isfinite(before) and learner.steps == 2
    only = OnlineLearner(serving(base), tmp_path / "run2", OnlineConfig(**{**FAST, "train_classes": False,
                                                                          "prompted": [], "proposal_clicks": 1}))
    only.add(s["embedding"], s["meta"], s["label"] == 1, ["disc"], image_id="a")
    assert only.step(1) > 0


# ---------------------------------------------------------------------------------------------------- repairs
def test_a_restart_trains_the_samples_the_last_session_did_not(base, scenes, tmp_path):
    """Samples accepted while the user kept working, then the app stopped: the next start trains on them (the
    checkpoint lists the samples the worker trained on)."""
    learner = OnlineLearner(serving(base), tmp_path / "run", OnlineConfig(**FAST, steps_per_sample=2))
    learner.pause = lambda: True  # the user is working: no step starts
    learner.start()
    for i, s in enumerate(scenes):
        learner.add(s["embedding"], s["meta"], s["label"] == 1, ["disc"], image_id=f"img{i}")
    learner.stop()
    learner.save()
    assert learner.steps == 0

    again = OnlineLearner(serving(base), tmp_path / "run", OnlineConfig(**FAST, steps_per_sample=2))
    again.start()
    try:
        assert again.wait_idle(timeout=300) and again.steps == 4 and again.untrained() == []
    finally:
        again.stop(timeout=120)
    info = json.loads((tmp_path / "run" / "adapter" / "adapter.json").read_text())["metadata"]["online"]
    assert len(info["trained"]) == 2 and info["steps"] == 4  # autosaved after the burst
    third = OnlineLearner(serving(base), tmp_path / "run", OnlineConfig(**FAST, steps_per_sample=2))
    third.start()
    try:
        assert third.wait_idle(timeout=60) and third.steps == 4  # nothing left to train
    finally:
        third.stop(timeout=120)


def test_an_add_does_not_wait_for_a_running_step(base, scenes, tmp_path):
    """Accepting a sample of a known class takes no training lock: it never waits for a step (a new class waits,
    once, to be registered before its sample can be drawn)."""
    learner = OnlineLearner(serving(base), tmp_path / "run", OnlineConfig(**FAST))
    s = scenes[0]
    learner.add(s["embedding"], s["meta"], s["label"] == 1, ["disc"], image_id="a")
    held, release = threading.Event(), threading.Event()

    def step_running():  # stands in for a long background step
        with learner._train:
            held.set()
            release.wait(60)

    threading.Thread(target=step_running, daemon=True).start()
    assert held.wait(10)
    done = threading.Event()
    other = scenes[1]
    threading.Thread(target=lambda: (learner.add(other["embedding"], other["meta"], other["label"] == 1, ["disc"],
                                                 image_id="b"), done.set()), daemon=True).start()
    try:
        assert done.wait(20), "add() waited for the running step"
        assert len(learner.buffer) == 2
    finally:
        release.set()
    learner.step(1)  # the step draws the new sample with the rest
    assert sorted(learner.last_batch) == [1]


def test_the_replay_index_stays_compact_and_prompts_stay_with_their_sample(tmp_path):
    buf = ReplayBuffer(tmp_path / "buf")
    stroke = np.random.default_rng(0).uniform(0, 500, (2000, 2)).round(1).tolist()
    for i in range(3):
        buf.add(*_sample(i), ["disc", "square"], prompts={"scribbles": [[1, stroke]], "labels": []}, image_id=f"i{i}")
    text = (tmp_path / "buf" / "index.json").read_text()
    assert "prompts" not in text and "\n" not in text and len(text) < 2000
    assert "prompts" not in buf.records[0]
    for b in (buf, ReplayBuffer(tmp_path / "buf")):  # in memory and read back from the sample's own file
        assert b.get(1).record["prompts"] == {"scribbles": [[1, stroke]], "labels": []}
        assert b.get(1).record["image_id"] == "i1"

    # a buffer written before (prompts in the index, pretty-printed) reads as it was and is written compactly
    old = ReplayBuffer(tmp_path / "old")
    old.add(*_sample(0), ["disc", "square"], prompts={"points": [[1.0, 2.0]], "labels": [1]}, image_id="x")
    index = json.loads((tmp_path / "old" / "index.json").read_text())
    index["samples"][0]["prompts"] = {"points": [[1.0, 2.0]], "labels": [1]}
    (tmp_path / "old" / "index.json").write_text(json.dumps(index, indent=1))
    reopened = ReplayBuffer(tmp_path / "old")
    assert reopened.get(0).record["prompts"] == {"points": [[1.0, 2.0]], "labels": [1]}
    reopened.add(*_sample(1), ["disc", "square"], image_id="y")
    assert "prompts" not in (tmp_path / "old" / "index.json").read_text()
    assert [r["image_id"] for r in ReplayBuffer(tmp_path / "old").records] == ["x", "y"]


def test_a_second_writer_of_a_replay_buffer_is_refused_and_loses_nothing(tmp_path):
    """Two buffers on one folder (two learners): the one whose index is out of date is refused, instead of
    writing an index without the other's sample, whose file the next opening would delete."""
    first, second = ReplayBuffer(tmp_path / "buf"), ReplayBuffer(tmp_path / "buf")
    first.add(*_sample(0), ["disc", "square"], image_id="a")
    with pytest.raises(MedAdaptError, match="rewritten by another learner since this one read it.*stop the other"):
        second.add(*_sample(1), ["disc", "square"], image_id="b")
    assert len(list((tmp_path / "buf" / "samples").iterdir())) == 1
    reopened = ReplayBuffer(tmp_path / "buf")
    assert [r["image_id"] for r in reopened.records] == ["a"] and reopened.get(0).record["image_id"] == "a"
    reopened.add(*_sample(1), ["disc", "square"], image_id="b")  # the buffer opened last writes
    assert [r["image_id"] for r in ReplayBuffer(tmp_path / "buf").records] == ["a", "b"]
