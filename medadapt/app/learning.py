"""Online learning inside the annotation app: every accepted mask teaches the model in the background.

:func:`online_segmenter` builds the serving segmenter and its
:class:`~medadapt.training.OnlineLearner` (folder ``LABELS/online/``: the
replay buffer and the adapter checkpoint); :func:`accept_hook` is the
``on_accept`` the :class:`~medadapt.app.session.Annotator` calls; :func:`stop_learning` stops the learner and
saves what it learned when the app stops. The page
never waits for training: the learner trains a private copy and publishes its
weights between two prompts, and the next proposal comes from the new weights.
A restarted app resumes from the checkpoint and the buffer, and trains on the
samples accepted but not trained yet when it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..adapters import load_adapter, read_adapter_info
from ..adapters.io import adapter_digest
from ..core.errors import MedAdaptError
from ..foundation import build_backbone
from ..inference import Segmenter
from ..inference.predictor import adapter_path
from ..training import OnlineConfig, OnlineLearner
from ..training.online import holds_checkpoint


def online_segmenter(model: str, folder: str | Path, *, adapter=None, checkpoint=None, device=None,
                     config: OnlineConfig | dict | None = None,
                     log: Callable[[str], Any] | None = None) -> tuple[Segmenter, OnlineLearner]:
    """A trainable (float32) segmenter and the learner serving it. ``adapter`` seeds a new ``folder``; a folder
    that holds a checkpoint resumes from it, with ``adapter`` only when the checkpoint started from that very
    adapter (its files' SHA-256 is kept with the checkpoint): another adapter is refused, not silently dropped."""
    folder = Path(folder)
    backbone = build_backbone(model, None if checkpoint is None else str(checkpoint))
    resuming = holds_checkpoint(folder)
    origin = None
    if adapter is not None:
        path = Path(adapter_path(adapter)).resolve()
        origin = {"adapter": str(path), "sha256": adapter_digest(path)}
        if not resuming:
            backbone = load_adapter(backbone, path)
        else:
            saved = (read_adapter_info(folder / "adapter").get("metadata") or {}).get("online") or {}
            saved = saved.get("origin") if isinstance(saved, dict) else None
            if not isinstance(saved, dict) or saved.get("sha256") != origin["sha256"]:
                began = f"from {saved.get('adapter')}" if isinstance(saved, dict) else "without that adapter"
                raise MedAdaptError(f"--adapter {adapter} was given, but {folder} holds the model learned in an "
                                    f"earlier run of the app on these labels (it started {began}): drop --adapter to resume "
                                    f"it, or rename or remove {folder} to start again from {adapter}")
            if log is not None:
                log(f"resuming the online learner in {folder} (it started from {adapter})")
    seg = Segmenter(backbone, device=device)
    learner = OnlineLearner(seg, folder, config)
    if learner.origin is None:
        learner.origin = origin
    learner.start()
    return seg, learner


def accept_hook(learner: OnlineLearner, classes: Callable[[], dict[str, int]]):
    """``on_accept`` for the annotator: the slice's label map (label values) becomes a learner sample
    listing every class the app knows (a class absent from the slice is taught as absent there)."""

    def on_accept(image_id, label_map, meta, embedding, prompts) -> None:
        named = sorted(classes().items(), key=lambda kv: kv[1])
        values = np.asarray(label_map, np.int64)
        index = np.zeros(int(max(int(values.max()), max(v for _, v in named))) + 1, np.int64)
        for k, (_, value) in enumerate(named, start=1):
            index[value] = k
        # a value no class has is taught as background: also a negative one (-1 "ignore" in some NIfTI label
        # volumes), which indexing would otherwise wrap around to the last class
        label = np.where(values > 0, index[np.clip(values, 0, None)], 0)
        learner.add(embedding, meta, label, [n for n, _ in named],
                    prompts=plain_prompts(prompts), image_id=str(image_id), label_values=[v for _, v in named])
        if getattr(learner, "error", None) is not None:  # the sample is kept; nothing trains on it before a restart
            raise MedAdaptError(f"{learner.status()['error']}; the accepted sample is kept in {learner.buffer.folder}"
                                ": restart the app to train on it")

    if hasattr(learner, "status"):
        on_accept.status = learner.status  # what Annotator.state() shows about the learner
    return on_accept


def stop_learning(learner: OnlineLearner, log: Callable[[str], Any] = print) -> str | None:
    """Stop the online learner and save what it learned, each whatever became of the other; returns what went
    wrong (None when nothing did). The accepted labels are already in their files: only the model's training
    since its last save can be lost, and the replay buffer keeps every sample for a restarted app."""
    problems = []
    try:
        learner.stop()
    except Exception as exc:
        problems.append(str(exc))
    if learner.segmenter.backbone.adapter_config is not None:  # nothing accepted: nothing learned to save
        target = learner.folder / "adapter"
        try:
            log(f"online learner saved to {learner.save(target)}")
        except Exception as exc:
            problems.append(f"could not save the online learner's model to {target} ({exc}); the accepted labels "
                            f"are in their files and the samples in {learner.buffer.folder}: free the disk or fix "
                            "the folder's permissions and start the app again to train on them")
    return "; ".join(problems) or None


def plain_prompts(prompts: list[dict]) -> dict[str, list]:
    """The page's prompts (``{"kind": "point" | "box" | "scribble", ...}``) as the replay buffer keeps them:
    ``points`` / ``labels`` (clicks), ``boxes`` and ``scribbles`` (``[label, [[x, y], ...]]``)."""
    out: dict[str, list] = {"points": [], "labels": [], "boxes": [], "scribbles": []}
    for p in prompts:
        if p["kind"] == "point":
            out["points"].append([float(p["x"]), float(p["y"])])
            out["labels"].append(int(p["label"]))
        elif p["kind"] == "box":
            out["boxes"].append([float(p[k]) for k in ("x0", "y0", "x1", "y1")])
        else:
            out["scribbles"].append([int(p["label"]), [[float(x), float(y)] for x, y in p["points"]]])
    return out


__all__ = ["accept_hook", "online_segmenter", "plain_prompts", "stop_learning"]
