"""Where a text matches an image (CLIP saliency), and the boxes and clicks that follow from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ...core.errors import MedAdaptError
from ..simulate import box_from_mask
from ..types import PAD_LABEL, Prompts
from .clip import ClipTextModel
from .config import TextPromptConfig, _methods, as_texts


@dataclass
class _Tower:
    """Where the tokens of a ViT image tower are, whichever library built it."""

    blocks: list[torch.nn.Module]
    prefix: int  # class / register tokens before the patch tokens
    grid: tuple[int, int]
    batch_first: bool
    post: Callable[[torch.Tensor], torch.Tensor] | None  # B x N x D tokens -> embedding space
    average_pooled: bool  # the image embedding is the mean of the patch tokens


def _tower(model: torch.nn.Module) -> _Tower:
    visual = model.visual
    transformer = getattr(visual, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):  # open_clip VisionTransformer
        post = None
        if getattr(visual, "attn_pool", None) is None:
            def post(t: torch.Tensor) -> torch.Tensor:
                t = visual.ln_post(t)
                return t @ visual.proj if visual.proj is not None else t
        grid = tuple(int(g) for g in visual.grid_size)
        avg = post is not None and getattr(visual, "pool_type", "tok") == "avg"
        return _Tower(list(transformer.resblocks), 1, grid, bool(getattr(transformer, "batch_first", True)), post, avg)
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed"):  # timm ViT (BiomedCLIP)
        post = None
        head = getattr(visual, "head", None)
        pooled_by_head = head is not None and any(n == "pool" for n, _ in head.named_children())
        if getattr(trunk, "attn_pool", None) is None and not pooled_by_head:
            def post(t: torch.Tensor) -> torch.Tensor:
                t = trunk.fc_norm(trunk.norm(t))
                t = trunk.head(t)
                return head(t) if head is not None else t
        grid = tuple(int(g) for g in trunk.patch_embed.grid_size)
        avg = post is not None and getattr(trunk, "global_pool", "token") == "avg"
        return _Tower(list(trunk.blocks), int(getattr(trunk, "num_prefix_tokens", 1)), grid, True, post, avg)
    raise MedAdaptError(
        f"text saliency needs a ViT image tower (open_clip VisionTransformer or a timm ViT trunk); "
        f"got {type(visual).__name__}"
    )


def _bnd(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    return x if batch_first else x.transpose(0, 1)


def _target_scores(sims: torch.Tensor, scale: float, contrast: bool) -> torch.Tensor:
    """T scores to explain, one per text, from 1 x T image-text cosine similarities.

    With contrast, each text's score is its similarity minus a soft maximum of
    the others' (in logit units): unlike a softmax probability it does not
    saturate, so its gradient still points at the text's evidence when the
    model is already sure.
    """
    s = sims[0]
    if not contrast or s.numel() == 1:
        return s
    logits = scale * s
    out = []
    for t in range(s.numel()):
        others = torch.cat([logits[:t], logits[t + 1:]])
        out.append(logits[t] - torch.logsumexp(others, dim=0))
    return torch.stack(out)


def _gradcam(clip: ClipTextModel, tower: _Tower, pixels: torch.Tensor, text_emb: torch.Tensor, contrast: bool) -> torch.Tensor:
    """T x gh x gw Grad-CAM of each text's score on the tokens entering the last block.

    Two ViT-specific choices, both checked on a small CLIP trained in the
    tests:

    * the tokens *entering* the last block are used, because with class-token
      pooling the patch tokens leaving it never reach the embedding (their
      gradient is zero);
    * the gradient weights each token's own activation (gradient x activation,
      summed over channels) instead of being averaged over the grid first as
      in CNN Grad-CAM: ViT channels are not spatially stationary feature maps,
      and the averaged weights light up the background wherever its
      activations are large.

    The ReLU keeps evidence *for* the text.
    """
    store: dict[str, torch.Tensor] = {}

    def grab(_module, args, kwargs):
        # Restart the graph here: the gradient is only needed from this point
        # on, and a frozen model (requires_grad False) must work too.
        store["x"] = args[0].detach().requires_grad_(True)
        return (store["x"], *args[1:]), kwargs

    handle = tower.blocks[-1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        img = F.normalize(clip.model.encode_image(pixels).float(), dim=-1)
    finally:
        handle.remove()
    scores = _target_scores(img @ text_emb.T, clip.logit_scale, contrast)
    acts = _bnd(store["x"], tower.batch_first)[0, tower.prefix:].float()  # N x D
    cams = []
    for t in range(scores.numel()):
        (grad,) = torch.autograd.grad(scores[t], store["x"], retain_graph=t + 1 < scores.numel())
        g = _bnd(grad, tower.batch_first)[0, tower.prefix:].float()
        cams.append(torch.relu((acts * g).sum(dim=1)))
    return torch.stack(cams).detach().reshape(-1, *tower.grid)


def _similarity(clip: ClipTextModel, tower: _Tower, pixels: torch.Tensor, text_emb: torch.Tensor, contrast: bool) -> torch.Tensor:
    """T x gh x gw similarity of each patch token to each text.

    In an average-pooled tower the image embedding is the mean of the patch
    tokens, so each token's similarity to the text is exactly its share of
    the image-text score (a class activation map). In a class-token tower
    (OpenAI CLIP, BiomedCLIP) the patch tokens leaving the last block never
    reach the embedding and mostly carry global context, so the last block is
    re-run with every token attending only to itself, which keeps each patch's
    own content (the MaskCLIP / SCLIP observation).
    """
    if tower.post is None:
        raise MedAdaptError(
            "this image tower pools with attention, so its patch tokens have no text-comparable embedding; "
            "use saliency='gradcam'"
        )
    store: dict[str, torch.Tensor] = {}
    block = tower.blocks[-1]

    def grab(_module, args, kwargs):
        store["x"] = args[0]

    def grab_out(_module, _args, output):
        store["out"] = output

    handles = [block.register_forward_pre_hook(grab, with_kwargs=True), block.register_forward_hook(grab_out)]
    try:
        with torch.no_grad():
            clip.model.encode_image(pixels)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        out = store["out"] if tower.average_pooled else _self_attention_only(block, store["x"], tower.batch_first)
        tokens = tower.post(_bnd(out, tower.batch_first))[0, tower.prefix:].float()
    sims = F.normalize(tokens, dim=-1) @ text_emb.T  # N x T
    # Relative to the typical (median) patch, which is background in most
    # images: every patch resembles every text a little, and that shared part
    # says nothing about where the text is.
    rel = sims - sims.median(dim=0).values
    if contrast and rel.shape[1] > 1:
        others = torch.stack([torch.cat([rel[:, :t], rel[:, t + 1:]], dim=1).amax(dim=1) for t in range(rel.shape[1])], 1)
        rel = rel - others.clamp(min=0)  # where this text beats the best other text
    return rel.clamp(min=0).T.reshape(-1, *tower.grid)


def _self_attention_only(block: torch.nn.Module, x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """The block's output when every token may attend only to itself."""
    n = x.shape[1] if batch_first else x.shape[0]
    self_only = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype)
    self_only.fill_diagonal_(0.0)
    try:
        return block(x, attn_mask=self_only)
    except TypeError:  # a block without attention masks: its plain output is the best there is
        return block(x)


