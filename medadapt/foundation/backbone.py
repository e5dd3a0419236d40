"""One interface over every SAM-family model: encode an image, decode prompts.

SAM, MedSAM, LiteMedSAM and Hugging Face SAM checkpoints all share the same
split: a heavy image encoder run once per image, and a light prompt encoder +
mask decoder run per prompt. :class:`Backbone` keeps that split explicit so the
rest of medadapt (predictor, adapters, training) never needs to know which
family it is talking to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..prompts.types import Prompts
from .class_tokens import ClassPromptTokens
from .context import ContextAdapter
from .depth import DepthAdapter
from .processor import SamProcessor
from .text_head import TextClassHead
from .upscaling import upscale_masks


@dataclass
class BackboneInfo:
    """What a backbone is and where its weights came from (shown by ``medadapt models``)."""

    name: str
    family: str  # "vit" (SAM/MedSAM ViT) or "tinyvit" (LiteMedSAM)
    weights: str  # human-readable origin of the weights
    fingerprint: str = ""  # of the base weights, so adapters can refuse foreign bases
    extra: dict = field(default_factory=dict)


class Backbone(nn.Module):
    """A frozen-by-default SAM-family model: image encoder, prompt encoder, mask decoder.

    The decoder batch is the prompt batch: ``N`` prompts on one image share one
    image embedding (SAM's decoder repeats it internally), so encoding cost is
    paid once per image whatever the number of prompts.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        processor: SamProcessor,
        info: BackboneInfo,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.processor = processor
        self.info = info
        # set by medadapt.inference.optimize_for_inference; None = as built (float32)
        self.compute_dtype: torch.dtype | None = None
        self.channels_last = False
        self.inference_only = False
        # The heads that ride on the model, added by medadapt.adapters.apply (None: not present):
        self.class_prompts: ClassPromptTokens | None = None  # automatic mode's learned class tokens
        self.context_adapter: ContextAdapter | None = None  # mixes the cached embedding before decoding
        self.depth_adapter: DepthAdapter | None = None  # mixes a slice's embedding with its neighbours'
        self.text_head: TextClassHead | None = None  # learned text prompts
        self._text_encoder = None  # the text head's sentence encoder, loaded on first use
        self.adapter_config = None  # the medadapt.adapters.AdapterConfig applied, if any
        self.lora_merged = False  # LoRA folded into the base weights (medadapt.adapters.merge_lora)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embed_dim(self) -> int:
        return int(self.prompt_encoder.embed_dim)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S preprocessed images -> B x C x s x s image embeddings.

        An optimised backbone returns them in its compute dtype (bf16), which
        the decoder takes as is; the float32 model returns float32.
        """
        if self.compute_dtype is not None:
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            pixel_values = pixel_values.to(dtype=self.compute_dtype, memory_format=fmt)
        return self.image_encoder(pixel_values)

    def encode_prompts(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the model-input frame -> (sparse N x T x C, dense N x C x s x s) embeddings."""
        if boxes is not None and boxes.ndim == 2:
            boxes = boxes[:, None, :]
        return self.prompt_encoder(points=points, boxes=boxes, masks=masks)

    def adapt_embedding(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """The embedding the model's own decoder reads: through the depth and context adapters when present.

        ``image_embeddings`` is B x C x s x s, or B x S x C x s x s for slices with their neighbours
        (S = 2n + 1, the slice itself in the middle; see :mod:`medadapt.foundation.depth`). Without a
        depth adapter only the centre is read; with one, a lone slice stands in for its neighbours.
        Applied at decode time, not in :meth:`encode`, so cached encoder outputs stay valid while the
        adapters train.
        """
        depth = self.depth_adapter
        if image_embeddings.ndim == 5 and depth is None:
            image_embeddings = image_embeddings[:, image_embeddings.shape[1] // 2]
        elif depth is not None:
            if image_embeddings.ndim == 4:
                image_embeddings = image_embeddings[:, None].expand(-1, depth.slices, -1, -1, -1)
            image_embeddings = depth(image_embeddings.to(depth.up.weight.dtype))
        adapter = self.context_adapter
        if adapter is None:
            return image_embeddings
        return adapter(image_embeddings.to(adapter.up.weight.dtype))

    @property
    def depth_slices(self) -> int:
        """Slices each decoded embedding should come with: 2n + 1 with a depth adapter, else 1."""
        return 1 if self.depth_adapter is None else self.depth_adapter.slices

    def decode_classes(self, image_embeddings: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        """Automatic mode: B image embeddings -> B x K low-res logits, one decoder pass per image.

        The K classes' learned prompt tokens and mask tokens go through the
        decoder together, so classes compete for pixels inside the decoder
        (see :mod:`medadapt.foundation.class_tokens`).
        """
        cp = self.class_prompts
        if cp is None:
            raise AttributeError("this model has no learned class prompts")
        image_embeddings = self.adapt_embedding(image_embeddings)
        _, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
        pe = self.prompt_encoder.get_dense_pe()
        dtype = self.compute_dtype or _autocast_dtype(image_embeddings.device.type)
        if dtype is not None:
            image_embeddings, pe, dense = (t.to(dtype) for t in (image_embeddings, pe, dense))
        return _predict_class_masks(self.mask_decoder, cp, image_embeddings, pe, dense, class_ids, dtype)

    def decode_prompts(
        self, image_embeddings: torch.Tensor, prompts: Prompts, multimask: bool = False,
        mask_decoder: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a :class:`~medadapt.prompts.Prompts` given in the model input frame.

        ``image_embeddings`` is 1 x C x s x s (one image, N prompts) or N x C x
        s x s (one image per prompt). Objects with a box and objects without one
        go through the decoder in separate calls (:meth:`Prompts.decode_groups`);
        their answers come back in the prompts' order. Returns low-resolution
        logits N x K x m x m and predicted IoU N x K as :meth:`decode` does; ``mask_decoder`` as there.
        """
        device = image_embeddings.device
        groups = prompts.decode_groups()
        if len(groups) == 1:
            sparse, dense = self.encode_prompts(**groups[0][1].to_torch(device))
            return self.decode(image_embeddings, sparse, dense, multimask=multimask, mask_decoder=mask_decoder)
        n, per_prompt = len(prompts), image_embeddings.shape[0] > 1
        low = iou = None
        for idx, group in groups:
            emb = image_embeddings[torch.as_tensor(idx, device=device)] if per_prompt else image_embeddings
            sparse, dense = self.encode_prompts(**group.to_torch(device))
            lo, sc = self.decode(emb, sparse, dense, multimask=multimask, mask_decoder=mask_decoder)
            if low is None:
                low = torch.empty(n, *lo.shape[1:], device=device)
                iou = torch.empty(n, *sc.shape[1:], device=device)
            rows = torch.as_tensor(idx, device=device)
            low[rows], iou[rows] = lo.to(low.dtype), sc.to(iou.dtype)
        return low, iou

    def decode(
        self,
        image_embeddings: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask: bool = False,
        mask_decoder: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the mask decoder for a batch of prompts.

        ``image_embeddings`` is 1 x C x s x s (shared by all N prompts) or
        N x C x s x s (one image per prompt, as in training batches).
        Returns low-resolution logits N x K x m x m and predicted IoU N x K,
        K = 3 with ``multimask`` else 1. ``mask_decoder`` runs another decoder
        of the same architecture (e.g. the frozen pretrained one) instead; it
        reads the embedding as encoded, without this model's context adapter.
        """
        if mask_decoder is None:
            decoder, image_embeddings = self.mask_decoder, self.adapt_embedding(image_embeddings)
        else:
            decoder = mask_decoder
            if image_embeddings.ndim == 5:  # the slice itself, without its neighbours
                image_embeddings = image_embeddings[:, image_embeddings.shape[1] // 2]
        pe = self.prompt_encoder.get_dense_pe()
        dtype = self.compute_dtype or _autocast_dtype(image_embeddings.device.type)
        if dtype is not None:  # cast the (large) inputs once, not inside every layer
            image_embeddings, pe, sparse, dense = (t.to(dtype) for t in (image_embeddings, pe, sparse, dense))
        n = sparse.shape[0]
        if image_embeddings.shape[0] == 1 and n > 1:  # one image, N prompts: SAM repeats the embedding too
            image_embeddings = image_embeddings.expand(n, -1, -1, -1)
        elif image_embeddings.shape[0] != n:
            raise ValueError(f"{image_embeddings.shape[0]} image embeddings for {n} prompts: give 1 or {n}")
        masks, iou = _predict_masks_per_image(decoder, image_embeddings, pe, sparse, dense)
        sl = slice(1, None) if multimask else slice(0, 1)
        return masks[:, sl], iou[:, sl]


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype when autocast is on for ``device_type`` (training in bf16), else None."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _token_major(x: torch.Tensor) -> torch.Tensor:
    """B x C x h x w stored channels-last, so SAM's transformer's ``flatten(2).permute(0, 2, 1)`` is contiguous.

    With the default layout every image-token tensor in the two-way
    transformer is a transposed view, and each add, norm and head split on it
    takes a strided kernel or a copy (on CPU about a fifth of a cached training step).
    """
    return x.contiguous(memory_format=torch.channels_last)


def _predict_class_masks(decoder: nn.Module, cp: nn.Module, emb, pe, dense, ids, dtype) -> torch.Tensor:
    """SAM's decoder with the K classes' mask tokens as outputs and their prompt tokens as inputs."""
    b, _, h, w = emb.shape
    k = ids.numel()
    out_tokens = torch.cat([decoder.iou_token.weight, cp.mask_tokens[ids]], dim=0)
    prompts = cp.tokens[ids].reshape(-1, cp.tokens.shape[-1])
    tokens = torch.cat([out_tokens, prompts], dim=0)
    if dtype is not None:
        tokens = tokens.to(dtype)
    tokens = tokens.unsqueeze(0).expand(b, -1, -1)
    src, pos = _token_major(emb + dense), _token_major(pe).expand(b, -1, -1, -1)
    hs, src = decoder.transformer(src, pos, tokens)
    mask_out = hs[:, 1 : 1 + k, :]
    hyper = torch.stack([cp.hypernets[int(i)](mask_out[:, j, :]) for j, i in enumerate(ids.tolist())], dim=1)
    return upscale_masks(decoder.output_upscaling, src, h, w, hyper)


def _predict_masks_per_image(decoder: nn.Module, emb, pe, sparse, dense):
    """SAM's ``MaskDecoder.predict_masks`` for B images x B prompts (no repeat).

    Mirrors the official computation step by step, except that the image
    embedding is not repeated per prompt because each prompt has its own image.
    """
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    src = _token_major(emb + dense)
    pos_src = _token_major(pe).expand(tokens.shape[0], -1, -1, -1)
    h, w = src.shape[-2:]
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + decoder.num_mask_tokens), :]
    hyper_in = torch.stack(
        [decoder.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(decoder.num_mask_tokens)],
        dim=1,
    )
    masks = upscale_masks(decoder.output_upscaling, src, h, w, hyper_in)
    iou_pred = decoder.iou_prediction_head(iou_token_out)
    return masks, iou_pred


__all__ = ["Backbone", "BackboneInfo"]
