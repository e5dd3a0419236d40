"""Few-label fine-tuning end to end on data the test makes: training, resume, evaluation, errors."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from medadapt import MedAdaptError, Segmenter
from medadapt.io.imaging import load_mask
from medadapt.recipes import config_from_dict, finetune, load_config


def make_disc_dataset(root, n=12, size=96, seed=0):
    """A 2-D folder dataset: bright discs at random places on a noisy background, 0/255 masks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        r = rng.integers(12, 24)
        cy, cx = rng.integers(r + 2, size - r - 2, 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        img = np.where(mask, 170, 70) + rng.normal(0, 12, (size, size))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"{i:03d}.png")
    return root


def config(root, out, backbone="tiny_sam_vit", epochs=2, **train):
    return {
        "backbone": backbone,
        "data": {"root": str(root), "layout": "folder", "classes": [1],
                 "labeled": [f"{i:03d}" for i in range(8)], "val": [f"{i:03d}" for i in range(8, 12)]},
        "adapter": {"train": ["mask_decoder"]},
        "prompts": {"automatic": True, "prompted": ["box", "points"], "corrective_clicks": 1},
        "train": {"epochs": epochs, "batch_size": 4, "lr": 1e-3, "tensorboard": False, **train},
        "output": str(out), "name": "run",
    }


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    return make_disc_dataset(tmp_path_factory.mktemp("discs"))


def test_finetune_pretrained_model_learns_automatic_segmentation(discs, tmp_path, litemedsam_cache):
    """Real LiteMedSAM, decoder + class tokens on cached embeddings: automatic Dice must rise."""
    raw = config(discs, tmp_path, "litemedsam", epochs=6, lr=3e-4, cache_dir=str(litemedsam_cache))
    run = finetune(config_from_dict(raw), log=lambda m: None)
    metrics = json.loads((run / "metrics.json").read_text())
    first = metrics["history"][0]["val_dice"]
    assert metrics["best_val_dice"] > 0.85, metrics["history"]
    assert metrics["best_val_dice"] > first or first > 0.85
    for name in ("adapter/adapter.safetensors", "adapter/adapter.json", "config.yaml", "log.csv",
                 "checkpoints/last.pt", "val_overlays.png"):
        assert (run / name).exists(), name
    seg = Segmenter.from_pretrained("litemedsam", adapter=run, device="cpu")
    img = np.asarray(Image.open(discs / "images" / "010.png"), dtype=np.float32)
    seg.set_image(img)
    out = seg.predict()
    assert out.masks.shape == (1, 96, 96) and out.label_values == [1] and len(out.labels) == 1
    assert seg.predict(classes=[1]).masks.shape == (1, 96, 96)
    truth = np.asarray(Image.open(discs / "masks" / "010.png")) > 0
    refined = seg.predict(refine=True)  # self-prompted: a box around its own mask, through the adapted decoder
    assert refined.masks.shape == (1, 96, 96) and refined.label_values == [1]
    assert 2 * (refined.masks[0] & truth).sum() / (refined.masks[0].sum() + truth.sum()) > 0.85
    with pytest.raises(MedAdaptError, match="unknown class"):
        seg.predict(classes=["liver"])
    boxed = seg.predict(boxes=[[10, 10, 80, 80]])  # prompted mode still works through the adapted decoder
    assert boxed.masks.shape == (1, 96, 96)
    labels = seg.predict_volume(np.stack([img, img], axis=2), axis=2, refine=True) == 1
    both = np.stack([truth, truth], axis=2)  # the same orientation as the volume
    assert 2 * (labels & both).sum() / (labels.sum() + both.sum()) > 0.85


