"""A run writes only inside the folder the user named, writes nothing before its config and data are checked,
and a semi-supervised run that is stopped and resumed ends exactly where an unstopped one ends."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import kill_at_a_random_step
from test_ssl import _tiny_raw

from medadapt.core.errors import MedAdaptError
from medadapt.recipes import config_from_dict, finetune
from medadapt.training import trainer as trainer_module


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", "/tmp/elsewhere", "a\\b", ""])
def test_a_run_name_that_leaves_the_output_folder_is_refused(tmp_path, name):
    raw = _tiny_raw(tmp_path, 4, ["3"], {"epochs": 1}, {})
    raw["output"] = str(tmp_path / "runs")
    raw["name"] = name
    with pytest.raises(MedAdaptError, match="name") as err:
        config_from_dict(raw)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escaped").exists()


def test_a_run_name_that_links_elsewhere_is_refused(tmp_path):
    raw = _tiny_raw(tmp_path, 4, ["3"], {"epochs": 1}, {})
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "linked").symlink_to(tmp_path / "elsewhere")
    raw["output"], raw["name"] = str(tmp_path / "runs"), "linked"
    with pytest.raises(MedAdaptError, match="link"):
        finetune(config_from_dict(raw), log=lambda m: None)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_run_whose_data_fails_its_checks_writes_nothing(tmp_path):
    raw = _tiny_raw(tmp_path, 4, ["3"], {"epochs": 1}, {})
    raw["output"] = str(tmp_path / "runs")
    raw["data"]["labeled"] = ["no_such_case"]
    with pytest.raises(MedAdaptError):
        finetune(config_from_dict(raw), log=lambda m: None)
    assert not (tmp_path / "runs").exists()  # not even config.yaml


def _rows(run):
    with open(run / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _stop_at_the_third_epoch(monkeypatch):
    """Make runs stop (KeyboardInterrupt) as their third epoch starts; returns the real train_epoch."""
    epoch = trainer_module.Trainer.train_epoch

    def stop(self, bar=None):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return epoch(self, bar)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", stop)
    return epoch


def test_a_stopped_semi_supervised_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Stopped after its second epoch's checkpoint and resumed, a run ends with the weights and the log rows
    (wall seconds apart, which keep counting) of a run that was never stopped: every random generator the
    step draws from, the loop's included, is checkpointed."""
    ssl = {"threshold": 0.0, "cutmix": 1.0, "copy_paste": 0.5, "start_epoch": 1, "intensity": 0.5}
    lora = {"lora": {"rank": 2}}  # the encoder runs, so the loop's pixel noise and mixing reach the student
    whole = finetune(config_from_dict({**_tiny_raw(tmp_path / "a", 6, ["3", "4", "5"], {"epochs": 3}, ssl),
                                       "adapter": lora, "name": "whole"}), log=lambda m: None)

    raw = {**_tiny_raw(tmp_path / "b", 6, ["3", "4", "5"], {"epochs": 3}, ssl), "adapter": lora, "name": "stopped"}
    epoch = _stop_at_the_third_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        finetune(config_from_dict(raw), log=lambda m: None)
    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", epoch)
    resumed = finetune(config_from_dict(raw), resume=True, log=lambda m: None)

    a, b = _rows(whole), _rows(resumed)
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}
    assert float(b[2]["seconds"]) >= float(b[1]["seconds"])  # the clock did not restart at the resume
    wa, wb = load_file(str(whole / "adapter" / "adapter.safetensors")), load_file(str(resumed / "adapter" / "adapter.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)["trainable"]
    sb = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)["trainable"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_streamed_semi_supervised_run_killed_at_a_random_step_resumes_to_the_same_weights(tmp_path):
    """Unlabelled cases streamed a few at a time: SIGKILLed at a random step after its second checkpoint and
    resumed from it, a run ends with the weights and log rows (wall seconds apart) of a run never killed. The
    stream's generator, case order and the slices waiting in its buffer are checkpointed; the waiting slices
    are read again on resume."""
    import os
    import random
    import subprocess
    import sys

    import yaml

    ssl = {"threshold": 0.3, "cutmix": 1.0, "copy_paste": 0.5, "geometric": 0.5, "stream": True, "stream_cases": 2}

    def raw(name):
        out = _tiny_raw(tmp_path / name, 8, ["3", "4", "5", "6", "7"],
                        {"epochs": 5, "batch_size": 1, "device": "cpu", "cache_dir": str(tmp_path / name / "cache")}, ssl)
        return {**out, "name": name}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed run's process
    try:
        whole = finetune(config_from_dict(raw("whole")), log=lambda m: None)
        killed = raw("killed")
        cfg = tmp_path / "killed.yaml"
        cfg.write_text(yaml.safe_dump(killed))
        proc = subprocess.Popen([sys.executable, "-m", "medadapt", "finetune", str(cfg)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
        kill_at_a_random_step(proc, tmp_path / "killed" / "killed", random.Random())
        resumed = finetune(config_from_dict(killed), resume=True, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    a, b = _rows(whole), _rows(resumed)
    assert len(a) == len(b) == 5
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}
    sa = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    sb = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(sa["trainable"][k], sb["trainable"][k]) for k in sa["trainable"])
    assert sa["extensions"]["ssl"]["stream"] == sb["extensions"]["ssl"]["stream"]


def _png(path, value=100):
    import numpy as np
    from PIL import Image

    arr = np.full((48, 64), value, np.uint8)
    arr[10:30, 20:40] = 220
    Image.fromarray(arr).save(path)
    return path


def test_predict_never_writes_over_its_input_and_asks_before_replacing_a_file(tmp_path, capsys):
    from medadapt.cli import main

    image = _png(tmp_path / "scan.png")
    before = image.read_bytes()
    base = ["predict", str(image), "--box", "18", "8", "42", "32", "--model", "tiny_sam_vit"]
    for extra in (["--out", str(image)], ["--out", str(image), "--overwrite"],
                  ["--out", str(tmp_path / "m.png"), "--overlay", str(image), "--overwrite"]):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("medadapt: error:") and "input image" in err and "\n" not in err
    assert image.read_bytes() == before  # the scan is untouched

    other = _png(tmp_path / "mask.png", value=7)
    kept = other.read_bytes()
    assert main(base + ["--out", str(other)]) == 2
    assert "--overwrite" in capsys.readouterr().err and other.read_bytes() == kept
    assert main(base + ["--out", str(other), "--overwrite"]) == 0
    assert other.read_bytes() != kept
    assert main(base + ["--out", str(tmp_path / "x.png"), "--overlay", str(tmp_path / "x.png")]) == 2
    assert "same file" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("section, value, key", [
    ({"train": {"epochs": "ten"}}, "'ten'", "train.epochs"),
    ({"train": {"epochs": 1.5}}, "1.5", "train.epochs"),
    ({"train": {"lr": -0.1}}, "-0.1", "train.lr"),
    ({"train": {"lr": "fast"}}, "'fast'", "train.lr"),
    ({"train": {"weight_decay": float("inf")}}, "inf", "train.weight_decay"),
    ({"prompts": {"box_jitter": float("nan")}}, "nan", "prompts.box_jitter"),
    ({"train": {"amp": "yes"}}, "'yes'", "train.amp"),
    ({"train": {"seed": -1}}, "-1", "train.seed"),
    ({"prompts": {"prompted": ["points"], "n_pos": 0}}, "n_pos", "prompts.prompted"),
    ({"prompts": {"automatic": "sure"}}, "'sure'", "prompts.automatic"),
    ({"ssl": {"threshold": "high"}}, "'high'", "ssl.threshold"),
    ({"adapter": {"lora": {"rank": "big"}}}, "'big'", "adapter.lora.rank"),
])
def test_a_config_value_of_the_wrong_type_or_range_is_named_in_one_line(section, value, key):
    raw = {"data": {"root": "x", "classes": [1], "unlabeled": ["a"]}, **section}
    with pytest.raises(MedAdaptError) as err:
        config_from_dict(raw)
    msg = str(err.value)
    assert key in msg and value in msg and "\n" not in msg


def test_yaml_numbers_and_bad_overrides(tmp_path):
    from medadapt.recipes import load_config

    path = tmp_path / "c.yaml"
    path.write_text("data: {root: x, classes: [1]}\ntrain: {lr: 3e-4}\n")  # YAML reads 3e-4 as text
    assert load_config(path).train.lr == pytest.approx(3e-4)
    listed = load_config(path, ["ssl.mix_area=[1e-1, 5e-1]", "data.unlabeled=[a]"])  # the same inside a list
    assert listed.ssl.mix_area == pytest.approx([0.1, 0.5])
    with pytest.raises(MedAdaptError, match=r"train.epochs=\[1.*not valid YAML") as err:
        load_config(path, ["train.epochs=[1"])
    assert "\n" not in str(err.value)
    with pytest.raises(MedAdaptError, match="'prompts' must be a mapping"):
        load_config(path, ["prompts=yes"])


def test_yaml_on_and_off_read_as_the_setting_means_them(tmp_path):
    from medadapt.recipes import load_config

    path = tmp_path / "c.yaml"
    path.write_text("data: {root: x, classes: [1], unlabeled: [a]}\ntrain: {amp: off}\nprompts: {automatic: yes}\n"
                    "distill: {amp: off, tta: no}\n")
    cfg = load_config(path)
    assert cfg.train.amp == "off" and cfg.distill.amp == "off"  # text settings keep the word
    assert cfg.prompts.automatic is True and cfg.distill.tta is False  # true-or-false settings read it as one
    assert load_config(path, ["train.amp=bf16", "distill.tta=on"]).distill.tta is True
    with pytest.raises(MedAdaptError, match=r"train\.amp.*'on'"):
        load_config(path, ["train.amp=on"])
    with pytest.raises(MedAdaptError, match=r"prompts\.automatic: 'maybe' is not true or false"):
        load_config(path, ["prompts.automatic=maybe"])


@pytest.mark.parametrize("text", ["[1, 2]", '{"backbone": "tiny_sam_vit"}', "{not json", '{"adapter": 3}'])
def test_a_broken_adapter_description_is_one_line(tmp_path, text):
    from medadapt.adapters import read_adapter_info

    (tmp_path / "adapter.json").write_text(text)
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    with pytest.raises(MedAdaptError, match="adapter description") as err:
        read_adapter_info(tmp_path)
    assert "\n" not in str(err.value)


def test_resuming_from_a_checkpoint_without_its_keys_is_one_line(tmp_path):
    raw = _tiny_raw(tmp_path, 4, ["3"], {"epochs": 1}, {})
    run = finetune(config_from_dict(raw), log=lambda m: None)
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["optimizer"]
    torch.save(state, ckpt)
    with pytest.raises(MedAdaptError, match="not a medadapt checkpoint.*optimizer") as err:
        finetune(config_from_dict(raw), resume=True, log=lambda m: None)
    assert "\n" not in str(err.value)


def test_too_many_prompts_in_one_call_are_refused_with_the_limit_named():
    import numpy as np

    from medadapt import Segmenter

    seg = Segmenter.from_pretrained("tiny_sam_vit", device="cpu", precision="float32")
    seg.set_image(np.random.default_rng(0).random((40, 50)).astype(np.float32))
    seg.max_prompts = 8
    boxes = [[2 + i, 3, 30 + i, 33] for i in range(9)]
    with pytest.raises(MedAdaptError, match=r"9 prompts in one call; the limit is 8 \(Segmenter.max_prompts\)"):
        seg.predict(boxes=boxes)
    out = seg.predict(boxes=boxes[:8], multimask=True)
    assert out.masks.shape == (8, 40, 50) and out.all_masks.shape == (8, 3, 40, 50)


def test_a_volume_that_declares_too_many_voxels_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    """A few kB of gzip whose header declares 2000^3 voxels (32 GB as float32) is refused from its header."""
    import gzip
    import struct

    import nibabel as nib
    import numpy as np

    from medadapt.io import load_image, load_volume

    small = tmp_path / "small.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), small)
    raw = bytearray(small.read_bytes())
    raw[40:48] = struct.pack("<4h", 3, 2000, 2000, 2000)  # dim[0..3] of the NIfTI-1 header
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(bytes(raw)))
    assert bomb.stat().st_size < 10_000
    for read in (lambda: load_volume(bomb), lambda: load_image(bomb, slice_index=0)):
        with pytest.raises(MedAdaptError, match=r"declares a volume of shape \(2000, 2000, 2000\).*MEDADAPT_MAX_VOLUME_GB"):
            read()
    monkeypatch.setenv("MEDADAPT_MAX_VOLUME_GB", "0.0000001")  # the limit is the user's to set
    with pytest.raises(MedAdaptError, match="0.0000001|1e-07"):
        load_volume(small)
    monkeypatch.setenv("MEDADAPT_MAX_VOLUME_GB", "4")
    assert load_volume(small)[0].shape == (4, 4, 4)


@pytest.mark.parametrize("section, key", [
    ({"backbone": 5}, "backbone"), ({"adapter": "decoder"}, "adapter"), ({"data": "oops"}, "data"),
    ({"ssl": 5}, "ssl"), ({"ssl": {"refine": 3}}, "ssl.refine"),
])
def test_the_top_level_of_a_recipe_is_type_checked_too(section, key):
    data = {"root": "x", "classes": [1], "unlabeled": ["a"]}
    with pytest.raises(MedAdaptError, match=key) as err:
        config_from_dict({"data": data, **section})
    assert "\n" not in str(err.value)
    assert config_from_dict({"data": data, "ssl": {"refine": True}}).ssl.refine == "agree"  # the earlier form


def test_resume_without_a_checkpoint_writes_nothing(tmp_path):
    raw = _tiny_raw(tmp_path, 4, ["3"], {"epochs": 1}, {})
    raw["output"] = str(tmp_path / "runs")
    with pytest.raises(MedAdaptError, match="nothing to resume"):
        finetune(config_from_dict(raw), resume=True, log=lambda m: None)
    assert not (tmp_path / "runs").exists()


def test_a_checkpoint_written_before_extensions_had_their_entry_resumes(tmp_path):
    raw = _tiny_raw(tmp_path, 4, ["3"], {"epochs": 1}, {})
    run = finetune(config_from_dict(raw), log=lambda m: None)
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["teacher"] = state.pop("extensions")["ssl"]["teacher"]  # the earlier layout
    torch.save(state, ckpt)
    raw["train"]["epochs"] = 2
    run = finetune(config_from_dict(raw), resume=True, log=lambda m: None)
    assert len(_rows(run)) == 2


def test_a_file_is_on_disk_before_it_replaces_the_old_one_and_a_failed_sync_keeps_the_old(tmp_path, monkeypatch):
    import os

    from medadapt.core import files

    target = tmp_path / "state.json"
    files.atomic_write_json(target, {"step": 1})
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append("sync"), real_fsync(fd)))
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b)))
    files.atomic_write_json(target, {"step": 2})
    assert events == ["sync", "replace"] and '"step": 2' in target.read_text()

    def failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", failing)
    with pytest.raises(MedAdaptError, match="could not write .*state.json.*Input/output"):
        files.atomic_write_json(target, {"step": 3})
    assert '"step": 2' in target.read_text() and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_settings_that_could_never_take_effect_are_refused_before_training():
    data = {"root": "x", "classes": [1], "unlabeled": ["a"]}
    with pytest.raises(MedAdaptError, match="would never start"):
        config_from_dict({"data": data, "ssl": {"start_epoch": 5}, "train": {"epochs": 5}})
    with pytest.raises(MedAdaptError, match="distill: needs unlabelled cases"):
        config_from_dict({"data": {"root": "x", "classes": [1]}, "distill": {}})
    with pytest.raises(MedAdaptError, match="compare_peer chooses on the validation split"):
        config_from_dict({"data": data, "distill": {"compare_peer": True}})
    assert config_from_dict({"data": {**data, "val": ["b"]}, "distill": {"compare_peer": True}}).distill.compare_peer


