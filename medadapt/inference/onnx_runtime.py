"""An exported model (``medadapt export``) behind the same interface as a torch :class:`~medadapt.foundation.Backbone`.

An export folder holds ONNX graphs and a manifest (``medadapt-export.json``):

* ``encoder.onnx``: preprocessed pixels -> the image embedding the decoder reads
  (the context adapter, if any, is already applied);
* ``decoder.onnx``: prompt encoder + mask decoder for N prompts of T tokens
  each, both dynamic. Prompts arrive as SAM's prompt encoder sees them: point
  coordinates in the model frame with labels 1 / 0 (clicks), 2 / 3 (a box's
  corners) and -1 (SAM's "not a point" padding), plus an optional mask prompt;
  it returns all four mask outputs and their predicted IoU;
* ``classes.onnx`` (adapted models with learned class tokens): the image
  embedding and K class indices -> K class logits decoded jointly, as
  :meth:`Backbone.decode_classes` does.

:class:`ExportedBackbone` runs them with onnxruntime (or OpenVINO) and offers
what :class:`~medadapt.inference.Segmenter` calls (``processor``, ``encode``,
``decode_prompts``, ``decode_classes``), so ``set_image`` / ``predict`` /
``predict_volume`` / automatic mode work unchanged on it. The processor is
the same :class:`~medadapt.foundation.SamProcessor`, rebuilt from the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapters.config import AdapterConfig
from ..core.device import pick_device
from ..core.errors import MedAdaptError
from ..foundation.backbone import BackboneInfo
from ..foundation.checkpoint import sha256_file
from ..foundation.processor import SamProcessor
from ..prompts.types import Prompts

MANIFEST_NAME = "medadapt-export.json"
FORMAT = "medadapt-onnx"
FORMAT_VERSION = 1
GRAPH_NAMES = {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "classes": "classes.onnx"}
BOX_CORNER_LABELS = (2, 3)  # SAM's prompt encoder adds point_embeddings[2] / [3] to a box's two corners
NOT_A_POINT = -1  # SAM's padding label: the token is the learned "not a point" embedding
RUNTIMES = ("onnxruntime", "openvino")
_INSTALL = "pip install 'medadapt[export]'"


def read_manifest(folder: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """The manifest of an export folder, checked: a one-line :class:`MedAdaptError` for a bad or foreign folder.

    ``verify`` also compares every graph file, and every file holding a graph's weights outside it (``data_files``:
    ONNX external data, for models over 2 GB), with the SHA-256 the manifest records.
    """
    root = Path(folder)
    if not root.is_dir():
        raise MedAdaptError(f"export folder not found: {root} (write one with `medadapt export MODEL --out DIR`)")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise MedAdaptError(f"{root} is not a medadapt export: it has no {MANIFEST_NAME} "
                            "(write one with `medadapt export MODEL --out DIR`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedAdaptError(f"{path} is not valid JSON ({' '.join(str(exc).split())}): export the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MedAdaptError(f"{path} does not describe a medadapt ONNX export (format "
                            f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r})")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise MedAdaptError(f"{path} has format version {version!r}; this medadapt reads version {FORMAT_VERSION} "
                            "(upgrade medadapt or export the model again)")
    missing = [k for k in ("backbone", "processor", "graphs", "embedding", "sha256") if not isinstance(manifest.get(k), dict)]
    if missing:
        raise MedAdaptError(f"{path} lacks the section(s) {missing}: export the model again")
    graphs = manifest["graphs"]
    if not {"encoder", "decoder"} <= set(graphs) or not set(graphs) <= set(GRAPH_NAMES):
        raise MedAdaptError(f"{path} names graphs {sorted(graphs)}; expected encoder, decoder and optionally classes")
    for key, name in graphs.items():
        if name != GRAPH_NAMES[key]:
            raise MedAdaptError(f"{path}: graph {key} is {name!r}, expected {GRAPH_NAMES[key]!r}")
        _check_file(root / name, manifest["sha256"].get(name), verify)
    data = manifest.get("data_files") or {}
    if not isinstance(data, dict) or not set(data) <= set(graphs.values()):
        raise MedAdaptError(f"{path}: data_files must map graph files to the files holding their weights; "
                            "export the model again")
    for graph, files in data.items():
        for name in files if isinstance(files, list) else [files]:
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise MedAdaptError(f"{path}: the weights of {graph} are named {name!r}, not a file of the export "
                                    "folder: export the model again")
            _check_file(root / name, manifest["sha256"].get(name), verify, f", which holds the weights of {graph},",
                        "copy the whole folder or ")
    if ("classes" in graphs) != bool(manifest.get("classes")):
        raise MedAdaptError(f"{path}: a classes graph needs class names and label values, and they need the graph")
    recorded = manifest.get("settings_sha256")  # exports written before it was recorded have none
    if verify and recorded is not None and recorded != settings_digest(manifest):
        raise MedAdaptError(f"{path}: its model settings ({', '.join(SETTINGS)}) were edited after the export, so "
                            "the graphs would be read with other settings than they were written for: export the "
                            "model again")
    return manifest


# the manifest's sections that say how the graphs are read: a checksum over them refuses an edited manifest
SETTINGS = ("backbone", "processor", "embedding", "classes", "graphs", "data_files")


def settings_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's :data:`SETTINGS` sections, as canonical JSON."""
    text = json.dumps({k: manifest.get(k) for k in SETTINGS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_file(file: Path, sha256: str | None, verify: bool, what: str = "", fix: str = "") -> None:
    """A file the manifest names must be there and, with ``verify``, match its recorded SHA-256 (``what``
    describes the file after its path in the errors; ``fix`` comes before "export the model again")."""
    if not file.is_file():
        raise MedAdaptError(f"{file}{what} is missing: the export is incomplete; {fix}export the model again")
    if verify and sha256_file(file) != sha256:
        raise MedAdaptError(f"{file}{what} does not match the checksum in {MANIFEST_NAME} (corrupt or replaced): "
                            "export the model again")


def processor_from_manifest(manifest: dict[str, Any]) -> SamProcessor:
    """The :class:`SamProcessor` an export was written with."""
    try:
        return SamProcessor(**manifest["processor"])
    except TypeError as exc:
        raise MedAdaptError(f"export manifest has an unreadable processor section ({exc}): export the model again") from None


def prompt_tokens(group: Prompts) -> tuple[np.ndarray, np.ndarray]:
    """One decodable group (:meth:`Prompts.decode_groups`, model frame) -> (N x T x 2 coords, N x T labels).

    The tokens SAM's prompt encoder makes: the clicks, then a box's two
    corners (labels 2, 3), or one padding point when the group has no box.
    """
    n = len(group)
    coords = [np.zeros((n, 0, 2), np.float32)]
    labels = [np.zeros((n, 0), np.int64)]
    if group.points is not None:
        coords.append(group.points.astype(np.float32))
        labels.append(group.point_labels.astype(np.int64))
    if group.boxes is not None:
        coords.append(group.boxes.reshape(n, 2, 2).astype(np.float32))
        labels.append(np.tile(np.asarray(BOX_CORNER_LABELS, np.int64), (n, 1)))
    elif group.points is not None:
        coords.append(np.zeros((n, 1, 2), np.float32))
        labels.append(np.full((n, 1), NOT_A_POINT, np.int64))
    return np.ascontiguousarray(np.concatenate(coords, 1)), np.ascontiguousarray(np.concatenate(labels, 1))


class _OrtGraph:
    """One onnxruntime session: ``graph(**inputs)`` -> list of numpy outputs."""

    def __init__(self, path: Path, threads: int | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MedAdaptError(f"runtime='onnxruntime' needs the package onnxruntime: {_INSTALL}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, **inputs: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, inputs)


class _OpenVinoGraph:
    """One OpenVINO compiled model with the same call as :class:`_OrtGraph`."""

    def __init__(self, path: Path, threads: int | None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise MedAdaptError("runtime='openvino' needs the package openvino: pip install openvino") from None
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
        self.model = core.compile_model(str(path), "CPU", config)
        self.request = self.model.create_infer_request()

    def __call__(self, **inputs: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer(inputs)
        return [np.array(result[out]) for out in self.model.outputs]


class ExportedBackbone(nn.Module):
    """The graphs of an export folder, with the methods :class:`~medadapt.inference.Segmenter` calls on a backbone.

    Float32, on the CPU; the embedding and logits come back as torch tensors.
    Build one with :meth:`from_folder` (or ``Segmenter.from_pretrained(DIR, runtime="onnxruntime")``).
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], runtime: str = "onnxruntime",
                 threads: int | None = None) -> None:
        super().__init__()
        if runtime not in RUNTIMES:
            raise MedAdaptError(f"unknown runtime {runtime!r}: use 'torch', 'onnxruntime' or 'openvino'")
        graph = _OrtGraph if runtime == "onnxruntime" else _OpenVinoGraph
        self.folder, self.manifest, self.runtime = folder, manifest, runtime
        self.processor = processor_from_manifest(manifest)
        b = manifest["backbone"]
        self.info = BackboneInfo(name=str(b.get("name")), family=str(b.get("family")),
                                 weights=f"exported to {folder} ({runtime})", fingerprint=str(b.get("fingerprint", "")))
        self.encoder = graph(folder / GRAPH_NAMES["encoder"], threads)
        self.decoder = graph(folder / GRAPH_NAMES["decoder"], threads)
        self.classes = graph(folder / GRAPH_NAMES["classes"], threads) if "classes" in manifest["graphs"] else None
        cls = manifest.get("classes") or None
        self.adapter_config = None if cls is None else AdapterConfig(
            train=[], automatic={"class_names": list(cls["names"]), "label_values": [int(v) for v in cls["label_values"]]})
        # what Segmenter reads on a torch backbone; an export has no learned text head
        self.text_head = None
        self.class_prompts = None
        self.context_adapter = None
        self.depth_adapter = None
        self.depth_slices = 1  # slices decoded per embedding: an export decodes one slice at a time
        self.compute_dtype = None
        self.inference_only = True
        self.lora_merged = bool(manifest.get("lora_merged", False))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, runtime: str = "onnxruntime",
                    threads: int | None = None) -> "ExportedBackbone":
        """Load an export folder, refusing a foreign, incomplete or altered one."""
        return cls(Path(folder), read_manifest(folder), runtime, threads)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embedding"]["channels"])

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """1 x 3 x S x S preprocessed image -> 1 x C x s x s embedding (context adapter applied)."""
        x = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
        if x.shape[0] != 1:
            raise MedAdaptError(f"an exported encoder takes one image at a time; got a batch of {x.shape[0]}")
        return torch.from_numpy(self.encoder(pixel_values=x)[0])

    def adapt_embedding(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """The identity: the exported encoder already applies the context adapter."""
        return image_embeddings

    def decode_prompts(
        self, image_embeddings: torch.Tensor, prompts: Prompts, multimask: bool = False, mask_decoder=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`Backbone.decode_prompts`, for one image: N x K low-res logits and N x K predicted IoU.
        An exported model holds one decoder: ``mask_decoder`` (another one) is refused."""
        if mask_decoder is not None:
            raise MedAdaptError("an exported model runs its own decoder only; decode with another mask decoder "
                                "through the torch runtime (Segmenter.from_pretrained without runtime=)")
        emb = self._embedding(image_embeddings)
        n, size = len(prompts), self.processor.mask_size
        low = np.empty((n, 3 if multimask else 1, size, size), np.float32)
        iou = np.empty((n, 3 if multimask else 1), np.float32)
        cols = slice(1, 4) if multimask else slice(0, 1)
        for idx, group in prompts.decode_groups():
            coords, labels = prompt_tokens(group)
            if coords.shape[1] == 0:
                raise MedAdaptError("an exported decoder needs a box or a click with a mask prompt")
            has_mask = group.masks is not None
            if has_mask and group.masks.shape[1:] != (size, size):
                raise MedAdaptError(f"mask prompts must be {size} x {size} logits; got {group.masks.shape[1:]}")
            masks = group.masks[:, None] if has_mask else np.zeros((len(group), 1, size, size), np.float32)
            lo, sc = self.decoder(image_embeddings=emb, point_coords=coords, point_labels=labels,
                                  mask_input=np.ascontiguousarray(masks, np.float32),
                                  has_mask_input=np.array([1.0 if has_mask else 0.0], np.float32))
            low[idx], iou[idx] = lo[:, cols], sc[:, cols]
        return torch.from_numpy(low), torch.from_numpy(iou)

    def decode_classes(self, image_embeddings: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        """As :meth:`Backbone.decode_classes`, for one image: 1 x K low-res logits, the K classes decoded jointly."""
        if self.classes is None:
            raise AttributeError("this export has no learned class prompts")
        ids = class_ids.detach().to("cpu", torch.int64).reshape(-1).numpy()
        return torch.from_numpy(self.classes(image_embeddings=self._embedding(image_embeddings), class_ids=ids)[0])

    def _embedding(self, image_embeddings: torch.Tensor) -> np.ndarray:
        emb = image_embeddings.detach().to("cpu", torch.float32).contiguous().numpy()
        if emb.shape[0] != 1:
            raise MedAdaptError(f"an exported decoder reads one image embedding; got {emb.shape[0]}")
        return emb


def load_exported(folder: str | os.PathLike, runtime: str = "onnxruntime", *, checkpoint=None, adapter=None,
                  precision: str = "auto", device=None, threads: int | None = None) -> ExportedBackbone:
    """What ``Segmenter.from_pretrained(DIR, runtime=...)`` builds: the export's backbone, arguments checked."""
    try:  # the kind asked for, whether or not this machine has it
        kind = None if device is None else torch.device(device).type
    except RuntimeError:
        kind = pick_device(device).type  # says the name is unknown
    if kind not in (None, "cpu"):
        raise MedAdaptError(f"runtime={runtime!r} runs on the CPU; for device={str(device)!r} use runtime='torch'")
    if checkpoint is not None or adapter is not None:
        raise MedAdaptError("an export folder already holds its weights and adapter: drop checkpoint= and adapter= "
                            "(export the run with `medadapt export RUN --out DIR`)")
    if precision not in ("auto", "float32"):
        raise MedAdaptError(f"exported graphs run in float32; precision={precision!r} needs runtime='torch'")
    return ExportedBackbone.from_folder(folder, runtime, threads)


__all__ = [
    "BOX_CORNER_LABELS", "ExportedBackbone", "FORMAT", "FORMAT_VERSION", "GRAPH_NAMES", "MANIFEST_NAME",
    "NOT_A_POINT", "RUNTIMES", "load_exported", "prompt_tokens", "read_manifest",
]