def test_context_adapter_trains_on_cached_embeddings_and_reloads(discs, tmp_path):
    """The context adapter sits after the encoder: the run still caches embeddings, and the adapter trains and reloads."""
    cfg = config(discs, tmp_path, epochs=2)
    cfg["adapter"]["context"] = {"hidden": 8, "dilations": [1, 2]}
    messages = []
    run = finetune(config_from_dict(cfg), log=messages.append)
    assert any("embeddings cached" in m for m in messages), messages[:3]
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=run, device="cpu")
    up = seg.backbone.context_adapter.up.weight
    assert up.abs().max().item() > 0, "the zero-initialised projection never trained"
    img = np.asarray(Image.open(discs / "images" / "010.png"), dtype=np.float32)
    seg.set_image(img)
    adapted = seg.predict()
    assert adapted.masks.shape == (1, 96, 96)
    assert json.loads((run / "adapter" / "adapter.json").read_text())["adapter"]["context"]["dilations"] == [1, 2]
    with torch.no_grad():
        up.zero_()  # the adapter switched off: the predictor must not be reading the embedding without it
    seg.set_image(img)
    assert np.abs(seg.predict().logits - adapted.logits).max() > 1e-4


def test_cached_views_add_augmented_samples(discs, tmp_path):
    """train.cache_views: N augmented copies per labelled slice join the cached training set."""
    from medadapt.recipes import build_trainer

    cfg = config_from_dict(config(discs, tmp_path, cache_views=2))
    tr = build_trainer(cfg, tmp_path, log=lambda m: None)
    n = len(tr.train_slices)
    assert len(tr.train_samples) == 3 * n
    keys = {s.key for s in tr.train_samples}
    assert len(keys) == 3 * n  # every view is a different image
    for view in tr.train_samples[n:]:
        assert (view.target > 0).any()  # the disc is still labelled after the transform


def test_a_damaged_file_in_the_embedding_cache_is_encoded_again_with_a_warning(discs, tmp_path):
    from safetensors.torch import load_file

    cache = tmp_path / "cache"
    finetune(config_from_dict(config(discs, tmp_path / "a", epochs=1, cache_dir=str(cache))), log=lambda m: None)
    files = sorted(cache.rglob("*.safetensors"))
    files[0].write_bytes(files[0].read_bytes()[:100])  # a copy cut short
    with pytest.warns(UserWarning, match=f"{files[0].name}.*damaged.*encoding the slice again"):
        finetune(config_from_dict(config(discs, tmp_path / "b", epochs=1, cache_dir=str(cache))), log=lambda m: None)
    assert load_file(str(files[0]))["embedding"].ndim == 3  # rewritten


def test_kill_then_resume_continues_from_the_last_checkpoint(discs, tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(config(discs, tmp_path, epochs=40)))
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-m", "medadapt", "finetune", str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint was written before the kill"
    rows_before = len((tmp_path / "run" / "log.csv").read_text().strip().splitlines()) - 1
    assert 1 <= rows_before < 40
    with pytest.raises(MedAdaptError, match="--resume"):
        finetune(load_config(cfg_path), log=lambda m: None)
    run = finetune(load_config(cfg_path, ["train.epochs=40"]), resume=True, log=lambda m: None)
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 40
    rows = (run / "log.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 41))
    with pytest.raises(MedAdaptError, match="different data/adapter/prompt config"):
        finetune(load_config(cfg_path, ["adapter.train=[prompt_encoder]"]), resume=True, log=lambda m: None)


def test_a_resume_onto_another_optimiser_or_other_base_weights_is_refused_before_anything_is_written(discs, tmp_path):
    """The optimiser's state would bring back the recorded learning rate, and epochs trained on other base weights
    would be compared with the earlier ones: both are refused, naming what changed, and the run is left as it was."""
    from safetensors.torch import save_file

    from medadapt.foundation import build_backbone

    base = tmp_path / "base.safetensors"
    weights = build_backbone("tiny_sam_vit").state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(base))
    raw = {**config(discs, tmp_path, epochs=1), "checkpoint": str(base)}
    run = finetune(config_from_dict(raw), log=lambda m: None)
    recorded = (run / "config.yaml").read_text()
    longer = {**raw, "train": {**raw["train"], "epochs": 2}}
    for key, value in (("lr", 0.5), ("seed", 7), ("max_val_cases", 1)):
        changed = {**longer, "train": {**longer["train"], key: value}}
        with pytest.raises(MedAdaptError, match=f"cannot change train.{key}"):
            finetune(config_from_dict(changed), resume=True, log=lambda m: None)
    torch.manual_seed(1)  # the file at the same path now holds other weights (a newer release, say)
    save_file({k: (v + torch.randn_like(v)).contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in weights.items()}, str(base))
    with pytest.raises(MedAdaptError, match="other tiny_sam_vit base weights"):
        finetune(config_from_dict(longer), resume=True, log=lambda m: None)
    assert (run / "config.yaml").read_text() == recorded
    assert len((run / "log.csv").read_text().strip().splitlines()) == 2  # the header and epoch 1