def test_a_run_resumed_with_another_batch_size_follows_the_new_schedule(tmp_path, monkeypatch):
    """batch_size may change on resume; the learning rate then goes on from where the stopped epoch ends on the
    new schedule (it counted the old steps: the cosine stalled and never reached zero)."""
    def raw(folder, name, batch):
        r = _tiny_raw(folder, 8, [], {"epochs": 4, "batch_size": batch, "lr": 1e-3, "warmup_epochs": 0}, {})
        r.pop("ssl")
        r["data"].pop("unlabeled")
        r["data"]["labeled"] = ["0", "1", "3", "4", "5", "6"]
        return {**r, "name": name}

    small = finetune(config_from_dict(raw(tmp_path / "a", "small", 2)), log=lambda m: None)
    epoch = _stop_at_the_third_epoch(monkeypatch)
    stopped = raw(tmp_path / "b", "changed", 6)
    with pytest.raises(KeyboardInterrupt):
        finetune(config_from_dict(stopped), log=lambda m: None)
    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", epoch)
    stopped["train"]["batch_size"] = 2
    changed = finetune(config_from_dict(stopped), resume=True, log=lambda m: None)
    lrs = [float(r["lr"]) for r in _rows(changed)]
    assert lrs == pytest.approx([float(r["lr"]) for r in _rows(small)]) and lrs[-1] == pytest.approx(0.0, abs=1e-9)


