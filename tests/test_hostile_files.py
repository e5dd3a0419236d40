"""Hostile files the other commands read: malicious pickles on every load path, broken checkpoints and
adapters, configs and overrides, resume and evaluate.

Each case runs the command line in-process (`test_hostile.refused`): exit status 2, one stderr line
`medadapt: error: ...`, and no file under the test's folder created, changed or removed. A pickle's
payload would create a marker file; every pickle case asserts that the marker never appears. One
tiny run (the random tiny SAM, one epoch on a synthetic folder dataset) is shared by the resume,
evaluate and adapter cases, each on its own copy.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import two_class_dataset, with_changes
from test_hostile import _written, listing, refused, scan

from medadapt.core.errors import MedAdaptError


# --------------------------------------------------------------------------- malicious pickles
class Payload:
    """Unpickled by anything that runs pickled code, it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def malicious(path: Path, marker: Path, form: str = "zip", key: str = "weight") -> Path:
    """A file whose loading with plain ``pickle`` / ``torch.load(weights_only=False)`` runs the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: Payload(marker), "bias": torch.zeros(2)}
    if form == "zip":
        torch.save(state, path)
    else:  # the legacy (pre-1.6) torch format: a bare pickle stream
        with open(path, "wb") as fh:
            pickle.dump(state, fh, protocol=2)
    return path


def test_the_payload_does_run_when_unpickled_unsafely(tmp_path):
    """The control: without weights_only the file runs its code, so the cases below test something."""
    marker = tmp_path / "PWNED"
    torch.load(malicious(tmp_path / "x.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt"])
@pytest.mark.parametrize("form", ["zip", "legacy"])
def test_a_malicious_backbone_checkpoint_runs_no_code(tmp_path, capfd, suffix, form):
    marker = tmp_path / "PWNED"
    evil = malicious(tmp_path / f"weights{suffix}", marker, form)
    refused(["predict", scan(tmp_path), "--model", "tiny_sam_vit", "--checkpoint", evil, "--box", 2, 2, 20, 20,
             "--out", tmp_path / "out.png"], capfd, tmp_path, "could not read checkpoint .*weights")
    assert not marker.exists()


def test_a_malicious_hugging_face_sam_runs_no_code(tmp_path, capfd):
    from test_hf_sam import tiny_config

    marker = tmp_path / "PWNED"
    folder = tmp_path / "hf_sam"
    tiny_config().save_pretrained(folder)
    malicious(folder / "pytorch_model.bin", marker, key="vision_encoder.neck.conv1.weight")
    refused(["predict", scan(tmp_path), "--model", "sam_hf", "--checkpoint", folder, "--box", 2, 2, 20, 20,
             "--out", tmp_path / "out.png"], capfd, tmp_path, "could not read .*pytorch_model.bin")
    assert not marker.exists()


def test_a_malicious_clip_model_runs_no_code(tmp_path, capfd):
    marker = tmp_path / "PWNED"
    folder = tmp_path / "clip"
    folder.mkdir()
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                          "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    malicious(folder / "open_clip_pytorch_model.bin", marker, key="positional_embedding")
    refused(["predict", scan(tmp_path), "--model", "tiny_sam_vit", "--text", "liver", "--clip", folder,
             "--out", tmp_path / "out.png"], capfd, tmp_path, "could not build the CLIP model from .*UnpicklingError")
    assert not marker.exists()


def test_a_malicious_npy_image_runs_no_code(tmp_path, capfd):
    marker = tmp_path / "PWNED"
    np.save(tmp_path / "scan.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    refused(["predict", tmp_path / "scan.npy", "--model", "tiny_sam_vit", "--box", 2, 2, 20, 20,
             "--out", tmp_path / "out.png"], capfd, tmp_path, "holds Python objects, not numbers")
    assert not marker.exists()


def test_a_malicious_text_encoder_runs_no_code(tmp_path):
    """The learned-text encoder is a transformers folder; its weights are read without running code."""
    from transformers import BertConfig

    from medadapt.prompts.text.learned import load_sentence_encoder

    marker = tmp_path / "PWNED"
    folder = tmp_path / "encoder"
    BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=16).save_pretrained(folder)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nliver\nheart\nlung\n")
    malicious(folder / "pytorch_model.bin", marker, key="embeddings.word_embeddings.weight")
    with pytest.raises(MedAdaptError, match="could not load the text encoder"):
        load_sentence_encoder(folder)
    assert not marker.exists()


def test_a_config_with_python_tags_runs_no_code(tmp_path, capfd):
    marker = tmp_path / "PWNED"
    (tmp_path / "recipe.yaml").write_text(
        f"data: !!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').close()\"]\n")
    refused(["finetune", tmp_path / "recipe.yaml"], capfd, tmp_path, "is not valid YAML")
    assert not marker.exists()


# --------------------------------------------------------------------------- broken checkpoints
def _tensor_file(root):
    torch.save(torch.zeros(3), root / "weights.pth")
    return root / "weights.pth"


def _truncated_checkpoint(root):
    from medadapt.foundation import build_backbone

    torch.save(build_backbone("tiny_sam_vit").state_dict(), root / "full.pth")
    raw = (root / "full.pth").read_bytes()
    (root / "full.pth").unlink()
    (root / "weights.pth").write_bytes(raw[: len(raw) // 2])
    return root / "weights.pth"


def _other_model(root):
    from medadapt.foundation import build_backbone

    state = build_backbone("tiny_sam_vit").state_dict()
    state = {k: v[..., :1] if v.ndim else v for k, v in list(state.items())[:-3]}  # cut shapes, drop keys
    torch.save(state, root / "weights.pth")
    return root / "weights.pth"


CHECKPOINTS = {
    "not_a_state_dict": (_tensor_file, "does not hold a dictionary of tensors"),
    "truncated": (_truncated_checkpoint, "could not read checkpoint"),
    "another_models_weights": (_other_model, "does not match this architecture .*missing keys"),
    "garbage_safetensors": (lambda r: _written(r, "weights.safetensors", b"\x08" + b"\0" * 64),
                            "could not read checkpoint"),
    "missing_file": (lambda r: r / "nowhere.pth", "checkpoint not found"),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_a_broken_backbone_checkpoint_is_one_line(tmp_path, capfd, case):
    make, expect = CHECKPOINTS[case]
    refused(["predict", scan(tmp_path), "--model", "tiny_sam_vit", "--checkpoint", make(tmp_path),
             "--box", 2, 2, 20, 20, "--out", tmp_path / "out.png"], capfd, tmp_path, expect)


# --------------------------------------------------------------------------- one tiny run, shared
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(data folder, run folder, the data folder's listing) of one epoch of the tiny SAM on 5 synthetic cases."""
    from medadapt.recipes import config_from_dict, finetune

    base = tmp_path_factory.mktemp("hostile_run")
    root = two_class_dataset(base / "data", n=5, size=48)
    cfg = {"backbone": "tiny_sam_vit",
           "data": {"root": str(root), "layout": "folder", "classes": ["disc", "square"],
                    "labeled": ["000", "001"], "val": ["002"], "test": ["003", "004"]},
           "prompts": {"automatic": True, "prompted": []},
           "train": {"epochs": 1, "batch_size": 2, "tensorboard": False},
           "output": str(base / "runs"), "name": "run"}
    before = listing(root)
    return root, finetune(config_from_dict(cfg), log=lambda m: None), before