def test_a_finished_run_is_never_trained_over_and_the_command_line_reads_overrides_after_its_options(discs, tmp_path,
                                                                                                     capsys):
    from medadapt.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config(discs, tmp_path, epochs=1)))
    assert main(["finetune", str(cfg)]) == 0
    assert main(["finetune", str(cfg), "--resume", "train.epochs=2"]) == 0  # key=value after an option
    run = tmp_path / "run"
    assert len((run / "log.csv").read_text().strip().splitlines()) == 3
    kept = (run / "adapter" / "adapter.safetensors").read_bytes()
    shutil.rmtree(run / "checkpoints")  # disk space back, the run kept
    capsys.readouterr()
    assert main(["finetune", str(cfg), "train.seed=3"]) == 2
    assert "already holds adapter, config.yaml, log.csv, metrics.json" in capsys.readouterr().err
    assert (run / "adapter" / "adapter.safetensors").read_bytes() == kept
    # the run's own backbone, without --model
    out = tmp_path / "mask.png"
    assert main(["predict", str(discs / "images" / "010.png"), "--adapter", str(run), "--out", str(out)]) == 0
    assert load_mask(out).shape == (96, 96)


def test_a_run_started_with_relative_paths_is_evaluated_from_any_folder(tmp_path, monkeypatch):
    from medadapt.evaluation.evaluate import evaluate_run

    make_disc_dataset(tmp_path / "project" / "data", n=12)
    monkeypatch.chdir(tmp_path / "project")
    run = finetune(config_from_dict(config("data", "runs", epochs=1)), log=lambda m: None)  # data.root: data
    monkeypatch.chdir(tmp_path)  # elsewhere, where ./data is not the dataset
    report = evaluate_run(tmp_path / "project" / run, split="val", modes=["box"], metrics=["dice"])
    assert len({r.case_id for r in report}) == 4


def test_resume_drops_log_rows_ahead_of_the_checkpoint(tmp_path):
    """A kill after an epoch's log row but before its checkpoint must not leave that epoch twice in log.csv."""
    from medadapt.training.run_folder import truncate_log

    log = tmp_path / "log.csv"
    log.write_text("epoch,loss\n1,0.5\n2,0.4\n3,0.3\n4,0.2\n")
    truncate_log(log, 3)
    assert log.read_text() == "epoch,loss\n1,0.5\n2,0.4\n3,0.3\n"
    truncate_log(log, 3)  # nothing ahead: unchanged
    assert log.read_text().count("\n") == 4


def test_evaluate_writes_per_case_report(discs, tmp_path):
    from medadapt.evaluation.evaluate import evaluate_run

    run = finetune(config_from_dict(config(discs, tmp_path, epochs=1)), log=lambda m: None)
    report = evaluate_run(run, split="val")
    modes = {r["mode"] for r in report.summary()}
    assert modes == {"automatic", "self-prompted", "box", "1-click"}
    assert (run / "eval_val" / "evaluation.json").exists() and (run / "eval_val" / "evaluation.csv").exists()
    assert len((run / "eval_val" / "evaluation.csv").read_text().strip().splitlines()) == 1 + 4 * 4