def test_yaml_numbers_are_decimal_and_leading_zeros_stay_text(tmp_path):
    from medadapt.core.config import load_yaml
    from medadapt.recipes import load_config

    assert load_yaml("[001, 008, 12, 1:30, 2024-01-01, 1e-3]") == ["001", "008", 12, "1:30", "2024-01-01", 0.001]
    path = tmp_path / "c.yaml"
    path.write_text("data: {root: x, classes: [1], labeled: [001, 002]}\ntrain: {epochs: 010}\n")
    with pytest.raises(MedAdaptError, match=r"train\.epochs: '010' is not"):  # YAML 1.1 read octal 8
        load_config(path)
    assert load_config(path, ["train.epochs=10"]).data["labeled"] == ["001", "002"]  # case ids keep their zeros
    with pytest.raises(MedAdaptError, match=r"name: 2024 is not .*YAML reads it as a number: put the value in quotes"):
        load_config(path, ["train.epochs=10", "name=2024"])
    with pytest.raises(MedAdaptError, match=r"train\.amp: True is not .*YAML reads it as true or false"):
        load_config(path, ["train.epochs=10", "train.amp=true"])


def test_a_config_that_is_not_utf8_text_is_one_line(tmp_path):
    from medadapt.recipes import load_config

    path = tmp_path / "latin1.yaml"
    path.write_bytes("data: {root: x, classes: [caf\u00e9]}\n".encode("latin-1"))
    with pytest.raises(MedAdaptError, match="not a text \\(UTF-8\\) YAML file") as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_a_distill_section_is_checked_before_training(tmp_path):
    raw = _tiny_raw(tmp_path, 6, ["3"], {"epochs": 1}, {})
    raw["ssl"], raw["output"] = None, str(tmp_path / "runs")
    raw["prompts"]["automatic"] = False
    with pytest.raises(MedAdaptError, match="prompts.automatic: true"):
        config_from_dict({**raw, "distill": {}})
    raw["prompts"]["automatic"] = True
    with pytest.raises(MedAdaptError, match="rest:trian"):  # a typo in the student's cases, found before training
        finetune(config_from_dict({**raw, "distill": {"unlabeled": "rest:trian"}}), log=lambda m: None)
    assert not (tmp_path / "runs").exists()


