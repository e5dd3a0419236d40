"""HF-format SAM -> official segment-anything modules: same numbers, loud failures, offline only."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import torch
from transformers import SamConfig, SamModel

from medadapt.core.errors import MedAdaptError
from medadapt.foundation import build_backbone
from medadapt.foundation.hf_sam import convert_hf_sam_state_dict, load_hf_sam, sam_modules_from_hf_config

IMAGE_SIZE = 128  # 8x8 image embedding, 32x32 low-res masks
MASK_SIDE = 4 * IMAGE_SIZE // 16


def tiny_config(**vision: object) -> SamConfig:
    return SamConfig(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=16,
            image_size=IMAGE_SIZE,
            window_size=3,  # 8 is not a multiple of 3: exercises window padding
            global_attn_indexes=[1],
            output_channels=32,
            num_pos_feats=16,
            **vision,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=IMAGE_SIZE, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, iou_head_hidden_dim=32
        ),
    )


@pytest.fixture(scope="module")
def hf_model() -> SamModel:
    torch.manual_seed(0)
    model = SamModel(tiny_config()).eval()
    with torch.no_grad():  # zero/one-initialised params (pos/rel-pos embeddings, norms, biases) must matter too
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))  # logits of order 1
    return model


@pytest.fixture(scope="module")
def hf_folder(hf_model: SamModel, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("hf_sam")
    hf_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def official(hf_folder):
    return load_hf_sam(hf_folder)


def _prompts(case: str) -> tuple[dict, dict]:
    """The same prompts as (HF SamModel kwargs, official PromptEncoder kwargs) for one image."""
    g = torch.Generator().manual_seed(1)
    box = torch.tensor([[10.0, 20.0, 90.0, 110.0]])
    coords = torch.tensor([[30.0, 40.0], [70.0, 80.0], [100.0, 20.0]])
    labels = torch.tensor([1, 0, 1])
    mask = torch.randn(1, 1, MASK_SIDE, MASK_SIDE, generator=g)
    if case == "box":
        return {"input_boxes": box[None]}, {"points": None, "boxes": box, "masks": None}
    if case == "two_boxes":  # HF's n_boxes is the official point batch
        boxes = torch.cat([box, torch.tensor([[50.0, 5.0, 120.0, 60.0]])])
        return {"input_boxes": boxes[None]}, {"points": None, "boxes": boxes, "masks": None}
    if case == "points":  # no box: both pad one not-a-point
        hf = {"input_points": coords[None, None], "input_labels": labels[None, None]}
        return hf, {"points": (coords[None], labels[None]), "boxes": None, "masks": None}
    if case == "points_box":
        hf = {"input_points": coords[None, None], "input_labels": labels[None, None], "input_boxes": box[None]}
        return hf, {"points": (coords[None], labels[None]), "boxes": box, "masks": None}
    if case == "box_mask":
        return {"input_boxes": box[None], "input_masks": mask}, {"points": None, "boxes": box, "masks": mask}
    raise AssertionError(case)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("case", ["box", "two_boxes", "points", "points_box", "box_mask"])
def test_official_modules_match_transformers(hf_model, official, case: str, multimask: bool) -> None:
    encoder, prompt_encoder, mask_decoder, _ = official
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2))
    hf_kwargs, kwargs = _prompts(case)
    with torch.no_grad():
        expected = hf_model(pixel_values=pixel_values, multimask_output=multimask, **hf_kwargs)
        embedding = encoder(pixel_values)
        torch.testing.assert_close(embedding, hf_model.get_image_embeddings(pixel_values), atol=1e-4, rtol=0)
        sparse, dense = prompt_encoder(**kwargs)
        low_res, iou = mask_decoder(embedding, prompt_encoder.get_dense_pe(), sparse, dense, multimask)

    n_masks = 3 if multimask else 1
    assert low_res.shape == (sparse.shape[0], n_masks, MASK_SIDE, MASK_SIDE)
    hf_masks, hf_iou = expected.pred_masks[0], expected.iou_scores[0]  # drop HF's image-batch axis
    assert low_res.std() > 0.1 and iou.abs().max() > 0.01  # not a degenerate network
    assert (low_res - hf_masks).abs().max() < 1e-4
    assert (iou - hf_iou).abs().max() < 1e-4


def test_loaded_modules_are_eval_and_complete(official, hf_model) -> None:
    encoder, prompt_encoder, mask_decoder, config = official
    assert not (encoder.training or prompt_encoder.training or mask_decoder.training)
    assert config.vision_config.hidden_size == 32
    # HF's two-way blocks use the config's eps (official default would be 1e-5)
    assert mask_decoder.transformer.layers[0].norm1.eps == config.mask_decoder_config.layer_norm_eps
    torch.testing.assert_close(
        prompt_encoder.pe_layer.positional_encoding_gaussian_matrix,
        hf_model.shared_image_embedding.positional_embedding.detach(),
        atol=0,
        rtol=0,
    )  # same scale convention in both: copied, not rescaled


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda sd: sd.__setitem__("mask_decoder.extra_head.weight", torch.zeros(3)), "mask_decoder.extra_head.weight"),
        (lambda sd: sd.pop("vision_encoder.neck.conv1.weight"), "image_encoder.neck.0.weight"),
        (lambda sd: sd.pop("mask_decoder.iou_prediction_head.proj_out.bias"), "iou_prediction_head.layers.2.bias"),
        (
            lambda sd: sd.__setitem__("prompt_encoder.no_mask_embed.weight", torch.zeros(1, 16)),
            "prompt_encoder.no_mask_embed.weight",
        ),
        (
            lambda sd: sd.__setitem__("prompt_encoder.shared_embedding.positional_embedding", torch.zeros(2, 16)),
            "prompt_encoder.shared_embedding.positional_embedding",
        ),
    ],
    ids=["extra", "missing", "missing_mlp", "shape", "tied_conflict"],
)
def test_conversion_names_bad_keys(hf_model, edit, named: str) -> None:
    state = dict(hf_model.state_dict())
    convert_hf_sam_state_dict(state, hf_model.config)  # the untouched state converts
    edit(state)
    with pytest.raises(MedAdaptError, match=named.replace(".", r"\.")):
        convert_hf_sam_state_dict(state, hf_model.config)


def test_unrepresentable_config_names_field() -> None:
    with pytest.raises(MedAdaptError, match="vision_config.hidden_act"):
        sam_modules_from_hf_config(tiny_config(hidden_act="silu"))
    bad = tiny_config()
    bad.vision_config.num_pos_feats = 8
    with pytest.raises(MedAdaptError, match="vision_config.num_pos_feats"):
        sam_modules_from_hf_config(bad)


@pytest.mark.parametrize("index, config_edit, message", [
    ("{}", None, "not a sharded-checkpoint index"),
    ('{"weight_map": {"a": "model-0', None, "not a sharded-checkpoint index"),
    ('{"weight_map": {"a": "../elsewhere.safetensors"}}', None, "outside its folder"),
    (None, ("vision_config", "num_hidden_layers", "2"), "not a config transformers can read"),
])
def test_a_damaged_folder_gives_one_line_naming_the_file(hf_folder, tmp_path, index, config_edit, message) -> None:
    folder = tmp_path / "sam"
    shutil.copytree(hf_folder, folder)
    if index is not None:
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors.index.json").write_text(index)
    if config_edit is not None:
        section, key, value = config_edit
        config = json.loads((folder / "config.json").read_text())
        config[section][key] = value
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(MedAdaptError, match=message):
        build_backbone("sam_hf", str(folder))


def test_bin_folder_loads_with_tied_duplicate(hf_model, tmp_path) -> None:
    hf_model.config.save_pretrained(tmp_path)
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")  # holds both tied positional keys
    encoder, _, _, _ = load_hf_sam(tmp_path)
    expected = hf_model.vision_encoder.neck.conv1.weight
    torch.testing.assert_close(encoder.neck[0].weight, expected.detach(), atol=0, rtol=0)


@pytest.fixture
def offline_hf_home(tmp_path, monkeypatch: pytest.MonkeyPatch):
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_hub_id_resolved_from_local_cache(hf_folder, offline_hf_home) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hf_home / "hub" / "models--some-org--tiny-sam"
    shutil.copytree(hf_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    encoder, prompt_encoder, mask_decoder, config = load_hf_sam("some-org/tiny-sam")
    assert config.prompt_encoder_config.mask_input_channels == 8


def test_missing_hub_id_says_where_it_looked(offline_hf_home) -> None:
    with pytest.raises(MedAdaptError) as info:
        load_hf_sam("some-org/not-in-cache")
    message = str(info.value)
    assert str(offline_hf_home / "hub") in message
    assert "huggingface-cli download some-org/not-in-cache" in message


def test_segmenter_from_hf_folder_matches_transformers(hf_model, hf_folder) -> None:
    """End to end: ``Segmenter.from_pretrained("sam_hf", checkpoint=folder)`` vs transformers' forward."""
    import numpy as np

    from medadapt import Segmenter

    seg = Segmenter.from_pretrained("sam_hf", checkpoint=hf_folder, device="cpu", precision="float32")
    assert seg.backbone.processor.image_size == IMAGE_SIZE and seg.backbone.processor.mask_size == MASK_SIDE
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3)).astype(np.float32)
    seg.set_image(image)
    box = [[10.0, 12.0, 90.0, 70.0]]
    out = seg.predict(boxes=box)
    pixels, meta = seg.backbone.processor.preprocess(image)
    box_in = seg.backbone.processor.transform_boxes(np.array(box, np.float32), meta)
    with torch.no_grad():
        ref = hf_model(pixel_values=pixels, input_boxes=box_in[None], multimask_output=False)
    assert np.abs(out.logits[0] - ref.pred_masks[0, 0, 0].numpy()).max() < 1e-4
    assert abs(out.scores[0] - ref.iou_scores[0, 0, 0].item()) < 1e-4


