"""``apply(model, config)``: add adapters to a backbone and choose what trains.

Everything not named stays frozen. LoRA goes through peft's injection into
arbitrary ``nn.Module``s; spatial adapters wrap the encoder blocks' attention
and MLP. The summary counts trainable and total parameters per part so a user
sees at once what the run will update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..core.errors import MedAdaptError
from ..foundation import Backbone
from ..foundation.class_tokens import ClassPromptTokens
from ..foundation.context import ContextAdapter
from ..foundation.depth import DepthAdapter
from ..foundation.text_head import TextClassHead
from ..prompts.text.learned import training_phrases
from .config import BASE_PARTS, AdapterConfig, LearnedTextConfig
from .spatial import ParallelAdapted, SerialAdapted, SpatialAdapter, block_width
from .targets import encoder_blocks, resolve_targets

ADAPTER_MARKERS = ("lora_", ".adapter.", "class_prompts.", "text_head.", "context_adapter.", "depth_adapter.")


@dataclass
class PartCount:
    part: str
    trainable: int
    total: int


@dataclass
class AdapterSummary:
    """Trainable / total parameters per part; ``str()`` prints a small table."""

    rows: list[PartCount]

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)

    def __str__(self) -> str:
        lines = [f"{'part':<16}{'trainable':>14}{'total':>14}{'share':>9}"]
        for r in self.rows + [PartCount("all", self.trainable, self.total)]:
            share = 100.0 * r.trainable / r.total if r.total else 0.0
            lines.append(f"{r.part:<16}{r.trainable:>14,}{r.total:>14,}{share:>8.2f}%")
        return "\n".join(lines)


def is_adapter_param(name: str) -> bool:
    """True for parameters added by adapters (LoRA or spatial), not base weights."""
    return any(m in name for m in ADAPTER_MARKERS)


def add_lora(model: Backbone, config: AdapterConfig) -> list[str]:
    """Inject LoRA into the configured linear layers with peft; returns their names."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    lc = config.lora
    names = resolve_targets(model, model.info.family, lc.targets)
    peft_cfg = PeftLoraConfig(
        r=lc.rank, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=names, bias="none",
    )
    inject_adapter_in_model(peft_cfg, model)
    return names


def add_spatial(model: Backbone, config: AdapterConfig) -> list[str]:
    """Wrap the chosen encoder blocks' attention and MLP with spatial adapters."""
    sc = config.spatial
    blocks = encoder_blocks(model, model.info.family)
    chosen = range(len(blocks)) if sc.blocks is None else sc.blocks
    bad = [i for i in chosen if not 0 <= i < len(blocks)]
    if bad:
        raise MedAdaptError(f"spatial.blocks {bad} out of range: this encoder has {len(blocks)} blocks (0..{len(blocks) - 1})")
    done = []
    for i in chosen:
        name, block = blocks[i]
        dim = block_width(block)
        hidden = int(sc.bottleneck) if sc.bottleneck > 1 else max(1, round(dim * sc.bottleneck))
        if "attention" in sc.positions:
            block.attn = SerialAdapted(block.attn, SpatialAdapter(dim, hidden, sc.depthwise_conv).to(model.device))
        if "mlp" in sc.positions:
            block.mlp = ParallelAdapted(block.mlp, SpatialAdapter(dim, hidden, sc.depthwise_conv).to(model.device),
                                        sc.scale)
        done.append(name)
    return done


def add_context(model: Backbone, config: AdapterConfig) -> None:
    """Put a context adapter between the encoder's embedding and the decoder."""
    c = config.context
    model.context_adapter = ContextAdapter(model.embed_dim, int(c.hidden), [int(d) for d in c.dilations]).to(model.device)


def add_depth(model: Backbone, config: AdapterConfig) -> None:
    """Put a depth adapter (neighbouring slices' embeddings) before the decoder."""
    d = config.depth
    model.depth_adapter = DepthAdapter(model.embed_dim, int(d.hidden), int(d.neighbours)).to(model.device)


def add_class_prompts(model: Backbone, config: AdapterConfig) -> None:
    """Give the model learned prompt tokens for each target class (automatic mode)."""
    a = config.automatic
    tokens = ClassPromptTokens(len(a.class_names), model.embed_dim, a.tokens_per_class).to(model.device)
    tokens.init_from_box(model.prompt_encoder, model.processor.image_size)
    tokens.init_from_decoder(model.mask_decoder)
    model.class_prompts = tokens.to(model.device)