@pytest.fixture()
def run(tiny, tmp_path):
    """A copy of the tiny run in this test's folder; its config.yaml writes there too."""
    copy = shutil.copytree(tiny[1], tmp_path / "runs" / "run")
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["output"] = str(tmp_path / "runs")
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return copy


# --------------------------------------------------------------------------- adapters
def _json(run, text):
    (run / "adapter" / "adapter.json").write_text(text)


def _adapter_section(run, **section):
    info = json.loads((run / "adapter" / "adapter.json").read_text())
    info["adapter"].update(section)
    _json(run, json.dumps(info))


def _weights_as_described(run):
    """adapter.json names the weights file now there (a pair put together by hand, not a save cut short)."""
    from medadapt.foundation.checkpoint import sha256_file

    _adapter_field(run, weights_sha256=sha256_file(run / "adapter" / "adapter.safetensors"))


def _adapter_field(run, **fields):
    info = json.loads((run / "adapter" / "adapter.json").read_text())
    _json(run, json.dumps({**info, **fields}))


def _reshaped(run):
    from safetensors.torch import load_file, save_file

    state = load_file(str(run / "adapter" / "adapter.safetensors"))
    key = sorted(state)[0]
    state[key] = torch.zeros(*[n + 1 for n in state[key].shape])
    save_file(state, str(run / "adapter" / "adapter.safetensors"))
    _weights_as_described(run)


def _other_base(run):
    from medadapt.foundation import build_backbone

    state = build_backbone("tiny_sam_vit").state_dict()
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, run.parent / "other_base.pth")
    return ["--checkpoint", run.parent / "other_base.pth"]


