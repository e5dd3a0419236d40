"""Local corrections: a click changes the answer only near where it was made."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import disc_image

from medadapt import MedAdaptError
from medadapt.inference.local import local_update


def halve(selection: np.ndarray) -> np.ndarray:
    """A full-size selection on a grid half as fine (the logits' grid in these tests)."""
    return selection[::2, ::2]


def test_only_the_change_near_the_click_is_kept():
    previous = np.zeros((40, 40), bool)
    previous[5:15, 5:15] = True  # right
    previous[25:35, 25:30] = True  # missing its right half, where the user clicks
    new = previous.copy()
    new[25:35, 30:35] = True  # the click's fix
    new[5:15, 5:10] = False  # a change far from the click: undone
    old_logits, new_logits = np.where(previous, 5.0, -5.0)[::2, ::2], np.where(new, 5.0, -5.0)[::2, ::2]
    mask, logits = local_update((previous, old_logits), (new, new_logits), np.array([32.0, 30.0]), halve)
    assert mask[25:35, 25:35].all() and mask[5:15, 5:15].all()
    assert mask.sum() == previous.sum() + 50
    assert (logits[13:17, 15:17] > 0).all() and (logits[3:7, 3:5] > 0).all()  # logits merged alike
    # a decoder that changed nothing near the click changes nothing at all
    far = np.array([2.0, 38.0])
    kept, kept_logits = local_update((previous, old_logits), (new, new_logits), far, halve, reach=0.02)
    assert np.array_equal(kept, previous) and np.array_equal(kept_logits, old_logits)
    # no change anywhere: the new answer as it stands
    same, _ = local_update((previous, old_logits), (previous.copy(), old_logits), far, halve)
    assert np.array_equal(same, previous)


def test_bad_input_is_refused():
    m, lg = np.zeros((8, 8), bool), np.zeros((4, 4), np.float32)
    with pytest.raises(MedAdaptError, match="outside"):
        local_update((m, lg), (m, lg), np.array([9.0, 1.0]), halve)
    with pytest.raises(MedAdaptError, match="different shapes"):
        local_update((m, lg), (np.zeros((8, 9), bool), lg), np.array([1.0, 1.0]), halve)
    with pytest.raises(MedAdaptError, match="reach"):
        local_update((m, lg), (m, lg), np.array([1.0, 1.0]), halve, reach=2)


def test_the_segmenter_maps_a_mask_onto_the_logits_grid_and_back(litemedsam):
    image, disc = disc_image(h=120, w=200, center=(60, 80), radius=30)
    litemedsam.set_image(image)
    low = litemedsam.low_res_mask(disc)
    m = litemedsam.backbone.processor.mask_size
    assert low.shape == (m, m) and low.dtype == bool
    back = litemedsam.full_size_logits(np.where(low, 10.0, -10.0)) > 0
    assert (back & disc).sum() / (back | disc).sum() > 0.95
    with pytest.raises(MedAdaptError, match="H x W like the current image"):
        litemedsam.low_res_mask(disc[:, :10])


def test_the_app_merges_each_click_into_the_answer_before_it(litemedsam, tmp_path):
    """With local corrections on, the app's answer to a click is the whole-object answer merged near the click."""
    from PIL import Image

    from medadapt.app.rle import decode_rle
    from medadapt.app.session import Annotator

    image, _ = disc_image(h=160, w=220, center=(80, 110), radius=40, seed=3)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / "a.png")
    answers = {}
    for local in (False, True):
        annotator = Annotator(litemedsam, folder, labels=tmp_path / f"labels_{local}", prefetch=False, local=local)
        try:
            item = annotator.source.items[0].id
            annotator.open(item, 0)
            box = {"kind": "box", "x0": 66, "y0": 36, "x1": 154, "y1": 124}
            before = decode_rle(annotator.prompt(item, 0, "foreground", box)["mask"])
            click = {"kind": "point", "x": 150, "y": 80, "label": 0}
            answers[local] = before, decode_rle(annotator.prompt(item, 0, "foreground", click)["mask"])
        finally:
            annotator.close()
    (before, whole), (_, local) = answers[False], answers[True]
    m = litemedsam.backbone.processor.mask_size
    litemedsam.set_image(image)
    zeros = np.zeros((m, m), np.float32)
    expected, _ = local_update((before, zeros), (whole, zeros), np.array([150.0, 80.0]), litemedsam.low_res_mask)
    assert np.array_equal(local, expected)
    # the click changed the answer, and locality kept only part of that change (measured: 112 and 34 pixels)
    assert 0 < (local != before).sum() < (whole != before).sum()
