"""``medadapt export``: a backbone or a run folder -> ONNX graphs, a manifest, and a check against PyTorch.

What it writes into ``out`` (see :mod:`medadapt.inference.onnx_runtime` for
what each graph takes and returns): ``encoder.onnx``, ``decoder.onnx``,
``classes.onnx`` for a model with learned class tokens, and
``medadapt-export.json``. LoRA is merged into the base weights first; spatial
adapters go with the encoder, the context adapter with the encoder's output.
A learned text head is not exported (the manifest says so).

The folder is built beside ``out`` under a temporary name and moved into
place when complete and checked, so ``out`` holds a whole export or none.
The check encodes a bundled CC BY image, decodes boxes, clicks (a mixed batch)
and every learned class with the torch model as it was loaded (LoRA not yet
merged) and with onnxruntime, and refuses the export if any output differs by
more than ``tolerance``; the differences are recorded in the manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..adapters import keeps_base_encoder, load_adapter, merge_lora, read_adapter_info
from ..core.errors import MedAdaptError
from ..core.files import atomic_write_json
from ..foundation import Backbone, build_backbone, list_backbones
from ..foundation.checkpoint import fingerprint_state, sha256_file
from ..inference.intensity import recorded_intensity
from ..inference.onnx_runtime import (
    FORMAT,
    FORMAT_VERSION,
    GRAPH_NAMES,
    MANIFEST_NAME,
    ExportedBackbone,
    settings_digest,
)
from ..io.imaging import load_image
from ..prompts.types import Prompts
from .graphs import ClassDecoderGraph, EncoderGraph, PromptDecoderGraph

CHECK_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "demo" / "hc18" / "images" / "000_HC.png"
_INSTALL = "pip install 'medadapt[export]'"


@dataclass
class ExportResult:
    """Where the export went and how far onnxruntime's outputs are from PyTorch's."""

    folder: Path
    manifest: dict[str, Any]

    @property
    def max_abs_diff(self) -> dict[str, float]:
        return dict(self.manifest["check"]["max_abs_diff"])


def load_source(source: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> tuple[Backbone, dict]:
    """A registered backbone name, or a run / adapter folder (or adapter file) -> (float32 backbone, its provenance)."""
    path = Path(source)
    ckpt = None if checkpoint is None else str(checkpoint)
    names = [s.name for s in list_backbones()]
    adapter = path / "adapter" if (path / "adapter" / "adapter.json").is_file() else path
    holds_adapter = adapter.is_file() or (adapter / "adapter.json").is_file()
    if not holds_adapter and str(source) in names:  # a backbone, also where a folder of that name is here
        return build_backbone(str(source), ckpt).eval(), {"backbone": str(source), "checkpoint": ckpt, "adapter": None}
    if not path.exists():
        raise MedAdaptError(f"{source!r} is neither a backbone ({', '.join(names)}) nor an existing run folder")
    if not holds_adapter:
        raise MedAdaptError(f"{path} is neither a run folder (with adapter/adapter.json) nor an adapter folder")
    info = read_adapter_info(adapter)
    backbone = load_adapter(build_backbone(str(info.get("backbone")), ckpt), adapter).eval()
    weights = adapter / "adapter.safetensors" if adapter.is_dir() else adapter.with_suffix(".safetensors")
    provenance = {"backbone": backbone.info.name, "checkpoint": ckpt, "adapter": str(adapter),
                  "adapter_sha256": sha256_file(weights),
                  "intensity": recorded_intensity(adapter)}  # what the exported model's images get, as in training
    for folder in (path, path.parent, path.parent.parent):  # the run of RUN, RUN/adapter or its adapter file
        if (folder / "student" / "student.json").is_file():  # a distilled run: its student answers automatic mode
            provenance["student"] = str(folder / "student")
            break
        if (folder / "config.yaml").is_file():  # the run folder, without a student
            break
    return backbone, provenance


def export_onnx(
    source: str | os.PathLike | Backbone,
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    overwrite: bool = False,
    tolerance: float = 1e-3,
    opset: int = 18,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``source`` (a backbone name, a run folder, or a built float32 :class:`Backbone`) to ``out``.

    Refuses to write into a folder that is not an earlier export, and replaces
    an earlier export only with ``overwrite``. Raises :class:`MedAdaptError` if
    onnxruntime's outputs differ from PyTorch's by more than ``tolerance``.
    A built backbone is changed in place (LoRA merged).
    """
    say = log or (lambda msg: None)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < float("inf"):
        raise MedAdaptError(f"tolerance must be a positive number (the largest difference from PyTorch "
                            f"accepted, e.g. 1e-3); got {tolerance!r}")
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
        import onnxruntime  # noqa: F401  (the check against PyTorch runs it: missing, say so before exporting)
        import onnxscript  # noqa: F401
    except ImportError:
        raise MedAdaptError(f"medadapt export needs the packages onnx, onnxscript and onnxruntime: {_INSTALL}") from None
    out = Path(out)
    if out.is_symlink():  # a link to an earlier export (current -> releases/v1): the folder it names is replaced
        out = out.resolve()
    _check_out(out, overwrite)
    if isinstance(source, Backbone):
        backbone, provenance = source.eval(), {"backbone": source.info.name, "checkpoint": None, "adapter": None}
    else:
        backbone, provenance = load_source(source, checkpoint)
    if backbone.inference_only or backbone.compute_dtype is not None:
        raise MedAdaptError("export a float32 backbone as built (not one optimised for inference)")
    if backbone.depth_adapter is not None:
        raise MedAdaptError("this model has a depth adapter, which reads neighbouring slices' embeddings; the "
                            "exported runtimes decode one slice at a time: run it with the torch runtime")
    reference = _reference_outputs(backbone)
    if backbone.adapter_config is not None and backbone.adapter_config.lora is not None and not backbone.lora_merged:
        merge_lora(backbone)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(staging, 0o777 & ~mask)  # mkdtemp makes 0700; the export gets the user's usual mode
    try:
        graphs = _write_graphs(backbone, staging, opset, say)
        manifest = _manifest(backbone, provenance, graphs, staging, opset)
        manifest["settings_sha256"] = settings_digest(manifest)
        if manifest["not_exported"]:
            say(f"not exported: {', '.join(manifest['not_exported'])}; the exported model answers without them "
                "(docs/export.md)")
        atomic_write_json(staging / MANIFEST_NAME, manifest)
        say("checking onnxruntime against PyTorch ...")
        diffs = _compare(reference, ExportedBackbone.from_folder(staging))
        manifest["check"] = {"image": f"medadapt/assets/demo/hc18/images/{CHECK_IMAGE.name}",
                             "tolerance": tolerance, "max_abs_diff": diffs}
        worst = max(diffs.values())
        if not worst <= tolerance:
            raise MedAdaptError(f"the exported graphs differ from PyTorch by up to {worst:.3g} (tolerance "
                                f"{tolerance:g}; {diffs}): report this with the model and the torch/onnx versions")
        atomic_write_json(staging / MANIFEST_NAME, manifest)
        _move_into_place(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, manifest)


