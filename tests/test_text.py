"""Zero-shot text prompts: CLIP saliency -> boxes and clicks -> SAM decoder, all offline.

The key test trains a small CLIP inside the test (a few seconds on a CPU) on
synthetic scenes of circles and squares with captions naming them, then asks
the real LiteMedSAM decoder, through text prompts alone, for "circle" and
"square" on scenes holding both: each text must find its own shape and leave
the other alone.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import disc_image
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from medadapt import MedAdaptError, Prediction, Segmenter
from medadapt.cli import main
from medadapt.inference import segment_from_text
from medadapt.prompts import (
    BIOMEDCLIP,
    ClipTextModel,
    Prompts,
    TextPromptConfig,
    load_clip,
    prompts_from_saliency,
    text_saliency,
)

NAMES = ("circle", "square")
# Brightness differs as well as shape, so that a two-layer ViT trained from
# scratch learns the classes in a few hundred steps; the shapes are what SAM
# has to outline.
BRIGHTNESS = {"circle": (0.75, 0.95), "square": (0.45, 0.6)}


class WordTokenizer:
    """A whole-word tokenizer for a tiny vocabulary (open_clip's BPE table would dwarf the model).

    Laid out like CLIP's: start token, words, end token, zero padding; the end
    token has the highest id because open_clip pools the text at the argmax id.
    """

    def __init__(self, words, context_length: int = 16):
        self.vocab = {w: i + 2 for i, w in enumerate(sorted(set(words)))}  # 0 padding, 1 unknown
        self.sot = len(self.vocab) + 2
        self.eot = self.sot + 1
        self.size = self.eot + 1
        self.context_length = context_length

    def __call__(self, texts):
        texts = [texts] if isinstance(texts, str) else texts
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            words = re.findall(r"[a-z]+", t.lower())[: self.context_length - 2]
            ids = [self.sot, *(self.vocab.get(w, 1) for w in words), self.eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def _tokenizer() -> WordTokenizer:
    words = re.findall(r"[a-z]+", " ".join([*TextPromptConfig().templates, *NAMES, "disc", "a"]))
    return WordTokenizer(words)


def _shape(kind: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    if kind == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    half = 0.886 * r  # the square has the disc's area
    return (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)


def scene(rng: np.random.Generator, kinds, size: int = 64, margin: float = 2):
    """Shapes of the given kinds at random, well separated places on a dark noisy background.

    Returns the image in [0, 1] and {kind: mask}. Sizes scale with ``size``
    (radius 7-12 px and ``margin`` px from the border at 64 px), so a 256 px
    scene looks like a 64 px one to a model that works at 64 px.
    """
    s = size / 64
    image = np.full((size, size), rng.uniform(0.05, 0.2))
    masks, placed = {}, []
    for kind in kinds:
        for _ in range(200):
            r = rng.uniform(7, 12) * s
            cy, cx = rng.uniform(r + margin * s, size - r - margin * s, 2)
            if all(np.hypot(cy - y, cx - x) > 1.3 * (r + q) + 3 * s for y, x, q in placed):
                break
        placed.append((cy, cx, r))
        masks[kind] = _shape(kind, size, cy, cx, r)
        image[masks[kind]] = rng.uniform(*BRIGHTNESS[kind])
    image = image + rng.normal(0, 0.03, image.shape)
    return np.clip(image, 0, 1).astype(np.float32), masks


def two_shapes(seed: int, size: int = 256):
    """A scene with one circle and one square, as the uint8 image a user would load."""
    image, masks = scene(np.random.default_rng(1000 + seed), NAMES, size, margin=4)
    assert not (masks["circle"] & masks["square"]).any()
    return np.round(image * 255).astype(np.uint8), masks


def train_shape_clip(steps: int = 400, batch: int = 32, seed: int = 0) -> tuple[torch.nn.Module, WordTokenizer]:
    """A 64 px CLIP trained image-text (sigmoid loss, every template) on random scenes.

    Each scene holds a circle, a square, both or neither, and each caption is
    scored independently (SigLIP-style), so "square" has to mean "there is a
    square here" rather than "not a circle": the evidence for a text is where
    its shape is, which is what a saliency map can then find.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tok = _tokenizer()
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(image_size=64, patch_size=8, width=64, layers=1, head_width=16, mlp_ratio=2.0),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=tok.size, width=32, heads=2, layers=1, mlp_ratio=2.0),
        init_logit_scale=float(np.log(10)),
        init_logit_bias=0.0,
    )
    templates = TextPromptConfig().templates
    tokens = tok([t.format(n) for n in NAMES for t in templates])
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        present = rng.random((batch, 2)) < 0.5
        images = [scene(rng, [n for n, p in zip(NAMES, row) if p])[0] for row in present]
        x = (torch.from_numpy(np.stack(images))[:, None].expand(-1, 3, -1, -1) - mean) / std
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1).view(len(NAMES), len(templates), -1)
        logits = model.logit_scale.exp() * torch.einsum("bd,ctd->bct", img, txt) + model.logit_bias
        target = torch.from_numpy(present).float()[:, :, None].expand_as(logits)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval(), tok


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def covered(mask: np.ndarray, obj: np.ndarray) -> float:
    """Fraction of ``obj`` inside ``mask``."""
    return float((mask & obj).sum() / obj.sum())


