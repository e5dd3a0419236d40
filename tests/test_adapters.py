"""Adapters, for each encoder family and each adapter kind (one loop over all of them).

Families: a tiny SAM ViT and the real pretrained LiteMedSAM (TinyViT).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medadapt import MedAdaptError, Segmenter
from medadapt.adapters import (
    AdapterConfig,
    ContextAdapterConfig,
    DepthAdapterConfig,
    LoraConfig,
    SpatialAdapterConfig,
    apply,
    load_adapter,
    merge_lora,
    save_adapter,
    set_train_mode,
)
from medadapt.foundation import build_backbone

KINDS = {
    "lora": lambda: AdapterConfig(lora=LoraConfig(rank=4, targets=["encoder_attention", "decoder_attention"]), train=[]),
    "lora_mlp+decoder": lambda: AdapterConfig(lora=LoraConfig(rank=2, targets=["encoder_mlp"]), train=["mask_decoder"]),
    "spatial+decoder": lambda: AdapterConfig(spatial=SpatialAdapterConfig(bottleneck=8), train=["mask_decoder"]),
    "both": lambda: AdapterConfig(lora=LoraConfig(rank=4), spatial=SpatialAdapterConfig(blocks=[0, 1]), train=["prompt_encoder"]),
    "context": lambda: AdapterConfig(context=ContextAdapterConfig(hidden=8, dilations=[1, 2]), train=[]),
    "depth+decoder": lambda: AdapterConfig(depth=DepthAdapterConfig(hidden=8), train=["mask_decoder"]),
    "context+lora+decoder": lambda: AdapterConfig(
        context=ContextAdapterConfig(hidden=4, dilations=[1]), lora=LoraConfig(rank=2), train=["mask_decoder"]
    ),
}
FAMILIES = {"vit": "tiny_sam_vit", "tinyvit": "litemedsam"}


def inputs(backbone):
    torch.manual_seed(0)
    s = backbone.processor.image_size
    return torch.randn(1, 3, s, s), torch.tensor([[s * 0.2, s * 0.25, s * 0.7, s * 0.8]])


def forward(backbone, pixels, boxes):
    emb = backbone.encode(pixels)
    sparse, dense = backbone.encode_prompts(boxes=boxes)
    return backbone.decode(emb, sparse, dense, multimask=True)[0]


# The combined kinds run on the small ViT only: each of their parts runs on both families, and on the real
# TinyViT every lifecycle costs about ten encoder passes.
COMBINED = {"both", "context+lora+decoder"}
CASES = [(f, k) for f in FAMILIES for k in KINDS if f == "vit" or k not in COMBINED]


@pytest.fixture(scope="module")
def families():
    cache = {}

    def get(family):
        if family not in cache:
            base = build_backbone(FAMILIES[family])
            pixels, boxes = inputs(base)
            with torch.no_grad():
                cache[family] = FAMILIES[family], pixels, boxes, forward(base, pixels, boxes)
        return cache[family]

    return get


@pytest.mark.parametrize("family,kind", CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_adapter_lifecycle(families, family, kind, tmp_path):
    name, pixels, boxes, reference = families(family)
    model, summary = apply(build_backbone(name), KINDS[kind]())
    model.eval()

    # 1. identical to the base model at initialisation
    with torch.no_grad():
        assert (forward(model, pixels, boxes) - reference).abs().max().item() == 0.0

    # 2. one optimiser step changes only adapter and chosen parameters
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_train_mode(model, True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    target = (torch.rand_like(reference[:, :1]) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(model, pixels, boxes)[:, :1], target)
    loss.backward()
    opt.step()
    model.eval()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "the step changed nothing"
    assert changed <= trainable, f"frozen tensors changed: {sorted(changed - trainable)[:5]}"
    assert summary.trainable == sum(model.state_dict()[n].numel() for n in trainable)

    # 3. save then load gives identical outputs
    with torch.no_grad():
        trained = forward(model, pixels, boxes)
    save_adapter(model, tmp_path / "adapter", metadata={"kind": kind})
    loaded = load_adapter(build_backbone(name), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(forward(loaded, pixels, boxes), trained)
    assert loaded.adapter_metadata == {"kind": kind}

    # 4. merged LoRA equals unmerged
    if model.adapter_config.lora is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)  # a non-trivial delta
            unmerged = forward(model, pixels, boxes)
            merge_lora(model)
            assert not any("lora_" in n for n, _ in model.named_parameters())
            merged = forward(model, pixels, boxes)
        assert (merged - unmerged).abs().max().item() < 1e-5


def test_summary_table_and_targets():
    model, summary = apply(build_backbone("tiny_sam_vit"), AdapterConfig(lora=LoraConfig(rank=2), train=["mask_decoder"]))
    text = str(summary)
    for part in ("image_encoder", "prompt_encoder", "mask_decoder", "adapters", "all"):
        assert part in text
    rows = {r.part: r for r in summary.rows}
    assert rows["image_encoder"].trainable == 0 and rows["prompt_encoder"].trainable == 0
    assert rows["mask_decoder"].trainable == rows["mask_decoder"].total > 0
    # qkv + proj in each of 2 blocks, rank 2: A (r x in) + B (out x r)
    assert rows["adapters"].total == 2 * ((2 * 32 + 96 * 2) + (2 * 32 + 32 * 2))


def test_user_patterns_and_bad_targets():
    b = build_backbone("tiny_sam_vit")
    apply(b, AdapterConfig(lora=LoraConfig(targets=[r"mask_decoder\.iou_prediction_head\.layers\.\d+"]), train=[]))
    assert any("iou_prediction_head.layers.0.lora_A" in n for n, _ in b.named_parameters())
    with pytest.raises(MedAdaptError, match="matches no linear layer"):
        apply(build_backbone("tiny_sam_vit"), AdapterConfig(lora=LoraConfig(targets=["no_such_layer"])))
    with pytest.raises(MedAdaptError, match="unknown parts"):
        AdapterConfig(train=["decoder"])
    with pytest.raises(MedAdaptError, match="unknown key"):
        AdapterConfig.from_dict({"lora": {"rnak": 4}})
    with pytest.raises(MedAdaptError, match="out of range"):
        apply(build_backbone("tiny_sam_vit"), AdapterConfig(spatial=SpatialAdapterConfig(blocks=[5])))


def test_foreign_backbone_or_base_weights_are_refused(tmp_path):
    model, _ = apply(build_backbone("tiny_sam_vit"), AdapterConfig(lora=LoraConfig()))
    save_adapter(model, tmp_path / "a")
    with pytest.raises(MedAdaptError, match="trained on backbone 'tiny_sam_vit'"):
        load_adapter(build_backbone("tiny_litemedsam"), tmp_path / "a")
    from medadapt.foundation.builtins import build_sam

    other = build_sam("tiny", "tiny_sam_vit", None, seed=1)  # same architecture, other weights
    with pytest.raises(MedAdaptError, match="different tiny_sam_vit base weights"):
        load_adapter(other, tmp_path / "a")
    changed = build_backbone("tiny_sam_vit")  # the same base, changed after it was built
    with torch.no_grad():
        next(changed.mask_decoder.parameters()).add_(0.1)
    with pytest.raises(MedAdaptError, match="different tiny_sam_vit base weights"):
        load_adapter(changed, tmp_path / "a")


def test_a_failed_load_leaves_the_backbone_as_it_was_and_frozen_models_are_not_saved_empty(tmp_path):
    model, _ = apply(build_backbone("tiny_sam_vit"), AdapterConfig(lora=LoraConfig(rank=2)))
    save_adapter(model, tmp_path / "good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter.json").write_bytes((tmp_path / "good" / "adapter.json").read_bytes())
    (tmp_path / "bad" / "adapter.safetensors").write_bytes(b"truncated")
    base = build_backbone("tiny_sam_vit")
    with pytest.raises(MedAdaptError, match="is not the weights file .* was saved with"):
        load_adapter(base, tmp_path / "bad")  # the description names its weights' digest
    info = json.loads((tmp_path / "good" / "adapter.json").read_text())
    del info["weights_sha256"]  # as written before the digest was kept: the file itself is read
    (tmp_path / "bad" / "adapter.json").write_text(json.dumps(info))
    with pytest.raises(MedAdaptError, match="could not read adapter weights"):
        load_adapter(base, tmp_path / "bad")
    other, _ = apply(build_backbone("tiny_sam_vit"), AdapterConfig(lora=LoraConfig(rank=2)))
    with torch.no_grad():
        for p in other.parameters():
            if p.requires_grad:
                p.add_(0.01)
    save_adapter(other, tmp_path / "other")  # a save of another model, cut after its weights
    (tmp_path / "bad" / "adapter.json").write_bytes((tmp_path / "good" / "adapter.json").read_bytes())
    (tmp_path / "bad" / "adapter.safetensors").write_bytes((tmp_path / "other" / "adapter.safetensors").read_bytes())
    with pytest.raises(MedAdaptError, match="a save interrupted between the two files"):
        load_adapter(base, tmp_path / "bad")
    assert base.adapter_config is None and not any(p.requires_grad for p in base.parameters())
    load_adapter(base, tmp_path / "good")  # the same backbone takes the good file
    with pytest.raises(MedAdaptError, match="no parameter of this model is trainable"):
        save_adapter(model.requires_grad_(False), tmp_path / "frozen")
    from medadapt.inference.optimize import optimize_for_inference

    with pytest.raises(MedAdaptError, match="optimised for inference"):
        save_adapter(optimize_for_inference(base), tmp_path / "optimised")
    assert not (tmp_path / "frozen").exists() and not (tmp_path / "optimised").exists()


def test_spatial_adapters_are_made_on_the_models_device_and_their_config_is_taken_as_written():
    model = build_backbone("tiny_sam_vit").to("meta")  # a device other than the CPU, as a GPU is
    apply(model, AdapterConfig(spatial=SpatialAdapterConfig(blocks=[0])))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    for bad in ({"bottleneck": 1.5}, {"blocks": [0, 0]}):
        with pytest.raises(MedAdaptError, match="adapter.spatial"):
            SpatialAdapterConfig(**bad)
    assert SpatialAdapterConfig(bottleneck=8).bottleneck == 8


def test_segmenter_loads_an_adapter(tmp_path):
    model, _ = apply(build_backbone("tiny_sam_vit"), AdapterConfig(spatial=SpatialAdapterConfig()))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".adapter.up" in n:
                p.normal_(0, 0.1)
    save_adapter(model, tmp_path / "run" / "adapter")
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=tmp_path / "run", device="cpu")
    base = Segmenter.from_pretrained("tiny_sam_vit", device="cpu")
    image = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    seg.set_image(image)
    base.set_image(image)
    a, b = seg.predict(boxes=[[5, 5, 30, 30]]), base.predict(boxes=[[5, 5, 30, 30]])
    assert not np.allclose(a.logits, b.logits)
    with pytest.raises(MedAdaptError, match="adapter not found"):
        Segmenter.from_pretrained("tiny_sam_vit", adapter=tmp_path / "nope")


def test_context_adapter_sees_as_far_as_its_dilations_and_no_further():
    """One changed embedding pixel moves the adapter's output over exactly its receptive field."""
    from medadapt.foundation.context import ContextAdapter

    torch.manual_seed(0)
    adapter = ContextAdapter(16, 8, [1, 2, 4]).eval()
    torch.nn.init.normal_(adapter.up.weight, std=0.1)  # trained: no longer the identity
    assert adapter.receptive_field == 15
    x = torch.randn(1, 16, 32, 32)
    y = x.clone()
    y[0, :, 16, 16] += 1.0
    with torch.no_grad():
        moved = (adapter(y) - adapter(x)).abs().amax(dim=(0, 1)) > 1e-6
    rows, cols = torch.nonzero(moved, as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (16 - 7, 16 + 7)
    assert (cols.min().item(), cols.max().item()) == (16 - 7, 16 + 7)


def test_context_adapter_is_skipped_by_another_decoder_and_survives_inference_optimisation():
    """The frozen pretrained decoder (semi-supervised refinement) reads the embedding as the encoder made it."""
    import copy

    from medadapt.inference.optimize import optimize_for_inference

    base = build_backbone("tiny_sam_vit")
    pretrained = copy.deepcopy(base.mask_decoder)
    model, _ = apply(base, AdapterConfig(context=ContextAdapterConfig(hidden=4, dilations=[1, 2]), train=[]))
    with torch.no_grad():
        torch.nn.init.normal_(model.context_adapter.up.weight, std=0.5)
    pixels, boxes = inputs(model)
    with torch.no_grad():
        emb = model.encode(pixels)
        sparse, dense = model.encode_prompts(boxes=boxes)
        own = model.decode(emb, sparse, dense)[0]
        other = model.decode(emb, sparse, dense, mask_decoder=pretrained)[0]
        plain = build_backbone("tiny_sam_vit")
        reference = plain.decode(emb, sparse, dense)[0]
    assert torch.equal(other, reference)
    assert (own - reference).abs().max().item() > 1e-3
    optimize_for_inference(model, precision="bf16")
    assert model.context_adapter.up.weight.dtype == torch.bfloat16
    with torch.no_grad():
        fast = model.decode(model.encode(pixels), *model.encode_prompts(boxes=boxes))[0].float()
    assert torch.isfinite(fast).all() and (fast > 0).eq(own > 0).float().mean().item() > 0.9


@pytest.mark.parametrize("bad, match", [
    ({"hidden": 0}, "context.hidden"),
    ({"dilations": []}, "context.dilations"),
    ({"dilations": [1, 0]}, "context.dilations"),
    ({"width": 8}, "width"),
])
def test_context_adapter_config_errors_name_the_key(bad, match):
    with pytest.raises(MedAdaptError, match=match):
        AdapterConfig.from_dict({"context": bad})


def test_a_trained_tinyvit_encoder_keeps_its_batchnorm_statistics_so_the_saved_adapter_is_the_trained_model(tmp_path):
    """BatchNorm statistics are buffers, which an adapter checkpoint does not hold: training must not move them,
    or the model validated in training and the model loaded from its adapter differ."""
    model, _ = apply(build_backbone("tiny_litemedsam"), AdapterConfig(train=["image_encoder", "mask_decoder"]))
    pixels, boxes = inputs(model)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    assert stats, "the tiny TinyViT should hold BatchNorm layers"
    set_train_mode(model, True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        target = (torch.rand(1, 1, *forward(model, pixels, boxes).shape[-2:]) > 0.5).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(model, pixels, boxes)[:, :1], target)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    model.eval()
    with torch.no_grad():
        trained = forward(model, pixels, boxes)
    save_adapter(model, tmp_path / "adapter")
    loaded = load_adapter(build_backbone("tiny_litemedsam"), tmp_path / "adapter")  # as built: in eval mode
    with torch.no_grad():  # (TinyViT caches its attention biases in eval mode: the cache holds the trained ones)
        assert torch.equal(forward(loaded, pixels, boxes), trained)