def export_model(source: str | os.PathLike, out: str | os.PathLike, format: str = "onnx", **kwargs: Any) -> ExportResult:
    """What ``medadapt export`` runs: one format, ONNX."""
    if format != "onnx":
        raise MedAdaptError(f"unknown export format {format!r}: medadapt exports 'onnx'")
    return export_onnx(source, out, **kwargs)


# ---------------------------------------------------------------------------------------------- writing
def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise MedAdaptError(f"--out {out} is a file: give a folder for the export")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST_NAME).is_file():
            raise MedAdaptError(f"--out {out} is a folder that holds other files: give a new or empty folder")
        if not overwrite:
            raise MedAdaptError(f"--out {out} holds an export: pass --overwrite to replace it, or choose another folder")
        extra = sorted({p.name for p in out.iterdir()} - _export_files(out))
        if extra:  # replacing the folder would delete them
            raise MedAdaptError(f"--out {out} holds an export and also {extra[:5]}: move them out of it, or choose "
                                "another folder")


def _export_files(out: Path) -> set[str]:
    """The files an earlier export in ``out`` wrote (its manifest names them); only the manifest if unreadable."""
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text())
        graphs = list((manifest.get("graphs") or {}).values())
        data = [f for files in (manifest.get("data_files") or {}).values() for f in files]
        return {MANIFEST_NAME, *map(str, graphs), *map(str, data)}
    except (OSError, ValueError, AttributeError, TypeError):
        return {MANIFEST_NAME}


