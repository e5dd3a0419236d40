"""``medadapt export`` and ``Segmenter.from_pretrained(DIR, runtime="onnxruntime")``: the exported graphs give
PyTorch's answers (logits within 1e-3, identical masks) through the same API, for a pretrained model and for an
adapted one with LoRA, a context adapter and learned class tokens; bad folders give one-line errors.

The models are the small random ``tiny_sam_vit`` (the same segment-anything code paths at 64 px), so that two
exports and their checks take seconds; ``benchmarks/speed.py`` checks the real LiteMedSAM the same way.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys

import numpy as np
import pytest
import torch
from conftest import disc_image

pytest.importorskip("onnxruntime", reason="the export tests need onnxruntime: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="the export tests need onnxscript: pip install -e '.[export]'")

from medadapt import MedAdaptError, Segmenter  # noqa: E402
from medadapt.adapters import (  # noqa: E402
    AdapterConfig,
    AutomaticConfig,
    ContextAdapterConfig,
    LoraConfig,
    apply,
    load_adapted,
    save_adapter,
)
from medadapt.cli import main  # noqa: E402
from medadapt.export import export_onnx  # noqa: E402
from medadapt.foundation import build_backbone  # noqa: E402
from medadapt.inference.onnx_runtime import MANIFEST_NAME, read_manifest, settings_digest  # noqa: E402

TOL = 1e-3
BOXES5 = [[75, 45, 165, 135], [10, 10, 100, 90], [120, 20, 230, 170], [60, 30, 180, 150], [0, 0, 239, 179]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The pretrained tiny model exported through the command line."""
    out = tmp_path_factory.mktemp("export") / "tiny"
    assert main(["export", "tiny_sam_vit", "--format", "onnx", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A run folder with LoRA (encoder and decoder attention), a context adapter and two learned classes, and its export.

    Every trained tensor is moved off its initial value (LoRA B starts at zero), so each adapter changes the outputs.
    """
    root = tmp_path_factory.mktemp("adapted")
    config = AdapterConfig(lora=LoraConfig(rank=2, targets=["encoder_attention", "decoder_attention"]),
                           context=ContextAdapterConfig(hidden=4, dilations=[1, 2]),
                           automatic=AutomaticConfig(["disc", "square"], [1, 2]), train=["mask_decoder"])
    model, _ = apply(build_backbone("tiny_sam_vit"), config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    save_adapter(model, root / "run" / "adapter")
    result = export_onnx(root / "run", root / "onnx")
    return root / "run", result


def _pair(torch_backbone, folder):
    return Segmenter(torch_backbone, device="cpu"), Segmenter.from_pretrained(folder, runtime="onnxruntime")


def _assert_same(a, b, seg=None):
    """Two answers agree: logits within TOL, and masks equal, except (given ``seg``, the reference segmenter on the
    same image) at pixels where the reference's full-size logit is within 2 x TOL of the threshold, which logits that
    agree to TOL may put on either side (it depends on the CPU's kernels)."""
    assert a.masks.shape == b.masks.shape
    assert np.abs(a.logits - b.logits).max() <= TOL
    differ = a.masks != b.masks
    if differ.any():
        assert seg is not None, "the masks differ"
        near = np.abs(seg.full_size_logits(a.logits)) <= 2 * TOL
        assert near[differ].all(), "the masks differ where the logits are not at the threshold"
        assert differ.mean() < 1e-3
    assert np.allclose(a.scores, b.scores, atol=TOL)


def test_cli_export_writes_checked_graphs_and_manifest(exported):
    manifest = json.loads((exported / MANIFEST_NAME).read_text())
    assert sorted(p.name for p in exported.iterdir()) == ["decoder.onnx", "encoder.onnx", MANIFEST_NAME]
    assert manifest["backbone"]["name"] == "tiny_sam_vit" and manifest["classes"] is None
    assert manifest["processor"]["image_size"] == 64 and manifest["written_with"]["opset"] == 18
    diffs = manifest["check"]["max_abs_diff"]
    assert set(diffs) == {"embedding", "logits", "iou"} and max(diffs.values()) <= TOL


def test_pretrained_export_answers_boxes_points_and_masks_as_torch(exported):
    ref, onnx = _pair(build_backbone("tiny_sam_vit"), exported)
    image, _ = disc_image(seed=1)
    for seg in (ref, onnx):
        seg.set_image(image)
    assert np.abs(ref._embedding.numpy() - onnx._embedding.numpy()).max() <= TOL
    for boxes in (BOXES5[:1], BOXES5):  # one decoder graph, any number of prompts
        _assert_same(ref.predict(boxes=boxes), onnx.predict(boxes=boxes))
    clicks = dict(points=[[120, 90], [10, 10]], point_labels=[1, 0], multimask=True)
    a, b = ref.predict(**clicks), onnx.predict(**clicks)
    _assert_same(a, b)
    assert np.array_equal(a.all_masks, b.all_masks) and np.allclose(a.all_scores, b.all_scores, atol=TOL)
    both = dict(boxes=BOXES5[:2], points=[[[120, 90]], [[50, 50]]])  # a box and a click per object
    _assert_same(ref.predict(**both), onnx.predict(**both))
    again = dict(boxes=BOXES5[:1], mask_input=a.logits)  # a mask prompt
    _assert_same(ref.predict(**again), onnx.predict(**again))


def test_adapted_run_exports_with_lora_merged_and_class_decoding(adapted):
    run, result = adapted
    manifest = result.manifest
    assert manifest["lora_merged"] and manifest["graphs"]["classes"] == "classes.onnx"
    assert manifest["classes"] == {"names": ["disc", "square"], "label_values": [1, 2]}
    assert manifest["weights_fingerprint"] != manifest["backbone"]["fingerprint"]  # the adapters changed the weights
    assert max(result.max_abs_diff.values()) <= TOL and "class_logits" in result.max_abs_diff

    ref, onnx = _pair(load_adapted(run / "adapter"), result.folder)  # torch: LoRA not merged
    assert onnx.classes == ["disc", "square"]
    image, _ = disc_image(seed=2)
    for seg in (ref, onnx):
        seg.set_image(image)
    a, b = ref.predict(), onnx.predict()  # automatic: every class, decoded jointly
    _assert_same(a, b)
    assert a.labels == b.labels and a.label_values == b.label_values
    _assert_same(ref.predict(classes=["square"]), onnx.predict(classes=["square"]))
    _assert_same(ref.predict(refine=True), onnx.predict(refine=True))
    _assert_same(ref.predict(boxes=BOXES5), onnx.predict(boxes=BOXES5), ref)
    volume = np.stack([disc_image(seed=s)[0] for s in range(3)], axis=2)
    assert np.array_equal(ref.predict_volume(volume), onnx.predict_volume(volume))


def test_the_manifest_names_what_the_torch_path_uses_and_the_export_leaves_out(adapted):
    from medadapt.export.onnx_export import not_exported

    run, result = adapted
    assert result.manifest["not_exported"] == []  # LoRA in the encoder: no base decoder walk, no student
    decoder_only, _ = apply(build_backbone("tiny_sam_vit"), AdapterConfig(train=["mask_decoder"]))
    assert not_exported(decoder_only, {"adapter": "RUN/adapter", "student": "RUN/student"}) == ["student", "base_decoder"]
    assert not_exported(decoder_only, {"adapter": None}) == []


def test_export_refuses_to_replace_without_overwrite(exported, tmp_path, capsys):
    assert main(["export", "tiny_sam_vit", "--out", str(exported)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medadapt: error:") and "--overwrite" in err and "\n" not in err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["export", "tiny_sam_vit", "--out", str(other), "--overwrite"]) == 2
    assert (other / "keep.txt").read_text() == "mine"
    assert main(["export", "no_such_model", "--out", str(tmp_path / "x")]) == 2
    assert "neither a backbone" in capsys.readouterr().err


def test_replacing_an_export_keeps_the_users_files_its_link_and_the_old_export_if_interrupted(exported, tmp_path,
                                                                                            monkeypatch):
    import os

    from medadapt.export import onnx_export

    notes = tmp_path / "with_notes"
    shutil.copytree(exported, notes)
    (notes / "NOTES.md").write_text("mine")
    with pytest.raises(MedAdaptError, match=r"holds an export and also \['NOTES.md'\]: move them out"):
        export_onnx("tiny_sam_vit", notes, overwrite=True)
    assert (notes / "NOTES.md").read_text() == "mine"
    # a link to an earlier export stays a link; the folder it names gets the new export
    shutil.copytree(exported, tmp_path / "releases" / "v1")
    (tmp_path / "current").symlink_to(tmp_path / "releases" / "v1")
    before = (tmp_path / "releases" / "v1" / MANIFEST_NAME).stat().st_mtime_ns
    export_onnx("tiny_sam_vit", tmp_path / "current", overwrite=True)
    assert (tmp_path / "current").is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == [
        "current", "releases", "with_notes"]
    assert (tmp_path / "releases" / "v1" / MANIFEST_NAME).stat().st_mtime_ns != before
    # interrupted between moving the old export aside and the new one in: the old one is put back
    staging, out = tmp_path / "staging", tmp_path / "out"
    staging.mkdir()
    out.mkdir()
    (out / "old.txt").write_text("old")
    real, calls = os.replace, []

    def interrupted(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(onnx_export.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        onnx_export._move_into_place(staging, out)
    assert (out / "old.txt").read_text() == "old"


def test_a_folder_named_like_a_backbone_does_not_hide_it_and_a_runs_student_is_named_from_its_adapter(
        adapted, tmp_path, monkeypatch):
    from medadapt.export.onnx_export import load_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_sam_vit").mkdir()  # e.g. left by `medadapt export tiny_sam_vit --out tiny_sam_vit`
    assert load_source("tiny_sam_vit")[1] == {"backbone": "tiny_sam_vit", "checkpoint": None, "adapter": None}
    run, _ = adapted
    distilled = tmp_path / "distilled"
    shutil.copytree(run, distilled)
    (distilled / "student").mkdir()
    (distilled / "student" / "student.json").write_text("{}")  # only its presence is read here
    for given in (distilled, distilled / "adapter"):
        assert load_source(given)[1]["student"] == str(distilled / "student")


def test_an_export_loaded_without_its_runtime_or_asked_for_learned_text_says_what_to_do(exported, tmp_path):
    from medadapt.adapters.config import LearnedTextConfig

    with pytest.raises(MedAdaptError, match="written by `medadapt export`: load it with runtime='onnxruntime'"):
        Segmenter.from_pretrained(exported)
    cfg = AdapterConfig(automatic=AutomaticConfig(["disc"], [1]), text=LearnedTextConfig(embed_dim=8), train=[])
    model, _ = apply(build_backbone("tiny_sam_vit"), cfg)
    save_adapter(model, tmp_path / "run" / "adapter")
    assert "text_head" in export_onnx(tmp_path / "run", tmp_path / "onnx").manifest["not_exported"]
    seg = Segmenter.from_pretrained(tmp_path / "onnx", runtime="onnxruntime")
    seg.set_image(disc_image()[0])
    with pytest.raises(MedAdaptError, match="this export leaves the adapter's learned text prompts out.*torch runtime"):
        seg.predict(text="disc")


def _one_line_error(folder, match):
    with pytest.raises(MedAdaptError, match=match) as info:
        Segmenter.from_pretrained(folder, runtime="onnxruntime")
    assert "\n" not in str(info.value)


def _flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_foreign_incomplete_or_altered_folders_give_one_line_errors(exported, tmp_path):
    _one_line_error(tmp_path / "missing", "export folder not found")
    _one_line_error(tmp_path, "not a medadapt export")
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    _flip_byte(copy / "decoder.onnx", 1000)
    _one_line_error(copy, "checksum")
    (copy / "decoder.onnx").unlink()
    _one_line_error(copy, "missing")
    (copy / MANIFEST_NAME).write_text(json.dumps({**manifest, "format": "something-else"}))
    _one_line_error(copy, "does not describe a medadapt ONNX export")
    (copy / MANIFEST_NAME).write_text("{not json")
    _one_line_error(copy, "not valid JSON")
    shutil.copy(exported / "decoder.onnx", copy / "decoder.onnx")
    edited = {**manifest, "processor": {**manifest["processor"], "keep_aspect": not manifest["processor"]["keep_aspect"]}}
    (copy / MANIFEST_NAME).write_text(json.dumps(edited))  # the graphs would be read another way: refused
    _one_line_error(copy, "edited after the export")
    for version in (True, 0, -7):
        (copy / MANIFEST_NAME).write_text(json.dumps({**manifest, "format_version": version}))
        _one_line_error(copy, "format version")
    assert read_manifest(exported)["format_version"] == 1


def test_weights_held_outside_a_graph_are_listed_checked_and_required(exported, tmp_path):
    """A graph over 2 GB keeps its weights in a file beside it (ONNX external data): the manifest lists that file
    with its checksum, and loading refuses the folder when it is altered, missing or named outside the folder."""
    import onnx

    from medadapt.export.onnx_export import external_data_files
    from medadapt.foundation.checkpoint import sha256_file

    assert external_data_files(exported / "decoder.onnx") == []  # small graphs hold their own weights
    assert read_manifest(exported)["data_files"] == {}
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    graph = onnx.load(str(copy / "decoder.onnx"))
    onnx.save_model(graph, str(copy / "decoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="decoder.onnx.data", size_threshold=1024)
    assert external_data_files(copy / "decoder.onnx") == ["decoder.onnx.data"]
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["data_files"] = {"decoder.onnx": ["decoder.onnx.data"]}
    manifest["sha256"].update({n: sha256_file(copy / n) for n in ("decoder.onnx", "decoder.onnx.data")})
    manifest["settings_sha256"] = settings_digest(manifest)  # as the exporter writes it
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    image, _ = disc_image(seed=3)
    answers = []
    for folder in (exported, copy):
        seg = Segmenter.from_pretrained(folder, runtime="onnxruntime")
        seg.set_image(image)
        answers.append(seg.predict(boxes=np.array([BOXES5[0]], np.float32)))
    _assert_same(answers[0], answers[1])
    _flip_byte(copy / "decoder.onnx.data", 100)  # one weight changed
    _one_line_error(copy, "holds the weights of decoder.onnx, does not match the checksum")
    (copy / "decoder.onnx.data").unlink()
    _one_line_error(copy, "holds the weights of decoder.onnx, is missing")
    (copy / MANIFEST_NAME).write_text(json.dumps({**manifest, "data_files": {"decoder.onnx": ["../decoder.onnx.data"]}}))
    _one_line_error(copy, "not a file of the export folder")


def test_runtime_arguments_are_checked(exported, monkeypatch):
    with pytest.raises(MedAdaptError, match="drop checkpoint= and adapter="):
        Segmenter.from_pretrained(exported, runtime="onnxruntime", adapter="run")
    with pytest.raises(MedAdaptError, match="float32"):
        Segmenter.from_pretrained(exported, runtime="onnxruntime", precision="bfloat16")
    with pytest.raises(MedAdaptError, match="unknown runtime"):
        Segmenter.from_pretrained(exported, runtime="tensorrt")
    with pytest.raises(MedAdaptError, match="runs on the CPU"):
        Segmenter.from_pretrained(exported, runtime="onnxruntime", device="cuda")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(MedAdaptError, match=r"pip install 'medadapt\[export\]'"):
        Segmenter.from_pretrained(exported, runtime="onnxruntime")


@pytest.fixture
def no_network(monkeypatch):
    """Every way to open a connection raises and is recorded (as in test_offline.py)."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the network is switched off in this test")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                        (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)
    return attempts


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_exported_runtimes_run_offline_and_agree(exported, runtime, no_network):
    if runtime == "openvino":
        pytest.importorskip("openvino", reason="runtime='openvino' needs the package openvino (optional)")
    ref = Segmenter(build_backbone("tiny_sam_vit"), device="cpu")
    seg = Segmenter.from_pretrained(exported, runtime=runtime)
    image, _ = disc_image(seed=4)
    for s in (ref, seg):
        s.set_image(image)
    for boxes in (BOXES5[:1], BOXES5):
        _assert_same(ref.predict(boxes=boxes), seg.predict(boxes=boxes), ref)  # masks may differ at the threshold
    assert no_network == []
