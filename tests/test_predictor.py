"""Segmenter: set_image once, predict from boxes / points / masks, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import disc_image

from medadapt import MedAdaptError, Segmenter
from medadapt.evaluation.metrics import binary_dice as dice


def test_pretrained_litemedsam_segments_a_boxed_disc(litemedsam, disc):
    image, mask = disc
    litemedsam.set_image(image)
    out = litemedsam.predict(boxes=[[75, 45, 165, 135]])
    assert out.masks.shape == (1, 180, 240) and out.masks.dtype == bool
    assert dice(out.masks[0], mask) > 0.9
    assert out.scores.shape == (1,) and out.logits.shape == (1, 256, 256)


def test_point_prompt_with_positive_and_negative_clicks(litemedsam, disc):
    image, mask = disc
    litemedsam.set_image(image)
    out = litemedsam.predict(points=[[120, 90], [10, 10]], point_labels=[1, 0], multimask=True)
    assert out.all_masks.shape == (1, 3, 180, 240) and out.all_scores.shape == (1, 3)
    best = out.all_scores[0].argmax()
    assert np.array_equal(out.masks[0], out.all_masks[0, best])
    m = out.masks[0]
    # LiteMedSAM was trained with box prompts; clicks give a rough mask around the positive one
    assert m[90, 120] and not m[10, 10]
    assert (m & mask).sum() / m.sum() > 0.6


def test_logits_feed_back_as_mask_prompt(litemedsam, disc):
    image, mask = disc
    litemedsam.set_image(image)
    first = litemedsam.predict(boxes=[[75, 45, 165, 135]])
    again = litemedsam.predict(boxes=[[75, 45, 165, 135]], mask_input=first.logits)
    assert dice(again.masks[0], mask) > 0.85
    full = litemedsam.predict(points=[[120, 90]], mask_input=mask.astype(np.float32))
    assert full.masks.shape == (1, 180, 240)


def test_several_boxes_are_one_batch_and_match_single_predictions():
    seg = Segmenter.from_pretrained("tiny_litemedsam", device="cpu", precision="float32")  # exact batching check
    image, _ = disc_image(seed=3)
    seg.set_image(image)
    boxes = [[10, 10, 100, 90], [75, 45, 165, 135], [120, 20, 230, 170]]
    calls = []
    handle = seg.backbone.mask_decoder.transformer.register_forward_hook(lambda *a: calls.append(1))
    together = seg.predict(boxes=boxes)
    handle.remove()
    assert len(calls) == 1  # one decoder call for all three boxes
    for i, b in enumerate(boxes):
        alone = seg.predict(boxes=[b])
        assert np.allclose(alone.logits[0], together.logits[i], atol=1e-4)


def test_image_is_encoded_once_per_set_image(tiny_sam):
    image, _ = disc_image(h=50, w=60, center=(25, 30), radius=10)
    calls = []
    tiny_sam.backbone.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    tiny_sam.set_image(image)
    for _ in range(3):
        tiny_sam.predict(boxes=[[5, 5, 40, 40]] * 16)
    assert len(calls) == 1


def test_per_image_decoding_matches_shared_embedding_decoding(tiny_sam):
    b = tiny_sam.backbone
    emb = torch.randn(1, 32, 4, 4)
    boxes = torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 2.0, 60.0, 30.0]])
    sparse, dense = b.encode_prompts(boxes=boxes)
    with torch.no_grad():
        shared = b.decode(emb, sparse, dense, multimask=True)
        per_image = b.decode(emb.expand(2, -1, -1, -1).contiguous(), sparse, dense, multimask=True)
    assert torch.allclose(shared[0], per_image[0], atol=1e-5)
    assert torch.allclose(shared[1], per_image[1], atol=1e-5)


def test_predict_before_set_image(tiny_sam):
    with pytest.raises(MedAdaptError, match="call set_image"):
        tiny_sam.predict(boxes=[[1, 1, 5, 5]])


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((2, 3, 32, 32), np.float32), "2-D HxW"),
        (np.full((32, 32), np.nan, np.float32), "NaN"),
        (np.full((32, 32), 7.0, np.float32), "constant"),
    ],
)
def test_bad_images_are_explained(tiny_sam, image, message):
    with pytest.raises(MedAdaptError, match=message):
        tiny_sam.set_image(image)


def test_bad_prompts_are_explained(tiny_sam):
    image, _ = disc_image(h=50, w=60, center=(25, 30), radius=10)
    tiny_sam.set_image(image)
    with pytest.raises(MedAdaptError, match="at least one prompt"):
        tiny_sam.predict()
    with pytest.raises(MedAdaptError, match="outside the image"):
        tiny_sam.predict(boxes=[[100, 100, 120, 120]])
    with pytest.raises(MedAdaptError, match="zero or negative area"):
        tiny_sam.predict(boxes=[[10, 10, 5, 20]])
    with pytest.raises(MedAdaptError, match=r"the 2nd box \[500, 5, 600, 9\] lies outside"):  # counted as a person
        tiny_sam.predict(boxes=[[1, 1, 9, 9], [500, 5, 600, 9]])
    with pytest.raises(MedAdaptError, match="foreground"):
        tiny_sam.predict(points=[[10, 10]], point_labels=[3])
    with pytest.raises(MedAdaptError, match="one point set per box"):
        tiny_sam.predict(boxes=[[1, 1, 9, 9], [2, 2, 9, 9], [3, 3, 9, 9]], points=[[[5, 5]], [[6, 6]]])
    with pytest.raises(MedAdaptError, match="mask_input"):
        tiny_sam.predict(boxes=[[1, 1, 9, 9]], mask_input=np.zeros((7, 7)))
    with pytest.raises(MedAdaptError, match="mask_input contains NaN"):
        tiny_sam.predict(boxes=[[1, 1, 9, 9]], mask_input=np.full((50, 60), np.nan))
    with pytest.raises(MedAdaptError, match="zero area inside the image"):  # from the last column past the edge
        tiny_sam.predict(boxes=[[59, 10, 90, 20]])
    with pytest.raises(MedAdaptError, match="holds no box"):
        tiny_sam.predict(boxes=np.zeros((0, 4)))
    with pytest.raises(MedAdaptError, match="point_labels must be numbers"):
        tiny_sam.predict(points=[[10, 10]], point_labels=["fg"])


def test_odd_images_are_read_or_refused_and_a_refused_one_leaves_no_image(tiny_sam):
    import torch

    with pytest.raises(MedAdaptError, match="not an array of numbers"):
        tiny_sam.set_image([[1, 2, 3], [4, 5]])
    tiny_sam.set_image(torch.rand(40, 50, dtype=torch.bfloat16))
    assert tiny_sam.image_size == (40, 50)
    tiny_sam.set_image(np.linspace(0, 1, 600, dtype=np.float32)[None])  # one row: the model sees one row
    assert tiny_sam.predict(points=[[300, 0]]).masks.shape == (1, 1, 600)
    huge = np.zeros((32, 32), np.float32)
    huge[8:24, 8:24], huge[0, 0] = 3e38, -3e38  # a range beyond float32
    tiny_sam.set_image(huge)
    assert np.isfinite(tiny_sam.predict(boxes=[[6, 6, 26, 26]]).logits).all()
    with pytest.raises(MedAdaptError, match="constant"):
        tiny_sam.set_image(np.zeros((32, 32)))
    with pytest.raises(MedAdaptError, match="call set_image"):  # not an answer on the image before
        tiny_sam.predict(boxes=[[1, 1, 5, 5]])


def test_a_binary_mask_prompt_at_the_decoders_size_is_a_mask_not_logits(litemedsam):
    """LiteMedSAM's decoder works at 256 x 256, a common image size: a 0/1 mask there must still be mapped to
    mask-prompt logits, as at any other size."""
    image, mask = disc_image(h=256, w=256, center=(128, 128), radius=40)
    litemedsam.set_image(image)
    seen = []
    decode = litemedsam.predict_prompts

    def spy(prompts, **kwargs):
        seen.append({float(v) for v in np.unique(prompts.masks)})
        return decode(prompts, **kwargs)

    litemedsam.predict_prompts = spy
    try:
        for given in (mask, mask.astype(np.float32)):
            litemedsam.predict(boxes=[[80, 80, 176, 176]], mask_input=given)
    finally:
        del litemedsam.predict_prompts
    assert seen == [{-10.0, 10.0}] * 2


def test_image_path_is_accepted(tmp_path, tiny_sam):
    from PIL import Image

    image, _ = disc_image(h=50, w=60, center=(25, 30), radius=10)
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(tmp_path / "x.png")
    tiny_sam.set_image(tmp_path / "x.png")
    assert tiny_sam.image_size == (50, 60)


def test_prompt_free_prediction_needs_a_trained_adapter(tiny_sam):
    with pytest.raises(MedAdaptError, match="prompt-free prediction needs an adapter"):
        tiny_sam.predict_volume(np.random.default_rng(0).random((4, 32, 32)).astype(np.float32))


def test_answers_go_to_full_size_in_chunks_that_fit_in_memory():
    from medadapt.inference.predictor import prompts_per_chunk

    assert prompts_per_chunk((256, 256), 3) == 32  # small images: 32 prompts at a time
    assert prompts_per_chunk((8000, 8000), 3) == 1  # 768 MB of logits a prompt: one at a time
    assert prompts_per_chunk((2048, 2048), 1) == 16  # 16 MB a prompt within 256 MB