ADAPTERS = {
    "description_is_a_list": (lambda r: _json(r, "[1, 2]"), "adapter description .* is not one medadapt writes"),
    "description_not_json": (lambda r: _json(r, "{not json"), "is not valid JSON"),
    "description_without_adapter": (lambda r: _json(r, json.dumps({"backbone": "tiny_sam_vit"})),
                                    "needs an object with an 'adapter' section"),
    "section_of_wrong_type": (lambda r: _adapter_section(r, lora={"rank": "big"}), r"adapter.lora.rank: 'big'"),
    "section_out_of_range": (lambda r: _adapter_section(r, context={"hidden": 8, "dilations": [0]}),
                             r"adapter.context.dilations: \[0\] is out of range"),
    "weights_of_other_shapes": (_reshaped, r"adapter tensor .* has shape \(\d+,?.*\), model expects"),
    "weights_not_safetensors": (lambda r: _written(r / "adapter", "adapter.safetensors", b"\xff" * 32)
                                and _weights_as_described(r), "could not read adapter weights"),
    "weights_of_another_save": (lambda r: _written(r / "adapter", "adapter.safetensors", b"\xff" * 32) and None,
                                "is not the weights file .* was saved with"),
    "weights_missing": (lambda r: (r / "adapter" / "adapter.safetensors").unlink(), "adapter weights not found"),
    "another_backbone": (lambda r: ["--model", "tiny_litemedsam"], "was trained on backbone 'tiny_sam_vit'"),
    "other_base_weights": (_other_base, "different tiny_sam_vit base weights"),
}


@pytest.mark.parametrize("case", list(ADAPTERS))
def test_a_broken_or_foreign_adapter_is_one_line(run, capfd, case):
    make, expect = ADAPTERS[case]
    extra = make(run) or []
    model = [] if "--model" in extra else ["--model", "tiny_sam_vit"]
    refused(["predict", scan(run.parent), *model, *extra, "--adapter", run, "--out", run.parent / "out.png"],
            capfd, run.parent.parent, expect)


def test_a_missing_adapter_is_one_line(tmp_path, capfd):
    refused(["predict", scan(tmp_path), "--model", "tiny_sam_vit", "--adapter", tmp_path / "no_run",
             "--out", tmp_path / "out.png"], capfd, tmp_path, "adapter not found: .*no_run")


# --------------------------------------------------------------------------- resume
def _evil_checkpoint(run):
    marker = run.parent.parent / "PWNED"
    malicious(run / "checkpoints" / "last.pt", marker)
    return marker


def _truncated_last(run):
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])


RESUMES = {
    "malicious_checkpoint": (_evil_checkpoint, [], "could not read .*last.pt"),
    "truncated_checkpoint": (_truncated_last, [], "could not read .*last.pt"),
    "checkpoint_of_a_tensor": (lambda r: torch.save(torch.zeros(2), r / "checkpoints" / "last.pt"), [],
                               "is not a medadapt checkpoint"),
    "changed_adapter": (lambda r: None, ["adapter.context={hidden: 8}"], r"--resume with a different .*changed: adapter"),
    "changed_classes": (lambda r: None, ["data.classes=[disc]"], r"changed: data"),
}


@pytest.mark.parametrize("case", list(RESUMES))
def test_resuming_from_a_broken_or_foreign_checkpoint_is_one_line_and_keeps_the_run(run, capfd, case):
    make, overrides, expect = RESUMES[case]
    marker = make(run)
    refused(["finetune", run / "config.yaml", *overrides, "--resume"], capfd, run.parent.parent, expect)
    assert marker is None or not marker.exists()