@pytest.fixture(scope="module")
def shape_clip():
    start = time.perf_counter()
    model, tok = train_shape_clip()
    clip = load_clip(model, tokenizer=tok, device="cpu")
    clip.train_seconds = time.perf_counter() - start
    return clip


@pytest.fixture()
def decoder(litemedsam):
    """The session's LiteMedSAM in a fresh Segmenter, so attaching a text model does not leak."""
    return Segmenter(litemedsam.backbone, device="cpu")


@pytest.fixture()
def no_network(monkeypatch):
    """Every way to reach the network (a name lookup included) raises and is recorded; any attempt fails the
    test, even one a library caught and retried."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError("the network is switched off in this test")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                        (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)
    yield attempts
    assert attempts == [], f"network access attempted: {attempts[:3]}"


@pytest.fixture()
def empty_hf_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf" / "hub"


# ------------------------------------------------------------------ acceptance
def test_text_prompts_segment_the_named_shape_and_not_the_other(shape_clip, decoder):
    print(f"training the test CLIP took {shape_clip.train_seconds:.1f} s")
    decoder.set_text_model(shape_clip)
    for seed in range(4):
        image, masks = two_shapes(seed)
        decoder.set_image(image)
        pred = decoder.predict(text=list(NAMES))  # each text is scored against the other
        assert pred.labels == list(NAMES) and pred.masks.shape == (2, 256, 256)
        for i, name in enumerate(NAMES):
            other = masks[NAMES[1 - i]]
            assert dice(pred.masks[i], masks[name]) >= 0.8, (seed, name, dice(pred.masks[i], masks[name]))
            assert covered(pred.masks[i], other) < 0.1, (seed, name, covered(pred.masks[i], other))


def test_saliency_of_the_trained_clip_peaks_on_the_named_shape(shape_clip):
    image, masks = two_shapes(7)
    maps = text_saliency(shape_clip, image, list(NAMES))
    for i, name in enumerate(NAMES):
        y, x = np.unravel_index(np.argmax(maps[i]), maps[i].shape)
        assert masks[name][y, x], name
        assert maps[i][masks[name]].mean() > 3 * maps[i][masks[NAMES[1 - i]]].mean()


# ------------------------------------------------------------------ plumbing
@pytest.fixture(scope="module")
def random_clip():
    torch.manual_seed(0)
    tok = _tokenizer()
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(image_size=32, patch_size=8, width=32, layers=1, head_width=16),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=tok.size, width=16, heads=2, layers=1),
    )
    return load_clip(model, tokenizer=tok, device="cpu")


@pytest.mark.parametrize("method", ["gradcam", "similarity", ("gradcam", "similarity")])
def test_saliency_maps_have_the_image_size_and_unit_range(random_clip, method):
    image = disc_image(h=50, w=70, center=(25, 30), radius=12)[0]
    cfg = TextPromptConfig(saliency=method)
    one = text_saliency(random_clip, image, "circle", config=cfg)
    many = text_saliency(random_clip, image, ["circle", "square"], config=cfg)
    assert one.shape == (50, 70) and many.shape == (2, 50, 70)
    for m in (one, *many):
        assert m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1
        assert m.max() == 0 or np.isclose(m.max(), 1)
    with torch.inference_mode():  # how Segmenter.predict calls it
        assert np.allclose(text_saliency(random_clip, image, "circle", config=cfg), one, atol=1e-5)


def test_templates_and_synonyms_are_averaged_into_one_embedding(random_clip):
    cfg = TextPromptConfig(templates=("a {}", "{}"), synonyms={"circle": ["disc"]})
    got = random_clip.embed_texts(["circle", "square"], cfg)
    with torch.no_grad():
        sentences = random_clip.model.encode_text(random_clip.tokenizer(["a circle", "circle", "a disc", "disc"]))
        want = F.normalize(F.normalize(sentences, dim=-1).mean(0), dim=-1)
    assert got.shape == (2, 16)
    assert torch.allclose(got[0], want, atol=1e-6)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert not torch.allclose(got[0], random_clip.embed_texts(["circle"])[0], atol=1e-4)  # synonyms count
    # as the tokenizer reads it: "Circle " is the text the synonyms were given for
    assert torch.allclose(random_clip.embed_texts(["Circle "], cfg)[0],
                          random_clip.embed_texts(["Circle "], TextPromptConfig(templates=("a {}", "{}"), synonyms={
                              "Circle ": ["disc"]}))[0])
    from medadapt.prompts.text.config import as_texts

    with pytest.raises(MedAdaptError, match="distinct"):  # the same text to a tokenizer: each would cancel the other
        as_texts(["circle", "Circle"])


def _blobs(h=80, w=120):
    yy, xx = np.mgrid[:h, :w]
    strong = np.exp(-((yy - 20) ** 2 + (xx - 30) ** 2) / (2 * 8.0**2))
    weak = 0.8 * np.exp(-((yy - 60) ** 2 + (xx - 90) ** 2) / (2 * 6.0**2))
    sal = strong + weak
    sal[5, 110] = 0.9  # a one-pixel speck
    return sal.astype(np.float32)


def test_prompts_from_saliency_boxes_components_and_clicks():
    sal = _blobs()
    cfg = TextPromptConfig(max_components=3, n_positive_points=2, n_negative_points=2, min_component_area=0.005,
                           prompt_kinds=("box+points",))
    p = prompts_from_saliency(sal, cfg)
    assert isinstance(p, Prompts) and len(p) == 2  # the speck is dropped
    x0, y0, x1, y1 = p.boxes[0]
    assert x0 < 30 < x1 and y0 < 20 < y1  # strongest component first
    x0, y0, x1, y1 = p.boxes[1]
    assert x0 < 90 < x1 and y0 < 60 < y1
    assert p.points.shape == (2, 4, 2) and p.point_labels.shape == (2, 4)
    s = sal / sal.max()
    for pts, labs, box in zip(p.points, p.point_labels, p.boxes):
        for (x, y), lab in zip(pts, labs):
            if lab == 1:
                assert s[int(y), int(x)] >= 0.5 and box[0] <= x <= box[2] and box[1] <= y <= box[3]
            elif lab == 0:
                assert s[int(y), int(x)] < 0.5
    assert (p.point_labels[:, :2] == 1).all()
    assert np.array_equal(p.points[0, 0], [30, 20])  # the first click is the peak

    assert len(prompts_from_saliency(sal, TextPromptConfig(max_components=1))) == 1
    assert len(prompts_from_saliency(sal, TextPromptConfig(max_components=5, min_component_area=0))) == 3
    assert len(prompts_from_saliency(sal, TextPromptConfig(threshold="otsu", max_components=5))) >= 2
    assert len(prompts_from_saliency(np.zeros((10, 10)), cfg)) == 0
    box_only = prompts_from_saliency(sal, TextPromptConfig(n_positive_points=0))
    assert box_only.points is None and box_only.boxes.shape == (1, 4)


def test_predict_text_returns_one_fused_mask_per_text(random_clip, decoder):
    image, _ = disc_image()
    kinds = dict(prompt_kinds=("box", "box+points", "points"), n_negative_points=1, max_components=2,
                 box_scales=(1.5,), box_shifts=False)
    decoder.set_text_model(random_clip, TextPromptConfig(**kinds))
    decoder.set_image(image)
    union = decoder.predict(text=["circle", "square"])
    assert isinstance(union, Prediction) and union.labels == ["circle", "square"]
    assert union.masks.shape == (2, 180, 240) and union.masks.dtype == bool
    assert union.scores.shape == (2,) and union.logits.shape == (2, 256, 256)
    vote = segment_from_text(decoder, random_clip, None, ["circle", "square"], TextPromptConfig(**kinds, fusion="vote"))
    assert np.all(union.masks >= vote.masks)  # a majority of the kinds lies inside their union
    one = decoder.predict(text="circle")
    assert one.masks.shape == (1, 180, 240) and one.labels == ["circle"]
    image2 = np.flipud(image).copy()
    other = segment_from_text(decoder, random_clip, image2, "circle")  # sets the new image first
    assert other.masks.shape == (1, 180, 240) and decoder._image is not None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"templates": ("no placeholder",)}, "'{}'"),
        ({"templates": ("the {} {x}",)}, "'{}'"),
        ({"templates": ("a {} }",)}, "'{}'"),
        ({"templates": ("{{}}",)}, "'{}'"),
        ({"saliency": "attention"}, "saliency"),
        ({"threshold": 1.5}, "threshold"),
        ({"fusion": "max"}, "fusion"),
        ({"prompt_kinds": ("mask",)}, "prompt_kinds"),
        ({"max_components": 0}, "max_components"),
        ({"n_positive_points": -1}, "n_positive_points"),
        ({"box_scales": (0.0,)}, "box_scales"),
        ({"prompt_kinds": ("points",), "n_positive_points": 0}, "n_positive_points >= 1"),
    ],
)
def test_config_mistakes_are_reported(kwargs, message):
    with pytest.raises(MedAdaptError, match=re.escape(message)):
        TextPromptConfig(**kwargs)


@pytest.mark.parametrize("clicks", [{"n_positive_points": 3}, {"n_negative_points": 1},
                                    {"n_positive_points": 2, "n_negative_points": 2}])
def test_clicks_without_a_prompt_kind_that_decodes_them_are_refused(clicks):
    for kinds in (("box",), "box"):  # the default decodes boxes alone: the clicks would change nothing
        with pytest.raises(MedAdaptError, match=re.escape("add 'box+points'")):
            TextPromptConfig(**clicks, prompt_kinds=kinds)
    for kinds in (("box", "box+points"), ("points",)):
        assert TextPromptConfig(**clicks, prompt_kinds=kinds).prompt_kinds == kinds
    assert TextPromptConfig(n_positive_points=0).prompt_kinds == ("box",)  # no clicks at all: nothing is lost


# ------------------------------------------------------------------ loading, offline
def _save_folder(folder, model_cfg, state_dict, extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.save(state_dict, folder / "open_clip_pytorch_model.bin")
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)


def test_load_clip_reads_an_hf_hub_name_from_the_local_cache(empty_hf_home, no_network):
    torch.manual_seed(1)
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                          "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    ref = open_clip.CLIP(**cfg).eval()
    repo = empty_hf_home / "models--someone--tiny-clip"
    _save_folder(repo / "snapshots" / "abc123", cfg, ref.state_dict())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    clip = load_clip("hf-hub:someone/tiny-clip", device="cpu")
    assert isinstance(clip, ClipTextModel) and clip.image_size == (32, 32) and clip.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        want = F.normalize(ref.encode_text(open_clip.SimpleTokenizer(context_length=16)(["a photo of the liver."])), dim=-1)
    assert torch.allclose(clip.embed_texts(["liver"], TextPromptConfig(templates=("a photo of the {}.",))), want, atol=1e-5)
    assert text_saliency(clip, disc_image()[0], "liver").shape == (180, 240)


def test_load_clip_builds_a_biomedclip_like_model_offline(empty_hf_home, no_network, tmp_path):
    """The BiomedCLIP layout: timm ViT trunk, Hugging Face BERT text tower, tokenizer files in the repo."""
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "the", "liver", "kidney", "."]
    text_repo = empty_hf_home / "models--tiny--bert" / "snapshots" / "r1"
    text_repo.mkdir(parents=True)
    transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64).save_pretrained(text_repo)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": "tiny/bert", "hf_tokenizer_name": "tiny/bert", "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32},
    }
    build_cfg = json.loads(json.dumps(cfg))
    build_cfg["text_cfg"]["hf_model_name"] = str(text_repo)
    build_cfg["text_cfg"]["hf_model_pretrained"] = False
    torch.manual_seed(2)
    ref = open_clip.CustomTextCLIP(**build_cfg).eval()
    tokenizer_files = {"vocab.txt": "\n".join(vocab) + "\n",
                       "tokenizer_config.json": json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True})}
    _save_folder(empty_hf_home / "models--tiny--biomedclip" / "snapshots" / "r2", cfg, ref.state_dict(), tokenizer_files)

    clip = load_clip("hf-hub:tiny/biomedclip", device="cpu")
    assert clip.image_size == (224, 224)
    ids = clip.tokenizer(["a photo of the liver."])
    assert ids.shape == (1, 32) and ids[0, 0].item() == vocab.index("[CLS]")
    with torch.no_grad():
        want = F.normalize(ref.encode_text(ids), dim=-1)[0]
    got = clip.embed_texts(["liver"], TextPromptConfig(templates=("a photo of the {}.",)))[0]
    assert torch.allclose(got, want, atol=1e-5)
    image = disc_image()[0]
    for method in ("gradcam", "similarity"):  # both work on a timm trunk
        maps = text_saliency(clip, image, ["liver", "kidney"], config=TextPromptConfig(saliency=method))
        assert maps.shape == (2, 180, 240) and np.isfinite(maps).all()

    # The same files as a plain folder (text model config next to them) load as well.
    folder = tmp_path / "biomedclip"
    _save_folder(folder, cfg, ref.state_dict(), {**tokenizer_files, "config.json": (text_repo / "config.json").read_text()})
    assert torch.allclose(load_clip(folder, device="cpu").embed_texts(["liver"]), clip.embed_texts(["liver"]), atol=1e-5)


def test_missing_biomedclip_says_where_it_looked_and_what_to_put_there(empty_hf_home, no_network):
    with pytest.raises(MedAdaptError) as info:
        load_clip(BIOMEDCLIP)
    msg = str(info.value)
    assert str(empty_hf_home / "models--microsoft--BiomedCLIP-PubMedBERT_256-vit_base_patch16_224") in msg
    for needed in ("open_clip_config.json", "open_clip_pytorch_model.bin", "vocab.txt", "huggingface-cli download",
                   "HF_HOME", "BiomedBERT"):
        assert needed in msg, needed
    assert "\n" not in msg


def test_missing_text_model_of_a_cached_clip_is_named(empty_hf_home, no_network):
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1},
           "text_cfg": {"hf_model_name": "nobody/text-model", "hf_tokenizer_name": "nobody/text-model"}}
    _save_folder(empty_hf_home / "models--someone--clip" / "snapshots" / "r", cfg, {})
    with pytest.raises(MedAdaptError, match="nobody/text-model") as info:
        load_clip("hf-hub:someone/clip")
    assert str(empty_hf_home / "models--nobody--text-model") in str(info.value)


def test_architecture_names_need_a_local_weights_file(tmp_path, no_network):
    with pytest.raises(MedAdaptError, match=re.escape(str(tmp_path))):
        load_clip("ViT-B-16", weights=tmp_path / "missing.pt")
    with pytest.raises(MedAdaptError, match="weights=FILE"):
        load_clip("ViT-B-16")
    with pytest.raises(MedAdaptError, match="unknown CLIP model"):
        load_clip("not-a-model")
    with pytest.raises(MedAdaptError, match="open_clip CLIP model"):
        load_clip(torch.nn.Linear(2, 2))


def _bert_files(folder, config: bool):
    """A Hugging Face repository's tokenizer files (and a tiny text model config) as a cache snapshot holds them."""
    transformers = pytest.importorskip("transformers")
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "liver"]) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    if config:
        transformers.RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64).save_pretrained(folder)


