"""Batch inference over many scans: :func:`segment_batch` is what ``medadapt segment IN OUT`` runs.

Worker processes read each input (and apply the CT window;
:mod:`.batch_reading`, where a reader process that dies costs only its file); the
main process runs the model and writes each mask atomically, in the input's
format and geometry, then appends one line to a manifest and flushes it to
disk. A file that cannot be read or segmented becomes a ``failed`` line and
the rest go on. A re-run skips every output that exists (writes are atomic,
so an existing output is complete); files that failed are retried only with
``retry_failed``. Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) rank r
takes the inputs i with i % world == r and writes ``manifest.rank{r}.csv``;
:func:`read_manifest` merges the parts. See ``docs/batch.md``.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..adapters.io import adapter_digest
from ..core.errors import MedAdaptError
from ..core.files import atomic_write, atomic_write_json, path_suffix
from ..foundation.checkpoint import fingerprint_state
from ..io.dicom_seg import write_dicom_seg
from ..io.imaging import (
    display_orientation,
    plane_axis,
    save_mask,
    volume_slice,
)
from .batch_inputs import SERIES_FORMATS, BatchItem, find_inputs, read_prompts
from .batch_reading import one_line, read_ahead
from .cleanup import check_cleanup, clean_labels
from .intensity import apply_intensity, resolve_intensity
from .predictor import Segmenter
from .segment import prediction_to_labels
from .volume import check_axis

PathLike = str | os.PathLike
COLUMNS = ("file", "status", "seconds", "read_seconds", "error", "output", "finished")


@dataclass
class BatchResult:
    """What one :func:`segment_batch` call did on this rank."""

    ok: int
    failed: int
    skipped: int  # outputs that existed already
    not_retried: int  # failed in an earlier run; retried only with retry_failed
    images: int  # 2-D outputs written
    volumes: int  # volume outputs written
    seconds: float  # wall time of the loop over the pending files
    waited: float  # of which the model waited for data (the reader processes keep this near zero)
    manifest: Path
    elsewhere: int = 0  # inputs left to the other ranks (rank / world_size, or torchrun's RANK / WORLD_SIZE)
    rank: tuple[int, int] = (0, 1)  # (rank, world_size)


# --------------------------------------------------------------------------- manifest
def _manifest_path(out_dir: Path, rank: int, world: int) -> Path:
    return out_dir / ("manifest.csv" if world == 1 else f"manifest.rank{rank}.csv")


def read_manifest(out_dir: PathLike) -> dict[str, dict[str, str]]:
    """The latest row per input file of ``OUT/manifest.csv`` and every ``OUT/manifest.rank*.csv`` part
    (a line cut short by a kill is ignored)."""
    rows: list[dict[str, str]] = []
    for path in sorted(Path(out_dir).glob("manifest*.csv")):
        # a file name that is not UTF-8 was written as its own bytes (see _append) and reads back as os.fsdecode does
        with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
            rows += [r for r in csv.DictReader(fh) if None not in r and all(r.get(c) is not None for c in COLUMNS)]
    rows.sort(key=lambda r: r["finished"])
    return {r["file"]: r for r in rows}


def _append(path: Path, row: dict[str, Any]) -> None:
    """One whole line per call, written and flushed to disk before the next item starts. A file name that is not
    UTF-8 (``os.fsdecode`` gives it surrogate escapes) is written as its own bytes, so :func:`read_manifest` gives
    the name back; text no encoding can hold is written escaped (backslashreplace) rather than failing the run."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    new = not path.exists() or path.stat().st_size == 0
    if new:
        writer.writerow(COLUMNS)
    writer.writerow([row.get(c, "") for c in COLUMNS])
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        if not new and os.pread(fd, 1, os.fstat(fd).st_size - 1) != b"\n":
            os.write(fd, b"\n")  # a line cut short by a kill stays alone on its line
        try:
            data = buf.getvalue().encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (e.g. from a prompts file)
            data = buf.getvalue().encode("utf-8", "backslashreplace")
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------- the model
def _predict_image(seg: Segmenter, image: np.ndarray, prompts: dict | None, png: bool, refine: bool,
                   multimask: bool, cleanup: tuple[str, ...] = (), percentiles=None) -> np.ndarray:
    seg.set_image(apply_intensity(image, None, percentiles))  # windowed already, by the reader
    if prompts is None:
        pred = seg.predict(refine=refine)
        return clean_labels(prediction_to_labels(pred, automatic=True, binary_value=255 if png else 1), cleanup)
    pred = seg.predict(boxes=prompts["boxes"], points=prompts["points"], point_labels=prompts["point_labels"],
                       multimask=multimask)
    return prediction_to_labels(pred, automatic=False, binary_value=255 if png else 1)


