"""The legend under val_overlays.png: each class name next to the colour overlay() paints it in."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medadapt import MedAdaptError
from medadapt.io.overlay import COLORS, LEGEND_BACKGROUND, legend, mask_color, overlay


def _swatches(strip: np.ndarray) -> list[tuple[int, int, int]]:
    """The mask colours present in a legend strip, ordered left to right by first column."""
    found = []
    for color in COLORS:
        cols = np.nonzero(np.all(strip == color, axis=-1).any(axis=0))[0]
        if cols.size:
            found.append((int(cols.min()), tuple(color)))
    return [c for _, c in sorted(found)]


def test_legend_swatches_are_the_overlay_colours_in_mask_order() -> None:
    image = np.zeros((40, 60), np.float32)
    masks = np.zeros((3, 40, 60), bool)
    masks[0, 2:12, 2:12] = masks[1, 2:12, 20:30] = masks[2, 20:30, 40:50] = True
    picture = overlay(image, masks, alpha=0.5)
    strip = legend(["disc", "square", "ring"], 400)
    swatches = _swatches(strip)
    # the outline of mask i is painted in its colour; the legend's i-th swatch must be that colour
    outline_pixels = [(2, 2), (2, 20), (20, 40)]  # a corner of mask 0, 1, 2
    assert swatches == [tuple(int(v) for v in picture[y, x]) for y, x in outline_pixels]
    assert swatches == [mask_color(i) for i in range(3)]
    assert strip.shape == (24, 400, 3) and tuple(strip[0, -1]) == LEGEND_BACKGROUND
    # more classes than colours: the colours cycle as in overlay(), and the entries wrap onto more rows
    many = legend([f"class {i}" for i in range(len(COLORS) + 1)], 200)
    assert many.shape[0] > 24 and many.shape[0] % 24 == 0
    with pytest.raises(MedAdaptError, match="width"):
        legend(["disc"], 10)


def test_a_label_map_paints_each_class_in_its_legend_colour_whichever_classes_are_present() -> None:
    image = np.zeros((40, 60), np.float32)
    labels = np.zeros((40, 60), np.int64)
    labels[2:12, 2:12], labels[20:30, 40:50] = 2, 3  # class 1 absent from this image
    picture = overlay(image, labels, alpha=0.5)
    assert tuple(int(v) for v in picture[2, 2]) == mask_color(1)  # class 2: the legend's second entry
    assert tuple(int(v) for v in picture[20, 40]) == mask_color(2)


def test_val_overlays_png_has_a_legend_strip_in_the_class_colours(tmp_path) -> None:
    from conftest import tiny_run, two_class_dataset

    root = two_class_dataset(tmp_path / "data", n=8)
    run = tiny_run(root, tmp_path / "runs", labeled=["000", "001", "002", "003", "004"], val=["005", "006", "007"])
    picture = np.asarray(Image.open(run / "val_overlays.png").convert("RGB"))
    tiles = picture.shape[0] // 256 * 256  # the grid of 256 px tiles, then the legend strip
    strip = picture[tiles:]
    assert 0 < strip.shape[0] < 256
    assert _swatches(strip) == [mask_color(0), mask_color(1)]  # disc, square: the order overlay() drew them in
    assert not np.all(strip == LEGEND_BACKGROUND)