def _move_into_place(staging: Path, out: Path) -> None:
    """``staging`` becomes ``out``; an earlier export there is put back if the swap is interrupted."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_graphs(backbone: Backbone, folder: Path, opset: int, say: Callable[[str], None]) -> dict[str, str]:
    from torch.export import Dim

    size = backbone.processor.image_size
    pixels = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        emb = EncoderGraph(backbone).eval()(pixels)
    m = backbone.processor.mask_size
    n, t, k = Dim("prompts", min=1, max=65536), Dim("tokens", min=1, max=4096), Dim("classes", min=1, max=4096)
    jobs = [
        ("encoder", EncoderGraph(backbone), (pixels,), ["pixel_values"], ["image_embeddings"], None),
        ("decoder", PromptDecoderGraph(backbone),
         (emb, torch.rand(2, 3, 2) * size, torch.tensor([[1, 2, 3], [0, 1, -1]]), torch.zeros(2, 1, m, m), torch.zeros(1)),
         ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
         ["low_res_masks", "iou_predictions"],
         {"image_embeddings": None, "point_coords": {0: n, 1: t}, "point_labels": {0: n, 1: t}, "mask_input": {0: n},
          "has_mask_input": None}),
    ]
    if backbone.class_prompts is not None:  # two example ids, so the class count stays symbolic even for one class
        jobs.append(("classes", ClassDecoderGraph(backbone), (emb, torch.tensor([0, 0])),
                     ["image_embeddings", "class_ids"], ["class_logits"], {"image_embeddings": None, "class_ids": {0: k}}))
    written = {}
    for key, module, args, inputs, outputs, dynamic in jobs:
        say(f"exporting {key} ...")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            try:
                program = torch.onnx.export(module.eval(), args, input_names=inputs, output_names=outputs,
                                            dynamic_shapes=dynamic, opset_version=opset, dynamo=True, verbose=False)
            except Exception as exc:
                raise MedAdaptError(f"torch.onnx could not export the {key} of {backbone.info.name}: "
                                    f"{' '.join(str(exc).split())[:300]}") from exc
            program.save(str(folder / GRAPH_NAMES[key]))
        written[key] = GRAPH_NAMES[key]
    return written


def _manifest(backbone: Backbone, provenance: dict, graphs: dict, folder: Path, opset: int) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def dist(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cfg = backbone.adapter_config
    auto = cfg.automatic if cfg is not None else None
    size = backbone.processor.image_size
    grid = backbone.prompt_encoder.image_embedding_size
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medadapt_version": dist("medadapt"),
        "written_with": {"torch": torch.__version__, "onnx": dist("onnx"), "onnxruntime": dist("onnxruntime"),
                         "opset": opset},
        "backbone": {"name": backbone.info.name, "family": backbone.info.family, "weights": backbone.info.weights,
                     "fingerprint": backbone.info.fingerprint, "image_size": size},
        "source": provenance,
        "weights_fingerprint": fingerprint_state(backbone.state_dict()),  # of the exported (merged) weights
        "processor": asdict(backbone.processor),
        "embedding": {"channels": backbone.embed_dim, "size": [int(g) for g in grid]},
        "graphs": graphs,
        "data_files": (data := {name: files for name in graphs.values() if (files := external_data_files(folder / name))}),
        "sha256": {name: sha256_file(folder / name) for name in [*graphs.values(), *(f for fs in data.values() for f in fs)]},
        "classes": None if auto is None else {"names": list(auto.class_names), "label_values": list(auto.label_values)},
        "adapter": None if cfg is None else cfg.to_dict(),
        "lora_merged": bool(backbone.lora_merged),
        "not_exported": not_exported(backbone, provenance),
    }


def external_data_files(graph: Path) -> list[str]:
    """The files next to ``graph`` that hold its weights outside it (ONNX external data: what the exporter writes
    for a model over 2 GB), by name; empty for a graph that holds its own weights."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(graph), load_external_data=False)
    tensors = [*model.graph.initializer,
               *(t for node in model.graph.node for a in node.attribute for t in [*([a.t] if a.HasField("t") else []),
                                                                                 *a.tensors])]
    names = {entry.value for t in tensors if uses_external_data(t) for entry in t.external_data
             if entry.key == "location"}
    return sorted(names)


