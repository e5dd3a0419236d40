"""Training samples in the model's frame, and the embedding cache.

Each 2-D slice is preprocessed once by the backbone's processor (resize,
normalise, pad) and its label map is moved to the decoder's low-resolution
grid, so a training step touches only tensors. When the image encoder is
frozen and unadapted, its output for a slice never changes: it is computed once
and cached (in memory, and on disk if asked), keyed by the preprocessed image's
content and the backbone's weight fingerprint.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import MedAdaptError
from ..core.files import atomic_write, expand_path
from ..core.resample import resize_labels
from ..foundation import Backbone, ImageMeta
from ..foundation.depth import neighbour_stack
from ..inference.optimize import optimize_for_inference, resolve_precision
from .distributed import World


@dataclass
class ModelSample:
    """One slice ready for the model."""

    pixels: torch.Tensor  # 3 x S x S float32, preprocessed and padded
    target: torch.Tensor  # m x m int64 label map on the decoder grid (class k = k, background 0)
    label: np.ndarray | None  # H x W label map at the original size (for evaluation)
    meta: ImageMeta
    case_id: str
    index: int | None
    key: str  # content hash of ``pixels``
    neighbours: tuple[str | None, ...] = ()  # with a depth adapter: cache keys of slices k-n..k+n (None: absent)


def _keep_strokes(source: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Scribbles (-1 unlabelled) resized down to ``out`` by nearest: a thin stroke must survive the coarser
    grid, so a cell that came out unlabelled takes a stroke value found anywhere in it, and a class's stroke
    takes a cell that nearest gave the background (a class stroke beside a background stroke is not lost)."""
    size = tuple(out.shape[-2:])
    for v in sorted(torch.unique(source[source >= 0]).tolist(), reverse=True):
        hit = F.adaptive_max_pool2d((source == v).float(), size) > 0
        free = (out < 0) | ((out == 0) & (v > 0)) if v > 0 else (out < 0)
        out = torch.where(free & hit, torch.full_like(out, v), out)
    return out


def to_model_frame(label: np.ndarray, meta: ImageMeta, image_size: int, mask_size: int) -> torch.Tensor:
    """An H x W label map -> the decoder's m x m grid, padded like the image. A mask is resampled centred, as
    the image is (each cell the label covering most of it: :mod:`medadapt.core.resample`); scribbles go by
    nearest and keep every stroke through both resizes (see :func:`_keep_strokes`)."""
    source = torch.from_numpy(np.ascontiguousarray(label)).float()[None, None]
    scribbles = bool((source < 0).any())
    if not scribbles:
        t = resize_labels(source[0, 0].long(), meta.input_size)
        t = F.pad(t, (0, image_size - meta.input_size[1], 0, image_size - meta.input_size[0]), value=0)
        return resize_labels(t, (mask_size, mask_size))
    t = F.interpolate(source, size=meta.input_size, mode="nearest")
    if tuple(meta.input_size) != tuple(source.shape[-2:]):
        t = _keep_strokes(source, t)
    # padding is background in a mask; in scribbles (-1 unlabelled) it is unlabelled: nobody drew there, and
    # thousands of trivially easy padded "strokes" would swamp the real ones
    t = F.pad(t, (0, image_size - meta.input_size[1], 0, image_size - meta.input_size[0]), value=-1.0)
    out = F.interpolate(t, size=(mask_size, mask_size), mode="nearest")
    if mask_size != image_size:
        out = _keep_strokes(t, out)
    return out[0, 0].long()


def prepare(backbone: Backbone, slices: Sequence) -> list[ModelSample]:
    """Preprocess slices (objects with image, label, case_id, index) for ``backbone``."""
    proc = backbone.processor
    out = []
    for s in slices:
        pixels, meta = proc.preprocess(s.image)
        pixels = pixels[0]
        label = None if s.label is None else np.asarray(s.label)
        target = (
            to_model_frame(label, meta, proc.image_size, proc.mask_size)
            if label is not None
            else torch.zeros(proc.mask_size, proc.mask_size, dtype=torch.long)
        )
        key = hashlib.sha1(pixels.numpy().tobytes()).hexdigest()
        out.append(ModelSample(pixels, target, label, meta, s.case_id, s.index, key))
    return out


