"""The depth adapter: a slice's embedding mixed with its neighbours', in volumes and on lone 2-D images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medadapt import MedAdaptError, Segmenter
from medadapt.adapters import AdapterConfig, AutomaticConfig, DepthAdapterConfig, apply
from medadapt.foundation import build_backbone
from medadapt.foundation.depth import neighbour_stack


def depth_model(seed: int = 0, neighbours: int = 1):
    model, _ = apply(build_backbone("tiny_sam_vit"), AdapterConfig(
        depth=DepthAdapterConfig(hidden=8, neighbours=neighbours), train=["mask_decoder"],
        automatic=AutomaticConfig(class_names=["a"], label_values=[1])))
    torch.manual_seed(seed)
    with torch.no_grad():
        torch.nn.init.normal_(model.depth_adapter.up.weight, std=0.5)  # a trained, non-zero adapter
    return model.eval()


def test_neighbour_stack_repeats_the_nearest_present_slice():
    a, b, c = (torch.full((2, 3, 3), float(v)) for v in (1, 2, 3))
    assert torch.equal(neighbour_stack([None, b, c], 1), torch.stack([b, b, c]))
    assert torch.equal(neighbour_stack([None, None, b, c, None], 2), torch.stack([b, b, b, c, c]))
    with pytest.raises(ValueError, match="centre"):
        neighbour_stack([a, None, c], 1)


def test_the_adapter_reads_the_neighbours_and_a_lone_slice_stands_in_for_them():
    model = depth_model()
    emb = torch.randn(1, 3, model.embed_dim, 16, 16)
    with torch.no_grad():
        mixed = model.adapt_embedding(emb)
        other = emb.clone()
        other[:, 0] += 1.0  # a different slice below
        assert (model.adapt_embedding(other) - mixed).abs().max() > 1e-3
        lone = model.adapt_embedding(emb[:, 1])  # a 2-D image: its own neighbours
        assert torch.allclose(lone, model.adapt_embedding(emb[:, 1:2].expand(-1, 3, -1, -1, -1)))
        # a model without the adapter reads the centre of a stack
        plain, _ = apply(build_backbone("tiny_sam_vit"), AdapterConfig(train=[]))
        assert torch.equal(plain.adapt_embedding(emb), emb[:, 1])


def test_a_volume_decodes_each_slice_with_its_neighbours():
    model = depth_model()
    seg = Segmenter(model, device="cpu")
    vol = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32) * 100
    seg.set_volume(vol, axis=0)
    try:
        stacked = seg.volume.embedding(2)
        assert stacked.shape[:2] == (1, 3)
        assert torch.equal(stacked[0, 0], seg.volume.embedding(1)[0, 1])  # slice 1 is slice 2's neighbour below
        end = seg.volume.embedding(0)
        assert torch.equal(end[0, 0], end[0, 1])  # before the first slice, the first repeats
        labels = seg.predict_volume()
        assert labels.shape == vol.shape
        seg.show_plane(seg.volume, 2)
        with_neighbours = seg.predict().logits
    finally:
        seg.reset_volume()
    seg.set_image(vol[2])  # the same slice as a 2-D image: no neighbours
    alone = seg.predict().logits
    assert np.abs(with_neighbours - alone).max() > 1e-3


def test_export_refuses_a_depth_adapter(tmp_path):
    from medadapt.export import export_onnx

    with pytest.raises(MedAdaptError, match="depth adapter"):
        export_onnx(depth_model(), tmp_path / "out")


@pytest.mark.parametrize("bad, match", [({"hidden": 0}, "depth.hidden"), ({"neighbours": 0}, "depth.neighbours"),
                                        ({"slices": 3}, "slices")])
def test_config_errors_name_the_key(bad, match):
    with pytest.raises(MedAdaptError, match=match):
        AdapterConfig.from_dict({"depth": bad})
