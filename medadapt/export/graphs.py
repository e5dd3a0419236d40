"""The three graphs an export holds, as torch modules with fixed inputs and outputs, ready for ``torch.onnx.export``.

Each wraps the parts of a float32 :class:`~medadapt.foundation.Backbone`
(LoRA already merged) and computes what the torch path computes:

* :class:`EncoderGraph`: ``Backbone.encode`` followed by the context adapter
  (``adapt_embedding``), so the exported embedding is the one every decoder reads;
* :class:`PromptDecoderGraph`: SAM's prompt encoder and mask decoder for N
  prompts of T tokens (points labelled 1 / 0, box corners 2 / 3, padding -1,
  see :func:`medadapt.inference.onnx_runtime.prompt_tokens`) and an optional
  mask prompt, all four mask outputs;
* :class:`ClassDecoderGraph`: automatic mode, ``Backbone.decode_classes`` for
  any subset of the learned classes. The per-class hypernetworks are stacked
  into tensors and gathered by class index, so the subset is an input rather
  than a Python loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..foundation.backbone import Backbone, _predict_masks_per_image
from ..foundation.upscaling import upscale_masks


class EncoderGraph(nn.Module):
    """``pixel_values`` 1 x 3 x S x S -> ``image_embeddings`` 1 x C x s x s (context adapter applied)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.image_encoder = backbone.image_encoder
        self.context_adapter = backbone.context_adapter

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        emb = self.image_encoder(pixel_values)
        return emb if self.context_adapter is None else self.context_adapter(emb)


class PromptDecoderGraph(nn.Module):
    """Prompt tokens + an optional mask prompt -> ``low_res_masks`` N x 4 x m x m, ``iou_predictions`` N x 4."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        pe = backbone.prompt_encoder
        self.pe_layer = pe.pe_layer
        self.mask_downscaling = pe.mask_downscaling
        self.mask_decoder = backbone.mask_decoder
        h, w = pe.input_image_size
        self.register_buffer("frame", torch.tensor([float(w), float(h)]), persistent=False)
        table = torch.stack([e.weight[0] for e in pe.point_embeddings])  # labels 0, 1 (clicks), 2, 3 (box corners)
        self.register_buffer("label_embeddings", table.detach().clone(), persistent=False)
        self.register_buffer("not_a_point", pe.not_a_point_embed.weight.detach().clone(), persistent=False)
        self.register_buffer("no_mask", pe.no_mask_embed.weight.detach().reshape(1, -1, 1, 1).clone(), persistent=False)
        with torch.no_grad():
            self.register_buffer("dense_pe", pe.get_dense_pe().detach().clone(), persistent=False)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        # PromptEncoder._embed_points / _embed_boxes: +0.5 to the pixel centre, Fourier features, a learned embedding per label
        coords = (point_coords + 0.5) / self.frame
        sparse = self.pe_layer._pe_encoding(coords)
        sparse = sparse + self.label_embeddings[point_labels.clamp(min=0)]
        sparse = torch.where((point_labels < 0).unsqueeze(-1), self.not_a_point, sparse)
        # exact either way: 0 * mask term + 1 * no-mask embedding, or 1 * mask term + 0 * no-mask embedding
        dense = has_mask_input * self.mask_downscaling(mask_input) + (1.0 - has_mask_input) * self.no_mask
        emb = image_embeddings.expand(point_coords.shape[0], -1, -1, -1)
        return _predict_masks_per_image(self.mask_decoder, emb, self.dense_pe, sparse, dense)


class ClassDecoderGraph(nn.Module):
    """``image_embeddings`` 1 x C x s x s and ``class_ids`` K -> ``class_logits`` 1 x K x m x m, decoded jointly."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        cp, decoder = backbone.class_prompts, backbone.mask_decoder
        if cp is None:
            raise ValueError("this backbone has no learned class prompts")
        self.transformer = decoder.transformer
        self.output_upscaling = decoder.output_upscaling
        self.register_buffer("iou_token", decoder.iou_token.weight.detach().clone(), persistent=False)
        self.register_buffer("mask_tokens", cp.mask_tokens.detach().clone(), persistent=False)
        self.register_buffer("prompt_tokens", cp.tokens.detach().clone(), persistent=False)
        pe = backbone.prompt_encoder
        with torch.no_grad():
            self.register_buffer("dense_pe", pe.get_dense_pe().detach().clone(), persistent=False)
        self.register_buffer("no_mask", pe.no_mask_embed.weight.detach().reshape(1, -1, 1, 1).clone(), persistent=False)
        layers = [h.layers for h in cp.hypernets]
        self.depth = len(layers[0])
        for i in range(self.depth):  # class-stacked hypernetwork weights: K x out x in and K x out
            self.register_buffer(f"w{i}", torch.stack([ls[i].weight.detach() for ls in layers]), persistent=False)
            self.register_buffer(f"b{i}", torch.stack([ls[i].bias.detach() for ls in layers]), persistent=False)

    def forward(self, image_embeddings: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        _, _, h, w = image_embeddings.shape
        k = class_ids.shape[0]
        tokens = torch.cat([self.iou_token, self.mask_tokens[class_ids],
                            self.prompt_tokens[class_ids].reshape(-1, self.prompt_tokens.shape[-1])], dim=0)
        hs, src = self.transformer(image_embeddings + self.no_mask, self.dense_pe, tokens.unsqueeze(0))
        x = hs[0, 1 : 1 + k, :]  # K x D: each class's output mask token
        for i in range(self.depth):  # MLP: Linear + ReLU, ..., Linear, with class k's own weights
            x = torch.einsum("ki,koi->ko", x, getattr(self, f"w{i}")[class_ids]) + getattr(self, f"b{i}")[class_ids]
            if i < self.depth - 1:
                x = F.relu(x)
        return upscale_masks(self.output_upscaling, src, h, w, x.unsqueeze(0))


__all__ = ["ClassDecoderGraph", "EncoderGraph", "PromptDecoderGraph"]