def test_a_run_reads_its_relative_paths_from_where_it_started_and_resume_keeps_its_epochs(tmp_path, monkeypatch):
    """A run started in project A, looked at from project B (which has a data/ of its own): A's data; a run
    resumed with fewer epochs than it trained is refused; one stopped before its first checkpoint says to
    delete it."""
    import shutil
    import warnings

    from medadapt.training.run_folder import recorded_root

    a, b = tmp_path / "A", tmp_path / "B"
    raw = _tiny_raw(a, 4, ["3"], {"epochs": 1}, {})
    shutil.copytree(a / "d", b / "d")
    (b / "d" / "extra").mkdir()
    raw["data"]["root"], raw["ssl"], raw["output"] = "d", None, "../runs"  # relative, and output outside A
    monkeypatch.chdir(a)
    run = finetune(config_from_dict(raw), log=lambda m: None).resolve()
    saved = {"data": {"root": "d"}, "output": "../runs", "name": "run"}
    monkeypatch.chdir(b)
    assert recorded_root(run, saved) == str(a / "d")  # not B's d/
    (run / "started_in.json").unlink()  # a run from before the record: the run folder's place cannot tell
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert recorded_root(run, saved) == "d"
    assert "taken from the current folder" in str(said[0].message)
    monkeypatch.chdir(a)
    raw["train"]["epochs"] = 2
    finetune(config_from_dict(raw), resume=True, log=lambda m: None)
    raw["train"]["epochs"] = 1
    with pytest.raises(MedAdaptError, match="train.epochs 1 is below the 2 epochs this run has trained"):
        finetune(config_from_dict(raw), resume=True, log=lambda m: None)
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2  # as trained
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(MedAdaptError, match="no checkpoint .*delete the folder"):
        finetune(config_from_dict(raw), resume=True, log=lambda m: None)