class EmbeddingCache:
    """Image embeddings of a frozen encoder, keyed by content hash + backbone fingerprint.

    Kept in memory as float16 (half the memory; the decoder upcasts), and
    optionally on disk as safetensors files so a second run skips encoding.
    Embeddings computed in bf16 live in their own folder (``<fingerprint>-bfloat16``).
    """

    def __init__(
        self, backbone: Backbone, cache_dir: str | os.PathLike | None = None, precision: str = "float32"
    ) -> None:
        # The encoder is frozen, so a private copy optimised for inference (folded BatchNorm,
        # bf16 where fast: ~3x faster on the reference CPU) computes the embeddings exactly as
        # Segmenter.from_pretrained(precision=...) will at inference time.
        import copy

        dtype = resolve_precision(precision, backbone.device)
        self.encoder = optimize_for_inference(copy.deepcopy(backbone), precision)
        self.backbone = backbone
        self.memory: dict[str, torch.Tensor] = {}
        tag = "" if dtype == torch.float32 else f"-{str(dtype).replace('torch.', '')}"
        self.dir = Path(expand_path(cache_dir, "train.cache_dir")) / f"{backbone.info.fingerprint}{tag}" if cache_dir else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    @torch.inference_mode()
    def fill(self, samples: Sequence[ModelSample], batch_size: int = 4, progress=None, world: World | None = None,
             exchange_rows: int = 64) -> None:
        """Encode every sample not cached yet, and hold all of them in memory.

        With ``world`` of several ranks (``samples`` the same list on each), each rank reads or encodes (and
        writes, when the cache has a folder) its share of the samples, and the ranks then pass each other their
        embeddings, ``exchange_rows`` per rank at a time: every rank ends up holding all of them.
        """
        if world is not None and world.size > 1:
            self._fill_shared(samples, batch_size, progress, world, exchange_rows)
            return
        todo = []
        for s in samples:
            if s.key in self.memory:
                continue
            e = self._read(s)
            if e is not None:
                self.memory[s.key] = e
            else:
                todo.append(s)
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            for s, e in zip(chunk, self._encode(chunk)):
                self.memory[s.key] = e
            if progress is not None:
                progress(len(chunk))

    def _fill_shared(self, samples: Sequence[ModelSample], batch_size: int, progress, world: World,
                     exchange_rows: int) -> None:
        pending = list({s.key: s for s in samples}.values())  # the same list on every rank
        part = world.split(len(pending))
        own = pending[part.start : part.stop]
        self.fill(own, batch_size, progress)
        starts = [sum(part.counts[:r]) for r in range(world.size)]
        for i in range(0, max(part.counts, default=0), exchange_rows):
            counts = [max(0, min(exchange_rows, c - i)) for c in part.counts]
            mine = [self.memory[s.key] for s in own[i : i + counts[world.rank]]]
            owners = [r for r in range(world.size) for _ in range(counts[r])]
            rows = world.assemble(torch.stack(mine).to(self.backbone.device) if mine else None, owners,
                                  self.backbone.device).cpu()
            keys = [pending[starts[r] + i + j].key for r in range(world.size) for j in range(counts[r])]
            for key, e in zip(keys, rows):
                self.memory[key] = e.clone()

    def _read(self, s: ModelSample) -> torch.Tensor | None:
        """The sample's embedding from the cache folder; None when it is not there or the file is damaged (a
        copy cut short, a full disk): the sample is then encoded again and the file rewritten."""
        path = self.dir / f"{s.key}.safetensors" if self.dir else None
        if path is None or not path.is_file():
            return None
        try:
            return _load_embedding(path)
        except MedAdaptError as exc:
            warnings.warn(f"{exc}; encoding the slice again", stacklevel=2)
            return None

    @torch.inference_mode()
    def _encode(self, chunk: Sequence[ModelSample]) -> list[torch.Tensor]:
        """Encode now, write each embedding to disk (atomically) if the cache has a folder."""
        from safetensors.torch import save_file

        emb = self.encoder.encode(torch.stack([s.pixels for s in chunk]).to(self.backbone.device)).half().cpu()
        out = [e.contiguous() for e in emb]
        if self.dir is not None:
            for s, e in zip(chunk, out):
                # a unique temporary name per write: two runs may fill one cache at once
                atomic_write(self.dir / f"{s.key}.safetensors", lambda tmp, e=e: save_file({"embedding": e}, tmp))
        return out

    def get(
        self, samples: Sequence[ModelSample], device: torch.device, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Stacked embeddings in ``dtype`` (bf16 when training under bf16 autocast: one cast, here).

        Samples that :meth:`fill` never saw (streamed unlabelled slices) are
        read from disk or encoded now, and not kept in memory: streamed data
        may be far larger than memory.
        """
        out = [self.memory[s.key] if s.key in self.memory else self._read(s) for s in samples]
        todo = [i for i, e in enumerate(out) if e is None]
        if todo:
            for i, e in zip(todo, self._encode([samples[i] for i in todo])):
                out[i] = e
        if samples and samples[0].neighbours:  # B x S x C x h x w: each slice with its neighbours
            n = len(samples[0].neighbours) // 2
            # cast before stacking: under CPU bf16 autocast, stacking float16 slices is refused
            out = [neighbour_stack([_cast(e if k == s.key else self._by_key(k), dtype) for k in s.neighbours], n)
                   for s, e in zip(samples, out)]
        return to_device(torch.stack([e.to(dtype) for e in out]), device)

    def _by_key(self, key: str | None) -> torch.Tensor | None:
        """A neighbour's embedding (encoded by :meth:`fill`); None for a slice that is not there."""
        if key is None:
            return None
        if key in self.memory:
            return self.memory[key]
        path = self.dir / f"{key}.safetensors" if self.dir else None
        if path is None or not path.is_file():
            raise MedAdaptError(f"the embedding of a neighbouring slice ({key[:12]}) was never encoded: "
                                "encode the neighbour samples with fill() before reading stacks")
        try:
            return _load_embedding(path)
        except MedAdaptError as exc:
            raise MedAdaptError(f"{exc}: delete it and run again to encode the slice anew") from None


def _load_embedding(path: Path) -> torch.Tensor:
    """One cached embedding (C x h x w), or a MedAdaptError naming the file when it cannot be one."""
    from safetensors.torch import load_file

    try:
        e = load_file(str(path)).get("embedding")
    except Exception as exc:  # safetensors raises its own errors for a cut or foreign file
        raise MedAdaptError(f"the cached embedding {path} is damaged ({' '.join(str(exc).split())[:120]})") from None
    if e is None or e.ndim != 3 or not e.is_floating_point():
        raise MedAdaptError(f"the cached embedding {path} holds no embedding (C x h x w floats)")
    return e


def _cast(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if x is None else x.to(dtype)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to a GPU from pinned memory, so the copy is queued and the host does not
    wait for the GPU's queued work (a plain copy from pageable memory would)."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


__all__ = ["ModelSample", "EmbeddingCache", "prepare", "to_device", "to_model_frame"]