def test_architectures_with_a_hugging_face_text_side_are_read_from_the_cache_or_refused_at_once(
    empty_hf_home, no_network, tmp_path
):
    """ViT-B-16-SigLIP reads its tokenizer, roberta-ViT-B-32 its text model and tokenizer, from Hugging Face
    repositories: not cached, they are refused at once, naming the repository and the folder looked in, and
    the network is never tried (no_network fails the test on any attempt)."""
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    with pytest.raises(MedAdaptError, match="text model from the Hugging Face repository roberta-base"):
        load_clip("roberta-ViT-B-32", weights=weights)
    with pytest.raises(MedAdaptError, match="tokenizer from the Hugging Face repository timm/ViT-B-16-SigLIP") as info:
        load_clip("ViT-B-16-SigLIP", weights=weights)
    assert str(empty_hf_home / "models--timm--ViT-B-16-SigLIP") in str(info.value)
    assert "huggingface-cli download timm/ViT-B-16-SigLIP" in str(info.value) and "\n" not in str(info.value)

    # cached: the text model's config and the tokenizer come from the cache; the model is built without the
    # network, and only the (empty) checkpoint is refused
    _bert_files(empty_hf_home / "models--roberta-base" / "snapshots" / "r1", config=True)
    torch.save({"not_a_clip_weight": torch.zeros(1)}, weights)
    with pytest.raises(MedAdaptError, match="(?s)could not load roberta-ViT-B-32 from .*Missing key.*text.transformer"):
        load_clip("roberta-ViT-B-32", weights=weights)