def test_a_typo_in_the_data_section_is_named_when_the_recipe_is_read(tmp_path):
    from medadapt.recipes import load_config

    path = tmp_path / "c.yaml"
    path.write_text("data: {root: x, classes: [1], lables: masks}\n")
    with pytest.raises(MedAdaptError, match=r"unknown key\(s\) \['lables'\] in the data config"):
        load_config(path)


def test_resume_takes_a_data_section_written_out_differently_but_refuses_a_changed_one(tmp_path):
    raw = _tiny_raw(tmp_path, 4, ["3"], {"epochs": 1}, {})
    raw["ssl"] = None
    finetune(config_from_dict(raw), log=lambda m: None)
    raw["train"]["epochs"] = 2
    raw["data"] = {**raw["data"], "root": raw["data"]["root"] + "/", "on_error": "stop"}  # the default, written out
    finetune(config_from_dict(raw), resume=True, log=lambda m: None)
    raw["data"]["labeled"] = ["0"]
    with pytest.raises(MedAdaptError, match=r"changed: data\.labeled"):
        finetune(config_from_dict(raw), resume=True, log=lambda m: None)


def test_a_run_reads_its_own_config_back_as_it_was_given(tmp_path):
    """Case ids that YAML could read as numbers ('1e3', '010') come back from RUN/config.yaml as the text they were."""
    from medadapt.core.config import dump_yaml, load_yaml
    from medadapt.recipes import load_config

    raw = {"data": {"root": "x", "classes": [1], "labeled": ["1e3", "010", "yes"]}, "name": "2024"}
    assert load_yaml(dump_yaml(raw)) == raw
    import yaml

    assert yaml.safe_load(dump_yaml(raw)) == raw  # and so does any YAML 1.1 reader
    (tmp_path / "config.yaml").write_text(dump_yaml(raw))
    assert load_config(tmp_path / "config.yaml").data["labeled"] == ["1e3", "010", "yes"]