def not_exported(backbone: Backbone, provenance: dict) -> list[str]:
    """What the torch path of the same source uses that the export leaves out: a learned text head, the run's
    distilled student (automatic answers come from the exported decoder instead), and the pretrained decoder
    that volume propagation averages with an adapted one (the exported walk uses the adapted decoder alone)."""
    out = ["text_head"] if backbone.text_head is not None else []
    if provenance.get("student"):
        out.append("student")
    if provenance.get("adapter") and keeps_base_encoder(backbone):
        out.append("base_decoder")
    return out


# ---------------------------------------------------------------------------------------------- checking
def check_prompts(size: tuple[int, int]) -> list[tuple[Prompts, bool]]:
    """The prompts the check decodes on an image of ``size`` (H, W): five boxes, and a mixed batch with clicks."""
    h, w = size
    scale = np.array([w, h, w, h], np.float32)
    boxes = np.array([[0.3, 0.3, 0.7, 0.7], [0.1, 0.2, 0.5, 0.6], [0.5, 0.4, 0.9, 0.9], [0.2, 0.1, 0.8, 0.5],
                      [0.05, 0.05, 0.95, 0.95]], np.float32) * scale
    clicks = np.array([[[0.5 * w, 0.5 * h], [0.1 * w, 0.1 * h]]] * 2, np.float32)
    mixed = Prompts(boxes=np.stack([boxes[0], np.full(4, np.nan, np.float32)]), points=clicks,
                    point_labels=np.array([[1, 0], [1, -1]]))
    return [(Prompts(boxes=boxes), False), (mixed, True)]


@torch.inference_mode()
def _outputs(backbone, image: np.ndarray) -> dict[str, np.ndarray]:
    pixels, meta = backbone.processor.preprocess(image)
    emb = backbone.encode(pixels.to(backbone.device))
    out = {"embedding": backbone.adapt_embedding(emb)}
    for i, (prompts, multimask) in enumerate(check_prompts(meta.original_size)):
        framed = backbone.processor.transform_prompts(prompts, meta)
        out[f"logits_{i}"], out[f"iou_{i}"] = backbone.decode_prompts(emb, framed, multimask=multimask)
    if backbone.adapter_config is not None and backbone.adapter_config.automatic is not None:
        k = len(backbone.adapter_config.automatic.class_names)
        out["class_logits"] = backbone.decode_classes(emb, torch.arange(k, device=emb.device))
    return {key: v.detach().float().cpu().numpy() for key, v in out.items()}


def _reference_outputs(backbone: Backbone) -> dict[str, np.ndarray]:
    return _outputs(backbone, load_image(CHECK_IMAGE))


def _compare(reference: dict[str, np.ndarray], exported: ExportedBackbone) -> dict[str, float]:
    got = _outputs(exported, load_image(CHECK_IMAGE))
    if set(got) != set(reference):
        raise MedAdaptError(f"the export answers {sorted(got)}, PyTorch {sorted(reference)}: export again")
    diffs = {}
    for key, ref in reference.items():
        group = key.split("_")[0] if key.startswith(("logits", "iou")) else key
        d = float(np.abs(got[key] - ref).max()) if ref.size else 0.0
        diffs[group] = max(diffs.get(group, 0.0), d)
    return diffs


__all__ = ["CHECK_IMAGE", "ExportResult", "check_prompts", "export_model", "export_onnx", "load_source"]