def _to_image(grid: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """T x gh x gw patch maps -> T x H x W, bilinear, undoing the square padding of ``preprocess``."""
    h, w = size
    side = max(h, w)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / side * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / side * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    where = torch.stack([gx, gy], dim=-1)[None].expand(grid.shape[0], -1, -1, -1)
    out = F.grid_sample(grid[:, None].float().cpu(), where, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, 0].numpy()


def _normalise(maps: np.ndarray) -> np.ndarray:
    peak = maps.reshape(maps.shape[0], -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, np.clip(maps, 0, None) / np.where(peak > 0, peak, 1), 0.0).astype(np.float32)


def text_saliency(
    clip: ClipTextModel,
    image: np.ndarray,
    texts: str | Sequence[str],
    *,
    config: TextPromptConfig | None = None,
) -> np.ndarray:
    """Where each text matches the image: H x W in [0, 1] (T x H x W for a list).

    The map is at the image's original size, scaled so its maximum is 1 (all
    zeros when the model finds no evidence). With several texts and
    ``config.contrast``, each map shows where its text beats the others.
    """
    cfg = config or clip.config
    names = as_texts(texts)
    size = tuple(np.asarray(image).shape[:2])
    tower = _tower(clip.model)
    # Segmenter.predict runs in inference mode, where no gradient can be taken.
    with torch.inference_mode(False), torch.enable_grad():
        pixels = clip.preprocess(image)
        text_emb = clip.embed_texts(names, cfg)
        grids = []
        for method in _methods(cfg.saliency):
            fn = _gradcam if method == "gradcam" else _similarity
            grid = fn(clip, tower, pixels, text_emb, cfg.contrast)
            peak = grid.reshape(grid.shape[0], -1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
            grids.append(grid / peak)
        grid = torch.stack(grids).mean(dim=0)
    maps = _normalise(_to_image(grid, size))
    return maps[0] if isinstance(texts, str) else maps


# ------------------------------------------------------------------ prompts
def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (256 bins): the cut with most between-class variance."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m = np.cumsum(p * centers)
    mt = m[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def _peaks(score: np.ndarray, region: np.ndarray, n: int, radius: float, lowest: bool = False) -> np.ndarray:
    """Up to ``n`` (x, y) pixels of ``region`` at the highest (or lowest) ``score``, ``radius`` apart."""
    if n <= 0 or not region.any():
        return np.zeros((0, 2), dtype=np.float32)
    s = np.where(region, -score if lowest else score, -np.inf)
    yy, xx = np.mgrid[: s.shape[0], : s.shape[1]]
    out = []
    for _ in range(n):
        i = int(np.argmax(s))
        if not np.isfinite(s.flat[i]):
            break
        y, x = np.unravel_index(i, s.shape)
        out.append((x, y))
        s[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = -np.inf
    return np.asarray(out, dtype=np.float32).reshape(-1, 2)


def prompts_from_saliency(saliency: np.ndarray, config: TextPromptConfig | None = None) -> Prompts:
    """Boxes and clicks for the salient regions of one H x W map.

    The map is thresholded (``config.threshold``), split into connected
    components, components under ``min_component_area`` are dropped and the
    ``max_components`` with the most saliency mass are kept (strongest first).
    Each gives one object: its tight box, ``n_positive_points`` clicks at its
    saliency peaks and ``n_negative_points`` background clicks at the least
    salient pixels of its box grown by a quarter, outside every thresholded
    region. Short point sets are padded with label -1. Returns an empty
    Prompts (length 0) when nothing passes.
    """
    cfg = config or TextPromptConfig()
    s = np.asarray(saliency, dtype=np.float32)
    if s.ndim != 2:
        raise MedAdaptError(f"saliency must be an H x W map; got shape {tuple(s.shape)}")
    if not np.all(np.isfinite(s)):
        raise MedAdaptError("saliency contains NaN or infinite values")
    peak = float(s.max())
    if peak <= 0:
        return Prompts(boxes=np.zeros((0, 4), dtype=np.float32))
    s = np.clip(s / peak, 0, 1)
    thr = _otsu(s) if cfg.threshold == "otsu" else float(cfg.threshold)
    binary = s >= thr
    labels, n = ndimage.label(binary)
    if n == 0:
        return Prompts(boxes=np.zeros((0, 4), dtype=np.float32))
    idx = np.arange(1, n + 1)
    areas = ndimage.sum_labels(np.ones_like(s), labels, idx)
    mass = ndimage.sum_labels(s, labels, idx)
    keep = [int(i) for i in idx[np.argsort(-mass, kind="stable")] if areas[i - 1] >= cfg.min_component_area * s.size]
    keep = keep[: cfg.max_components]
    if not keep:
        return Prompts(boxes=np.zeros((0, 4), dtype=np.float32))
    h, w = s.shape
    outside = ~ndimage.binary_dilation(binary, iterations=2)
    k = cfg.n_positive_points + cfg.n_negative_points
    boxes, points, point_labels = [], [], []
    for lab in keep:
        comp = labels == lab
        box = box_from_mask(comp)
        boxes.append(box)
        if k == 0:
            continue
        radius = max(2.0, 0.25 * float(np.sqrt(comp.sum())))
        pos = _peaks(s, comp, cfg.n_positive_points, radius)
        x0, y0, x1, y1 = box
        gx, gy = 0.25 * (x1 - x0 + 1), 0.25 * (y1 - y0 + 1)
        ring = np.zeros_like(comp)
        ring[int(max(0, y0 - gy)) : int(min(h, y1 + gy + 1)), int(max(0, x0 - gx)) : int(min(w, x1 + gx + 1))] = True
        neg = _peaks(s, ring & outside, cfg.n_negative_points, radius, lowest=True)
        pts = np.zeros((k, 2), dtype=np.float32)
        labs = np.full(k, PAD_LABEL, dtype=np.int64)
        pts[: len(pos)], labs[: len(pos)] = pos, 1
        pts[len(pos) : len(pos) + len(neg)], labs[len(pos) : len(pos) + len(neg)] = neg, 0
        points.append(pts)
        point_labels.append(labs)
    return Prompts(
        boxes=np.stack(boxes),
        points=np.stack(points) if points else None,
        point_labels=np.stack(point_labels) if points else None,
    )



__all__ = ["prompts_from_saliency", "text_saliency"]