def add_text_head(model: Backbone, config: LearnedTextConfig, class_names: Sequence[str]) -> TextClassHead:
    """Give an automatic-mode model an (untrained) text head of the configured shape."""
    phrases, _ = training_phrases(class_names, config.aliases, config.templates)
    head = TextClassHead(config.embed_dim, len(class_names), len(phrases)).to(model.device)
    model.text_head = head
    return head


def apply(model: Backbone, config: AdapterConfig) -> tuple[Backbone, AdapterSummary]:
    """Adapt ``model`` in place: freeze it, add adapters, unfreeze ``config.train``.

    Returns the model and a per-part parameter summary. An adapted model at
    initialisation computes exactly what the base model computes (zero-initialised
    LoRA B matrices and adapter up-projections).
    """
    if model.adapter_config is not None:
        raise MedAdaptError("this model already has adapters; build a fresh backbone to apply another config")
    if model.inference_only:
        raise MedAdaptError(
            "this backbone was optimised for inference (BatchNorm folded, bf16); "
            "build a fresh one with build_backbone(name) to train adapters"
        )
    model.requires_grad_(False)
    if config.lora is not None:
        add_lora(model, config)
    if config.spatial is not None:
        add_spatial(model, config)
    if config.context is not None:
        add_context(model, config)
    if config.depth is not None:
        add_depth(model, config)
    if config.automatic is not None:
        add_class_prompts(model, config)
    if config.text is not None and config.text.embed_dim > 0:  # a trained head being loaded
        add_text_head(model, config.text, config.automatic.class_names)
    for name, p in model.named_parameters():
        p.requires_grad = is_adapter_param(name) or name.split(".", 1)[0] in config.train
    model.adapter_config = config
    return model, summarize(model)


def summarize(model: nn.Module) -> AdapterSummary:
    """Count trainable and total parameters per base part and for the adapters."""
    rows = {p: PartCount(p, 0, 0) for p in (*BASE_PARTS, "adapters")}
    for name, p in model.named_parameters():
        part = "adapters" if is_adapter_param(name) else name.split(".", 1)[0]
        row = rows.setdefault(part, PartCount(part, 0, 0))
        row.total += p.numel()
        row.trainable += p.numel() if p.requires_grad else 0
    return AdapterSummary(list(rows.values()))


def set_train_mode(model: nn.Module, training: bool = True) -> nn.Module:
    """``model.train(training)``, but every BatchNorm layer stays in eval mode.

    TinyViT has BatchNorm layers. In train mode their running statistics would
    drift: a frozen base would silently change, and for a trained encoder the
    statistics that validation saw would not be the ones an adapter checkpoint
    holds (it saves parameters, not buffers). So the statistics stay the base
    model's, and a trained BatchNorm learns only its scale and shift (the usual
    choice when fine-tuning with a few images a batch).
    """
    model.train(training)
    if training:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


def keeps_base_encoder(model: nn.Module) -> bool:
    """Whether an adapted backbone still encodes images and prompts exactly as its base did: no LoRA, no
    spatial adapters, neither encoder trained. The base model's mask decoder can then read its embeddings
    (a context adapter acts in front of its own decoder only)."""
    cfg = getattr(model, "adapter_config", None)
    if cfg is None:
        return True
    return cfg.lora is None and cfg.spatial is None and not {"image_encoder", "prompt_encoder"} & set(cfg.train)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA weights into the base linear layers and remove the LoRA modules.

    For deployment: the merged model computes the same outputs (up to float
    rounding) with plain ``nn.Linear`` layers and no peft dependency at run time.
    """
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            base = module.get_base_layer()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, base)
    cfg = getattr(model, "adapter_config", None)  # any module may be merged, not only a Backbone
    if cfg is not None and cfg.lora is not None:
        model.lora_merged = True
    return model


@torch.no_grad()
def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter checkpoint holds: every trainable parameter."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


__all__ = [
    "keeps_base_encoder",
    "AdapterSummary", "PartCount", "apply", "summarize", "set_train_mode", "merge_lora", "trainable_state",
    "is_adapter_param", "add_lora", "add_spatial", "add_context", "add_depth", "add_class_prompts", "add_text_head",
]