# --------------------------------------------------------------------------- evaluate
def _data_with_a_malicious_mask(run):
    data = run.parent.parent / "other_data"
    shutil.copytree(Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]), data)
    marker = run.parent.parent / "PWNED"
    (data / "masks" / "003.png").unlink()
    np.save(data / "masks" / "003.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return ["--data", data, "--split", "test"], marker


EVALUATIONS = {
    "not_a_run": (lambda r: (["--data", r.parent], None), "no adapter found at .*runs: give a run folder"),
    "config_not_yaml": (lambda r: _written(r, "config.yaml", b"data: [unclosed\n") and ([], None), "not valid YAML"),
    "config_without_data": (lambda r: _written(r, "config.yaml", b"backbone: tiny_sam_vit\n") and ([], None),
                            "config.yaml has no data: section"),
    "missing_data_folder": (lambda r: (["--data", r.parent / "nowhere"], None),
                            "--data must be a dataset folder or a data YAML file; .*nowhere is neither"),
    "mask_with_a_pickle": (_data_with_a_malicious_mask, "003.npy holds Python objects, not numbers"),
    "unknown_split": (lambda r: (["--split", "training"], None), "unknown split 'training'"),
    "out_is_a_file": (lambda r: _written(r.parent, "report", b"x") and (["--out", r.parent / "report"], None),
                      "--out .*report is a file"),
}


@pytest.mark.parametrize("case", list(EVALUATIONS))
def test_evaluating_a_broken_run_or_dataset_is_one_line(run, capfd, case):
    make, expect = EVALUATIONS[case]
    extra, marker = make(run)
    target = run.parent if case == "not_a_run" else run
    refused(["evaluate", target, "--metrics", "dice", "--modes", "automatic", *extra], capfd, run.parent.parent,
            expect)
    assert marker is None or not marker.exists()


# --------------------------------------------------------------------------- configs and overrides
def _recipe(root: Path, text: str | None = None, **changes) -> Path:
    raw = {"backbone": "tiny_sam_vit",
           "data": {"root": str(root / "data"), "layout": "folder", "classes": [1], "labeled": ["0"]},
           "prompts": {"automatic": True, "prompted": []}, "train": {"epochs": 1},
           "output": str(root / "runs"), "name": "run"}
    with_changes(raw, changes)
    path = root / "recipe.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(raw))
    return path


def _alias_bomb() -> str:
    """A few hundred bytes of YAML whose labelled ids are 9^8 strings when spelled out."""
    lines = ["data:", "  root: data", "  classes: [1]", "  labeled:", "    - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"    - &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


CONFIGS = {
    "missing_file": (lambda r: r / "nowhere.yaml", [], "config not found"),
    "not_yaml": (lambda r: _recipe(r, "data: [unclosed\n"), [], "is not valid YAML"),
    "a_list": (lambda r: _recipe(r, "- data\n- train\n"), [], "must be a mapping of sections"),
    "misspelt_section": (lambda r: _recipe(r, trian={"epochs": 1}), [], r"unknown key\(s\) \['trian'\]"),
    "axis_as_text": (lambda r: _recipe(r, data__axis="2"), [], r"data.axis: '2' is not a whole number"),
    "unknown_window": (lambda r: _recipe(r, data__window="abdomenn"), [], r"data.window: unknown window preset"),
    "reversed_percentiles": (lambda r: _recipe(r, data__percentiles=[99, 1]), [],
                             r"data.percentiles: \[99.0, 1.0\] is out of range"),
    "no_classes": (lambda r: _recipe(r, data__classes=[]), [], "data.classes must be a non-empty list"),
    "ssl_strength_out_of_range": (lambda r: _recipe(r, ssl={"intensity": 2}), ["data.unlabeled=[x]"],
                                  r"ssl.intensity: 2 is out of range; allowed: a strength in \[0, 1\]"),
    "negative_lora_alpha": (lambda r: _recipe(r, adapter={"lora": {"alpha": -1}}), [],
                            r"adapter.lora.alpha: -1 is out of range"),
    "name_leaves_output": (lambda r: _recipe(r, name="../../elsewhere"), [], "must be a single folder name"),
    "alias_bomb": (lambda r: _recipe(r, _alias_bomb()), [], r"data.labeled has non-text ids \[\[.*\]; quote them"),
    "data_folder_missing": (lambda r: _recipe(r), [], "not a folder|not found"),
    "override_without_equals": (lambda r: _recipe(r), ["train.epochs"], "is not key=value"),
    "override_into_a_value": (lambda r: _recipe(r), ["train.epochs.x=1"], "epochs is not a section"),
    "override_not_yaml": (lambda r: _recipe(r), ["train.epochs=[1"], "not valid YAML"),
    "override_misspelt": (lambda r: _recipe(r), ["train.epoch=5"], r"unknown key\(s\) \['epoch'\]"),
    "override_wrong_type": (lambda r: _recipe(r), ["train.epochs=ten"], r"train.epochs: 'ten' is not a whole number"),
    "override_nan": (lambda r: _recipe(r), ["ssl.threshold=.nan", "data.unlabeled=[x]"],
                     r"ssl.threshold: nan is out of range"),
    "override_empty_root": (lambda r: _recipe(r), ["data.root="], "data.root must be the dataset folder"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_a_bad_config_or_override_is_one_line_and_writes_nothing(tmp_path, capfd, case):
    make, overrides, expect = CONFIGS[case]
    line = refused(["finetune", make(tmp_path), *overrides], capfd, tmp_path, expect)
    assert len(line) < 500 and not (tmp_path / "runs").exists()


def test_error_lines_carry_no_terminal_control_codes(tmp_path, capfd):
    """torch's refusal of a pickle is bold-faced with ANSI escapes; the one line users see has none."""
    evil = malicious(tmp_path / "weights.pth", tmp_path / "PWNED")
    line = refused(["predict", scan(tmp_path), "--model", "tiny_sam_vit", "--checkpoint", evil,
                    "--box", 2, 2, 20, 20, "--out", tmp_path / "out.png"], capfd, tmp_path, "checkpoint")
    assert "\x1b" not in line and all(c.isprintable() for c in line)


def test_the_shared_dataset_was_never_written(tiny):
    """The dataset is read by the run and by the resume and evaluate cases above; none of its files changed."""
    root, _, before = tiny
    assert listing(root) == before and len(before) == 2 * 5 + 3  # images/, masks/, dataset.json