@pytest.mark.parametrize("mean", [None, 0.5])
def test_images_reach_the_encoder_as_the_checkpoints_own_image_processor_makes_them(hf_model, tmp_path, mean) -> None:
    """A large image is shrunk with antialiasing, as transformers' SamImageProcessor (PIL) shrinks it, and a
    folder's own processor settings (here mean and std 0.5) are used, not SAM's ImageNet ones."""
    import numpy as np
    from transformers import SamImageProcessor

    from medadapt import Segmenter

    folder = tmp_path / "sam"
    hf_model.save_pretrained(folder)
    kwargs = {} if mean is None else {"image_mean": [mean] * 3, "image_std": [mean] * 3}
    processor = SamImageProcessor(size={"longest_edge": IMAGE_SIZE}, pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                  **kwargs)
    if mean is not None:
        processor.save_pretrained(folder)
    seg = Segmenter.from_pretrained("sam_hf", checkpoint=folder, device="cpu", precision="float32")
    yy, xx = np.mgrid[:300, :400]
    image = np.stack([(xx * 0.6 + yy * 0.3) % 256, (yy * 0.8) % 256, (xx * 0.5) % 256], -1).astype(np.uint8)
    ours, _ = seg.backbone.processor.preprocess(image.astype(np.float32))
    theirs = processor(images=image, return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < 0.05  # PIL rounds to 8 bits after resizing; a plain bilinear is off by ~0.4

    processor.save_pretrained(folder)
    cfg = folder / "preprocessor_config.json"
    cfg.write_text(cfg.read_text().replace(f'"longest_edge": {IMAGE_SIZE}', '"longest_edge": 64'))
    with pytest.raises(MedAdaptError, match="longest edge of 64"):
        Segmenter.from_pretrained("sam_hf", checkpoint=folder, device="cpu", precision="float32")


def test_a_config_that_is_not_utf8_or_places_prompts_on_another_size_is_one_line(hf_folder, tmp_path) -> None:
    import shutil

    from medadapt.foundation import build_backbone

    bad = tmp_path / "latin1"
    shutil.copytree(hf_folder, bad)
    (bad / "config.json").write_bytes((bad / "config.json").read_bytes().replace(b'"sam"', b'"s\xe9m"'))
    with pytest.raises(MedAdaptError, match="is not a valid config.json"):
        build_backbone("sam_hf", str(bad))
    config = tiny_config()
    config.prompt_encoder_config.image_size = 1024  # transformers' default: boxes would land at 1/8 of the place
    with pytest.raises(MedAdaptError, match=r"prompt_encoder_config\.image_size \(1024\) must equal"):
        sam_modules_from_hf_config(config)