def _predict_volume(seg: Segmenter, volume: np.ndarray, prompts: dict | None, axis: int, refine: bool,
                    multimask: bool, cleanup: tuple[str, ...] = (), name: str = "volume", window=None,
                    percentiles=None) -> np.ndarray:
    axis = plane_axis(volume.shape, axis)  # one sagittal or coronal plane (a radiograph): that image
    if prompts is None:  # the window (applied already: again changes nothing), else the adapter's per-slice clip
        seg.set_volume(volume, axis=axis, window=window)
        return seg.predict_volume(refine=refine, cleanup=cleanup)
    labels = np.zeros(volume.shape, dtype=np.uint16)
    blank = []
    for k, entry in sorted(prompts.items()):
        if k >= volume.shape[axis]:
            raise MedAdaptError(f"prompts for slice {k}, but the volume has {volume.shape[axis]} slices along "
                                f"axis {axis}")
        image = volume_slice(volume, k, axis)
        if image.min() == image.max():  # a blank slice (padding): nothing there to find; empty, as automatic mode
            blank.append(k)
            continue
        index = [slice(None)] * 3
        index[axis] = k
        plane = _predict_image(seg, image, entry, False, False, multimask, percentiles=percentiles)
        labels[tuple(index)] = display_orientation(plane)
    seg.reset_image()
    if blank:
        warnings.warn(f"{name}: prompted slice(s) {', '.join(map(str, blank))} along axis {axis} are blank (every "
                      "voxel the same value); they were left empty", stacklevel=4)
    return labels


def _prompt_count(prompts: dict) -> int:
    """Objects one slice's prompts ask for: a box each, or a point set each (one set of points is one)."""
    if prompts.get("boxes") is not None:
        return len(prompts["boxes"])
    points = prompts.get("points") or []
    nested = bool(points) and all(isinstance(s, list) and s and isinstance(s[0], list) for s in points)
    return len(points) if nested else 1


def _segments(seg: Segmenter, labels: np.ndarray, entry: dict | None) -> tuple[list[str], list[int]]:
    """The DICOM-SEG segments of a label volume: the learned classes, or one ``object`` per prompt value
    (as many as the most prompts on one slice, whether or not each found something)."""
    if entry is None:
        return list(seg.classes), list(seg.backbone.adapter_config.automatic.label_values)
    top = max([1, int(labels.max()), *(_prompt_count(e) for e in entry.values())])
    return (["object"] if top == 1 else [f"object {v}" for v in range(1, top + 1)]), list(range(1, top + 1))


def _save(labels: np.ndarray, item: BatchItem, segments: tuple[list[str], list[int]] | None = None) -> None:
    if path_suffix(item.out) == ".npy":  # x.NPY as well as x.npy
        atomic_write(item.out, lambda tmp: np.save(tmp, labels))  # tmp ends in .npy: np.save adds no suffix
    elif item.path.is_dir() and path_suffix(item.out) == ".dcm":  # a DICOM-SEG on the series' own images
        names, values = segments
        write_dicom_seg(labels, item.path, item.out, names, values, allow_empty=True)
    else:  # PNG; NIfTI with the input's affine and header; a DICOM series' geometry (as `medadapt predict` writes)
        save_mask(labels, item.out, reference=item.path if item.volume else None)


