"""An adapter trained on windowed (CT) or percentile-clipped (MR) images is given its images that way at inference:
``set_volume``, ``medadapt predict`` and ``medadapt segment`` apply what the adapter records, unless a window is
given; adapters saved before the record read it from their run's config."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_run, two_class_dataset

from medadapt.inference import Segmenter, segment_batch
from medadapt.inference.segment import segment_file

WINDOW = [100, 100]  # level 100, width 100: [50, 150] on the 0-255 test images


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("intensity")
    root = two_class_dataset(tmp / "data", n=6)
    windowed = tiny_run(root, tmp / "w", labeled=["000", "001"], val=["002"], data_extra={"window": WINDOW})
    clipped = tiny_run(root, tmp / "p", labeled=["000", "001"], val=["002"], data_extra={"percentiles": [5, 95]})
    plain = tiny_run(root, tmp / "n", labeled=["000", "001"], val=["002"])
    return root, windowed, clipped, plain


def _volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (40, 40, 5)).astype(np.float32)


def test_the_adapter_records_its_intensity_and_set_volume_applies_it(runs):
    _, windowed, clipped, plain = runs
    meta = json.loads((windowed / "adapter" / "adapter.json").read_text())["metadata"]
    assert meta["intensity"] == {"window": WINDOW, "percentiles": None}
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=windowed, device="cpu")
    assert seg.intensity == {"window": WINDOW, "percentiles": None}
    vol = _volume()
    seg.set_volume(vol, axis=2)
    plane = seg._volume.plane(2)
    assert plane.min() == 50 and plane.max() == 150  # as the training slices were seen
    seg.set_volume(vol, axis=2, window=[100, 50])  # a window given replaces the recorded one
    assert seg._volume.plane(2).min() == 75 and seg._volume.plane(2).max() == 125
    seg.set_volume(vol, axis=2, intensity=False)  # as given
    assert seg._volume.plane(2).max() == vol[:, :, 2].max()

    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=clipped, device="cpu")
    assert seg.intensity == {"window": None, "percentiles": [5, 95]}
    seg.set_volume(vol, axis=2)
    raw = seg._volume.data[:, :, 2]
    got = seg._volume.plane(2)
    low, high = np.percentile(raw.T, [5, 95])  # each plane clipped on its own (display orientation)
    assert got.min() == pytest.approx(low, abs=1e-3) and got.max() == pytest.approx(high, abs=1e-3)

    assert Segmenter.from_pretrained("tiny_sam_vit", adapter=plain, device="cpu").intensity is None
    assert Segmenter.from_pretrained("tiny_sam_vit", device="cpu").intensity is None


def test_an_adapter_saved_before_the_record_reads_it_from_its_run(runs, tmp_path):
    import shutil

    _, windowed, _, _ = runs
    old = tmp_path / "old_run"
    shutil.copytree(windowed, old)
    info = json.loads((old / "adapter" / "adapter.json").read_text())
    del info["metadata"]["intensity"]
    (old / "adapter" / "adapter.json").write_text(json.dumps(info))
    assert Segmenter.from_pretrained("tiny_sam_vit", adapter=old, device="cpu").intensity == \
        {"window": WINDOW, "percentiles": None}


def test_predict_and_segment_give_the_adapter_its_window(runs, tmp_path, monkeypatch):
    root, windowed, _, _ = runs
    seen = []
    real = Segmenter.set_image

    def spy(self, image):
        seen.append(np.asarray(image))
        return real(self, image)

    monkeypatch.setattr(Segmenter, "set_image", spy)
    image = root / "images" / "003.png"
    segment_file(image, out=tmp_path / "a.png", model="tiny_sam_vit", adapter=windowed, device="cpu")
    assert seen[-1].min() >= 50 and seen[-1].max() <= 150
    segment_file(image, out=tmp_path / "b.png", model="tiny_sam_vit", adapter=windowed, device="cpu",
                 window="0,500")  # a window given is the one applied
    assert seen[-1].max() > 150
    result = segment_batch(root / "images", tmp_path / "out", model="tiny_sam_vit", adapter=windowed,
                           device="cpu", workers=0, progress=False)
    assert result.ok == 6 and all(s.min() >= 50 and s.max() <= 150 for s in seen[-6:])
    settings = json.loads((tmp_path / "out" / "segment.json").read_text())
    assert settings["window"] == WINDOW


def test_an_exported_adapter_keeps_its_intensity(runs, tmp_path):
    pytest.importorskip("onnxruntime", reason="the exported graphs run in onnxruntime (medadapt[export])")
    from medadapt.export.onnx_export import export_model

    _, windowed, _, _ = runs
    result = export_model(windowed, tmp_path / "exported")
    assert result.manifest["source"]["intensity"] == {"window": WINDOW, "percentiles": None}
    seg = Segmenter.from_pretrained(str(tmp_path / "exported"), runtime="onnxruntime")
    assert seg.intensity == {"window": WINDOW, "percentiles": None}
    seg.set_volume(_volume(), axis=2)
    assert seg._volume.plane(0).max() == 150