def test_hugging_face_libraries_stay_offline_while_a_clip_model_is_built(no_network, tmp_path, monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE when it is imported (long before a model is loaded), so the guard
    switches its own flag too: a file it would fetch is refused at once, and everything is restored after."""
    import huggingface_hub
    from huggingface_hub import constants

    from medadapt.prompts.text.hub import offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as in a process started without the variable
    with offline():
        assert huggingface_hub.is_offline_mode()
        with pytest.raises(OSError, match="local cache"):  # what a file missing offline raises
            huggingface_hub.hf_hub_download("timm/ViT-B-16-SigLIP", "tokenizer.json", cache_dir=tmp_path)
    assert constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ


def test_the_legacy_hub_cache_variable_is_honoured(tmp_path, monkeypatch, no_network):
    """HUGGINGFACE_HUB_CACHE, the older name huggingface_hub still reads, places the cache after HF_HUB_CACHE
    and before HF_HOME."""
    from medadapt.prompts import hf_cache_dir

    for var in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hf_cache_dir() == tmp_path / "legacy"
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                          "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    _save_folder(tmp_path / "legacy" / "models--someone--tiny-clip" / "snapshots" / "r", cfg, open_clip.CLIP(**cfg).state_dict())
    assert load_clip("hf-hub:someone/tiny-clip", device="cpu").image_size == (32, 32)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "legacy"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "new"))
    assert hf_cache_dir() == tmp_path / "new"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE")
    assert hf_cache_dir() == tmp_path / "home" / "hub"


def _tiny_clip_folder(folder):
    """A small random open_clip model saved as a CLIP folder (seeded); returns its config."""
    torch.manual_seed(3)
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                          "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    _save_folder(folder, cfg, open_clip.CLIP(**cfg).state_dict())
    return cfg


def test_weights_are_refused_where_the_model_holds_its_own(random_clip, tmp_path, empty_hf_home):
    """weights= (--clip-weights) is for an architecture name; a folder or hf-hub model would silently keep its
    own weights."""
    cfg = _tiny_clip_folder(tmp_path / "clip")
    other = tmp_path / "finetuned.pt"
    torch.save(open_clip.CLIP(**cfg).state_dict(), other)
    for name, kind in ((tmp_path / "clip", "CLIP model folder"), (f"local-dir:{tmp_path / 'clip'}", "CLIP model folder"),
                       ("hf-hub:someone/tiny-clip", "Hugging Face model")):
        with pytest.raises(MedAdaptError, match=f"weights= \\(--clip-weights\\).*{kind}"):
            load_clip(name, weights=other)
    for built in (random_clip, random_clip.model):
        with pytest.raises(MedAdaptError, match="already-built"):
            load_clip(built, weights=other)
    assert load_clip(tmp_path / "clip").image_size == (32, 32)  # without weights=, the folder loads


def test_predict_text_without_a_text_model_says_how_to_attach_one(decoder):
    decoder.set_image(disc_image()[0])
    with pytest.raises(MedAdaptError) as info:
        decoder.predict(text="liver")
    msg = str(info.value)
    assert "load_clip" in msg and "set_text_model" in msg and "adapter" in msg and "class" in msg


def test_text_does_not_mix_with_other_prompts(random_clip, decoder):
    decoder.set_text_model(random_clip)
    decoder.set_image(disc_image()[0])
    with pytest.raises(MedAdaptError, match="text="):
        decoder.predict(text="circle", boxes=[[1, 1, 20, 20]])
    with pytest.raises(MedAdaptError, match="non-empty string"):
        decoder.predict(text=["circle", ""])


# ------------------------------------------------------------------ command line
@pytest.fixture()
def disc_png(tmp_path):
    from PIL import Image

    path = tmp_path / "disc.png"
    Image.fromarray(disc_image()[0].clip(0, 255).astype(np.uint8)).save(path)
    return path


def test_cli_text_without_clip_is_one_line_exit_2(disc_png, tmp_path, capsys):
    assert main(["predict", str(disc_png), "--text", "liver", "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medadapt: error:") and "--clip" in err and "\n" not in err


def test_cli_text_with_an_uncached_clip_names_the_cache_folder(disc_png, tmp_path, capsys, empty_hf_home, no_network):
    code = main(["predict", str(disc_png), "--text", "liver", "--clip", BIOMEDCLIP, "--out", str(tmp_path / "m.png")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert str(empty_hf_home) in err and "\n" not in err


def test_cli_text_writes_a_mask_with_a_local_clip_folder(disc_png, tmp_path, capsys, no_network):
    _tiny_clip_folder(tmp_path / "clip")
    out = tmp_path / "m.png"
    code = main(["predict", str(disc_png), "--text", "disc", "--text", "background", "--clip", str(tmp_path / "clip"),
                 "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "text 'disc'" in printed and "text 'background'" in printed and out.exists()


def test_cli_refuses_clip_options_it_would_not_use(disc_png, tmp_path, capsys, no_network):
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                          "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    _save_folder(tmp_path / "clip", cfg, open_clip.CLIP(**cfg).state_dict())
    other = tmp_path / "finetuned.pt"
    torch.save(open_clip.CLIP(**cfg).state_dict(), other)
    out = tmp_path / "m.png"
    cases = [
        (["--box", "10", "10", "100", "100", "--clip", "/does/not/exist", "--clip-weights", "/nope.pt"],
         "--clip and --clip-weights apply to --text prompts only"),
        (["--box", "10", "10", "100", "100", "--text-encoder", str(tmp_path)], "--text-encoder apply to --text"),
        (["--text", "disc", "--clip-weights", str(other)], "add --clip ARCH"),
        (["--text", "disc", "--clip", str(tmp_path / "clip"), "--clip-weights", str(other)],
         "is a CLIP model folder, which holds its own weights"),
        (["--text", "disc", "--clip", str(tmp_path / "clip"), "--text-encoder", str(tmp_path)], "drop one of them"),
    ]
    for extra, message in cases:
        assert main(["predict", str(disc_png), *extra, "--out", str(out), "--device", "cpu"]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (extra, err)
        assert not out.exists()