# --------------------------------------------------------------------------- the batch
def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from the ``RANK`` and ``WORLD_SIZE`` that ``torchrun`` sets; (0, 1) without them."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise MedAdaptError("RANK and WORLD_SIZE must be integers (torchrun sets them)") from None
    if not 0 <= rank < world:
        raise MedAdaptError(f"RANK={rank} must lie in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return rank, world


_SETTING_DEFAULTS = {"series_format": "nifti", "cleanup": []}


def _check_out(out_dir: Path) -> None:
    """Refuse an output folder that holds files but no ``segment.json``: they were not written by a batch run (it
    may be a dataset's own ``masks/``), so none of them may be taken for a finished output, or replaced."""
    if (out_dir / "segment.json").exists() or not out_dir.is_dir():
        return
    try:
        foreign = sorted(e.name for e in os.scandir(out_dir) if not e.name.startswith("."))
    except OSError as exc:
        raise MedAdaptError(f"cannot list the output folder {out_dir} ({exc.strerror or exc}); make it readable "
                            "or choose another one") from None
    if foreign:
        raise MedAdaptError(f"the output folder {out_dir} already holds files (e.g. {foreign[0]!r}) that "
                            "`medadapt segment` did not write (it has no segment.json); choose a new or empty "
                            "output folder")


def _check_settings(out_dir: Path, settings: dict, overwrite: bool, built: bool = False) -> str | None:
    """Refuse to resume into a folder whose masks came from another model, adapter or prompts file. Returns when
    an ``--overwrite`` pass over the folder began (None: there was none): outputs older than that are redone.
    ``built``: the segmenter was built from the model, checkpoint and adapter named; if the folder's was too, those
    settings say which model it is, and ``weights_used`` (which differs with the precision that
    ``Segmenter.from_pretrained`` picks for the machine) is not compared, so a run resumes on another machine."""
    path = out_dir / "segment.json"
    if not path.exists() or overwrite:
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    for key in ("adapter_sha256", "weights_used"):  # written before these were recorded: accept what there is now
        if key not in old or (key == "weights_used" and built and old.get("weights_from") == "built"):
            old[key] = settings.get(key)
    old = {**_SETTING_DEFAULTS, **old}  # a folder written before a setting existed had its default
    if isinstance(old.get("axis"), int) and -3 <= old["axis"] < 0:  # recorded as given before axes were checked
        old["axis"] %= 3
    changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
    if changed:
        hint = (" (the Segmenter passed holds other weights: another model or adapter, or the same one at another "
                "precision)") if any(c.startswith("weights_used:") for c in changed) else ""
        raise MedAdaptError(f"{out_dir} holds masks made with other settings ({'; '.join(changed)}){hint}; choose "
                            "another output folder, or pass --overwrite to redo every file")
    return old.get("overwrite_started")


def _weights_fingerprint(seg: Segmenter) -> str:
    """A fingerprint of the weights a segmenter runs: its backbone's (or, for an exported model, the weights its
    manifest records), the base decoder it keeps beside an adapter, and its student, if any."""
    backbone = seg.backbone
    manifest = getattr(backbone, "manifest", None)
    if isinstance(manifest, dict):  # an export folder (runtime="onnxruntime" / "openvino")
        parts = ["export:" + str(manifest.get("weights_fingerprint")
                                 or hashlib.sha256(json.dumps(manifest.get("sha256"), sort_keys=True).encode())
                                 .hexdigest()[:16])]
    else:
        parts = ["backbone:" + fingerprint_state(backbone.state_dict())]
    if getattr(seg, "base_decoder", None) is not None:
        parts.append("base_decoder:" + fingerprint_state(seg.base_decoder.state_dict()))
    student = getattr(seg, "student", None)
    if student is not None:
        parts.append("student:" + fingerprint_state(student.network.state_dict()))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def segment_batch(
    inputs: PathLike | Sequence[PathLike],
    out_dir: PathLike,
    segmenter: Segmenter | None = None,
    *,
    prompts: PathLike | Mapping[str, Any] | None = None,
    model: str = "litemedsam",
    checkpoint: PathLike | None = None,
    adapter: PathLike | None = None,
    device: str | None = None,
    axis: int = 2,
    window: Any = None,
    refine: bool = False,
    multimask: bool = False,
    workers: int | None = None,
    retry_failed: bool = False,
    overwrite: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    series_format: str = "nifti",
    cleanup: Sequence[str] | None = None,
) -> BatchResult:
    """Segment every input of a folder, dataset or list and write one mask per input under ``out_dir``.

    Outputs keep the input's relative path and format: a PNG gives a PNG label
    map, a NIfTI file a NIfTI label volume with its affine and header, a
    DICOM-series folder ``NAME.nii.gz`` with the series' geometry (or, with
    ``series_format="dicom-seg"``, ``NAME.seg.dcm``: a DICOM-SEG on the series'
    images, one segment per class or per prompt), ``.npy`` a
    ``.npy``; JPEG, TIFF, BMP and single DICOM files give PNG. Without
    ``prompts``, the adapter's classes are segmented automatically (volumes
    slice by slice along ``axis``); ``prompts`` (a JSON file or mapping, see
    :func:`medadapt.inference.batch_inputs.read_prompts`) prompts the files it
    names, and the adapter's classes, if any, segment the rest. ``segmenter`` is used as
    given (and recorded by a fingerprint of its weights); otherwise one is built from ``model``, ``checkpoint``,
    ``adapter`` and ``device`` (under torchrun, ``cuda:LOCAL_RANK`` when CUDA is there). ``out_dir`` must be new,
    empty, or written by an earlier run with the same settings and weights (``overwrite`` redoes such a folder).

    ``workers`` processes read ahead (default min(2, CPUs); 0 reads
    in this process). ``OUT/manifest.csv`` gets one line per file: ``file``,
    ``status`` (ok, failed or skipped), ``seconds`` (what the file added to the
    run's wall time: waiting for its data, the model, the write),
    ``read_seconds`` (reading it, in a worker when ``workers`` > 0), ``error``,
    ``output`` and ``finished`` (UTC). A re-run
    skips existing outputs and files that failed before (``retry_failed``
    retries them; ``overwrite`` redoes everything). ``rank`` / ``world_size``
    (default: torchrun's ``RANK`` / ``WORLD_SIZE``) shard the inputs. ``cleanup`` (any of
    ``"largest"``, ``"holes"``) cleans up the automatic label maps (see :mod:`medadapt.inference.cleanup`).
    """
    out = Path(out_dir).expanduser()
    if rank is None or world_size is None:
        rank, world_size = distributed_rank()
    if not 0 <= rank < world_size:
        raise MedAdaptError(f"rank {rank} must lie in 0..world_size-1 (world_size={world_size})")
    axis = check_axis(axis)  # before anything is written: a bad axis must not be recorded in segment.json
    cleanup = check_cleanup(cleanup)
    if series_format not in SERIES_FORMATS:
        raise MedAdaptError(f"series_format must be one of {', '.join(SERIES_FORMATS)}; got {series_format!r}")
    done = read_manifest(out)  # what earlier runs wrote: who owns an output, and what is left to do
    recorded = {row["output"]: name for name, row in done.items()
                if row.get("status") in ("ok", "skipped") and row.get("output")}
    items = find_inputs(inputs, out, series_format, recorded)
    table = read_prompts(prompts, items) if prompts is not None else {}
    if segmenter is None and adapter is None and prompts is None:
        raise MedAdaptError("the pretrained model needs prompts: pass --prompts prompts.json (boxes or points per "
                            "file), or --adapter RUN of a model fine-tuned with `medadapt finetune` for automatic mode")
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise MedAdaptError(f"workers must be an integer >= 0, got {workers!r}")
    _check_out(out)
    given = segmenter is not None
    if segmenter is None:
        local = os.environ.get("LOCAL_RANK")
        if device is None and local is not None and torch.cuda.is_available():
            device = f"cuda:{int(local)}"
        segmenter = Segmenter.from_pretrained(model, checkpoint=checkpoint, adapter=adapter, device=device)
    if prompts is None and not segmenter.classes:
        raise MedAdaptError("this model learned no classes, so it needs prompts: pass --prompts prompts.json")
    # the adapter's intensity settings unless a window is given: its window, else its per-slice percentile clip
    window, percentiles = resolve_intensity(getattr(segmenter, "intensity", None), window)
    digest = hashlib.sha256(json.dumps(table, sort_keys=True, default=str).encode()).hexdigest()[:16]
    info = getattr(segmenter.backbone, "info", None)  # what a backbone says it is; absent on other runtimes
    settings = {"model": getattr(info, "name", type(segmenter.backbone).__name__),
                "weights": getattr(info, "fingerprint", ""), "classes": segmenter.classes,
                "adapter": None if adapter is None else str(Path(adapter).resolve()),
                "adapter_sha256": None if adapter is None else adapter_digest(Path(adapter)),
                "prompts": digest if prompts is not None else None, "axis": axis, "window": window,
                **({"percentiles": list(percentiles)} if percentiles is not None else {}),
                "refine": refine, "multimask": multimask,
                # a Segmenter the caller built (or an exported model) is known by the weights it runs; one built here
                # by the model, base weights and adapter (with its student) above as well (see _check_settings)
                "weights_used": _weights_fingerprint(segmenter)}
    if any(item.volume and not item.error and item.path.is_dir() for item in items):  # only a series' output
        settings["series_format"] = series_format
    settings["cleanup"] = list(cleanup)  # a folder written before clean-ups existed reads as [] (none)
    settings = json.loads(json.dumps(settings))  # as segment.json gives them back: tuples become lists
    since = _check_settings(out, settings, overwrite, built=not given)
    if overwrite:  # until every file is redone, an output older than this pass may be the old model's
        since = _now()
    if since is not None:
        settings["overwrite_started"] = since
    settings["weights_from"] = "given" if given else "built"
    atomic_write_json(out / "segment.json", settings)
    mine = [item for i, item in enumerate(items) if i % world_size == rank]  # on the full list: same on every rank
    manifest = _manifest_path(out, rank, world_size)
    if overwrite and rank == 0:
        _remove_orphans(out, done, {item.name for item in items}, manifest)
    pending, skipped, not_retried = [], 0, 0
    for item in mine:
        row = done.get(item.name, {})
        last = row.get("status")
        reached = since is not None and row.get("finished", "") >= since  # by the --overwrite pass begun at since
        if item.error or overwrite:  # an error: an output name another input takes, an unreadable entry
            pending.append(item)
        elif since is not None and item.out.exists() and not reached:
            pending.append(item)  # written before an interrupted --overwrite pass reached it: redo it
        elif last == "failed" and reached:  # failed in that pass, which removed its earlier output
            if retry_failed:
                pending.append(item)
            else:
                not_retried += 1
        elif item.out.exists():
            skipped += 1
            if last not in ("ok", "skipped"):  # made by an earlier run whose line was lost, or by hand
                _append(manifest, {"file": item.name, "status": "skipped", "seconds": "0", "read_seconds": "0",
                                   "output": str(item.out), "finished": _now()})
        elif last == "failed" and not retry_failed:
            not_retried += 1
        else:
            pending.append(item)
    for item in pending:  # temporary files a killed run left beside its outputs
        pattern = os.path.join(glob.escape(str(item.out.parent)), glob.escape("." + item.out.name) + ".*")
        for stale in glob.glob(pattern):
            os.unlink(stale)
    result = _run(segmenter, pending, table, out, manifest, axis=axis, window=window, percentiles=percentiles,
                  refine=refine, multimask=multimask, workers=workers, progress=progress and rank == 0,
                  counts=(skipped, not_retried), cleanup=cleanup)
    result.elsewhere, result.rank = len(items) - len(mine), (rank, world_size)
    return result


def _remove_orphans(out: Path, done: dict[str, dict[str, str]], names: set[str], manifest: Path) -> None:
    """An ``--overwrite`` pass removes the outputs of inputs that are gone (made with the earlier settings, they
    would stay beside the new masks), each with a ``removed`` line in the manifest."""
    gone = []
    for name, row in done.items():
        path = Path(row.get("output") or "")
        if name in names or row.get("status") not in ("ok", "skipped") or not path.is_file():
            continue
        if out.resolve() not in path.resolve().parents:  # only what this folder holds
            continue
        path.unlink()
        gone.append(name)
        _append(manifest, {"file": name, "status": "removed", "seconds": "0", "read_seconds": "0", "output": "",
                           "error": "its input is no longer among the inputs; --overwrite removed its earlier output",
                           "finished": _now()})
    if gone:
        warnings.warn(f"--overwrite removed the outputs of {len(gone)} inputs that are gone: "
                      f"{', '.join(gone[:5])}{', ...' if len(gone) > 5 else ''}", stacklevel=3)


def _remove_stale(item: BatchItem) -> str:
    """Remove the output a file that has just failed still has from an earlier run (an ``--overwrite`` pass redoes
    it with other settings, so it is no longer this folder's mask); what to add to its error if that fails."""
    if item.error or not (item.out.is_file() or item.out.is_symlink()):  # item.error: the output is not its own
        return ""
    try:
        item.out.unlink()
    except OSError as exc:
        return f"; its earlier output {item.out} could not be removed ({exc.strerror or exc}): delete it by hand"
    return ""


def _run(seg: Segmenter, items: list[BatchItem], table: dict, out: Path, manifest: Path, *, axis: int, window: Any,
         percentiles: tuple[float, float] | None, refine: bool, multimask: bool, workers: int, progress: bool, counts: tuple[int, int],
         cleanup: tuple[str, ...] = ()) -> BatchResult:
    from tqdm.auto import tqdm

    result = BatchResult(0, 0, *counts, images=0, volumes=0, seconds=0.0, waited=0.0, manifest=manifest)
    start = last = time.perf_counter()
    bar = tqdm(total=len(items), unit="file", disable=not progress or not items, desc="segment")
    for record in read_ahead(items, window, workers):
        item = items[int(record["index"])]
        result.waited += time.perf_counter() - last
        row = {"file": item.name, "output": str(item.out)}
        try:
            if "error" in record:
                raise MedAdaptError(record["error"])
            pixels, entry = record["pixels"], table.get(item.name)
            if entry is None and not seg.classes:
                raise MedAdaptError("the prompts file has no prompts for it, and the model learned no classes to "
                                    "segment it automatically")
            if record.get("blank"):  # a blank image: nothing to find there, as on a blank slice of a volume
                labels = np.zeros(pixels.shape[:2], np.uint8)
                warnings.warn(f"{item.name} is blank (every pixel the same value{' after the window' * bool(window)}); "
                              "an empty mask was written", stacklevel=3)
            elif item.volume:
                labels = _predict_volume(seg, pixels, entry, axis, refine, multimask, cleanup, item.name, window,
                                         percentiles)
            else:
                labels = _predict_image(seg, pixels, entry, path_suffix(item.out) == ".png", refine, multimask,
                                        cleanup, percentiles)
            segments = _segments(seg, labels, entry) if path_suffix(item.out) == ".dcm" else None
            _save(labels, item, segments)
            row.update(status="ok", error="")
            result.ok += 1
            result.volumes += item.volume
            result.images += not item.volume
        except Exception as exc:  # one bad file is recorded and the rest go on
            row.update(status="failed", error=one_line(exc) + _remove_stale(item), output="")
            result.failed += 1
        row.update(read_seconds=f"{float(record['read_seconds']):.3f}", finished=_now())
        _append(manifest, {**row, "seconds": f"{time.perf_counter() - last:.3f}"})  # what this file added to the run
        last = time.perf_counter()
        bar.update(1)
        bar.set_postfix(ok=result.ok, failed=result.failed, refresh=False)
    bar.close()
    result.seconds = time.perf_counter() - start
    return result


__all__ = ["BatchResult", "distributed_rank", "read_manifest", "segment_batch"]