def test_corrupt_image_is_named_or_skipped(tmp_path):
    root = make_disc_dataset(tmp_path / "data", seed=1)
    (root / "images" / "003.png").write_bytes(b"this is not a png")
    with pytest.raises(MedAdaptError, match="003.png"):
        finetune(config_from_dict(config(root, tmp_path / "a", epochs=1)), log=lambda m: None)
    cfg = config(root, tmp_path / "b", epochs=1)
    cfg["data"]["on_error"] = "skip"
    messages = []
    with pytest.warns(UserWarning, match="003.png"):
        finetune(config_from_dict(cfg), log=messages.append)
    assert any("skipped" in m and "003.png" in m for m in messages)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(MedAdaptError, match="lrr"):
        config_from_dict({"data": {"root": "x", "classes": [1]}, "train": {"lrr": 1}})
    with pytest.raises(MedAdaptError, match="data"):
        config_from_dict({})
    with pytest.raises(MedAdaptError, match="key=value"):
        load_config(_write(tmp_path / "c.yaml", {"data": {"root": "x", "classes": [1]}}), ["epochs"])
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 3\ndata: {root: x, classes: [1]}\ntrain:\n  lr: 0.001\n")
    with pytest.raises(MedAdaptError, match="found 'train' a second time"):  # YAML alone keeps the last silently
        load_config(twice)


def test_paths_in_configs_expand_variables_and_home_and_name_an_unset_variable(tmp_path, monkeypatch):
    from medadapt.training.run_folder import run_folder

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MY_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    cfg = config_from_dict({"data": {"root": "${MY_DATA}/acdc", "classes": [1]}, "output": "~/runs", "name": "a"})
    assert run_folder(cfg) == tmp_path / "runs" / "a"
    from medadapt.data import DataConfig

    assert DataConfig.from_dict(cfg.data).root == str(tmp_path / "data" / "acdc")
    with pytest.raises(MedAdaptError, match="variable NOT_SET_HERE is not set"):
        DataConfig.from_dict({"root": "${NOT_SET_HERE}/acdc", "classes": [1]})


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_saved_config_is_a_complete_recipe(discs, tmp_path):
    """run/config.yaml after a tiny run loads back into the same FinetuneConfig: it is the recipe, complete."""
    raw = config(discs, tmp_path, epochs=1)
    raw["data"].update(classes={"disc": 1}, labeled={"range": ["000", "005"]},
                       unlabeled={"range": ["006", "007"], "every": 1}, val={"pattern": r"0(08|09|10|11)"})
    raw["adapter"]["context"] = {"hidden": 8, "dilations": [1, 2]}
    raw["prompts"]["prompted"] = []
    raw["ssl"] = {"unlabeled_batch_size": 2, "start_epoch": 0, "rampup_epochs": 0, "refine_iterations": 2}
    cfg = config_from_dict(raw)
    run = finetune(cfg, log=lambda m: None)
    again = load_config(run / "config.yaml")
    assert again == cfg
    assert again.data["labeled"] == {"range": ["000", "005"]} and again.ssl.mix_area == cfg.ssl.mix_area


def test_shipped_recipes_load_and_twins_differ_only_by_the_loop():
    """Every configs/<dataset>/<recipe>.yaml is a valid recipe; a *_supervised.yaml twin is its *_ssl.yaml
    without the ssl section (and so without unlabelled data), so the two runs differ only by the loop."""
    from pathlib import Path

    from medadapt.adapters import AdapterConfig
    from medadapt.data import DataConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    recipes = sorted(root.glob("*/*.yaml"))
    assert recipes and not list(root.glob("*.yaml")), "recipes live in configs/<dataset>/<recipe>.yaml"
    for path in recipes:
        cfg = load_config(path)
        DataConfig.from_dict(cfg.data)
        AdapterConfig.from_dict(cfg.adapter)
        assert cfg.name and cfg.name.startswith(path.parent.name + "_"), path
    twins = sorted(root.glob("*/*_supervised.yaml"))
    assert twins
    for path in twins:
        sup = load_config(path).to_dict()
        ssl = load_config(path.with_name(path.name.replace("_supervised", "_ssl"))).to_dict()
        assert sup["ssl"] is None and ssl["ssl"] is not None
        ssl["data"].pop("unlabeled")
        for d in (sup, ssl):
            d.pop("ssl"), d.pop("name")
        assert sup == ssl, path
