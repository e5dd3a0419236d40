"""Online learning inside the annotation app: every accepted mask teaches the model in the background.

:func:`online_segmenter` builds the serving segmenter and its
:class:`~medadapt.training.OnlineLearner` (folder ``LABELS/online/``: the
replay buffer and the adapter checkpoint); :func:`accept_hook` is the
``on_accept`` the :class:`~medadapt.app.session.Annotator` calls; :func:`stop_learning` stops the learner and
saves what it learned when the app stops. The page
never waits for training: the learner trains a private copy and publishes its
weights between two prompts, and the next proposal comes from the new weights.
A restarted app resumes from the checkpoint and the buffer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..adapters import load_adapter
from ..foundation import build_backbone
from ..inference import Segmenter
from ..inference.predictor import adapter_path
from ..training import OnlineConfig, OnlineLearner


def online_segmenter(model: str, folder: str | Path, *, adapter=None, checkpoint=None, device=None,
                     config: OnlineConfig | dict | None = None) -> tuple[Segmenter, OnlineLearner]:
    """A trainable (float32) segmenter and the learner serving it. The learner's own checkpoint in
    ``folder`` wins over ``adapter``, which only seeds a new folder."""
    backbone = build_backbone(model, None if checkpoint is None else str(checkpoint))
    resuming = (Path(folder) / "adapter").exists()
    if adapter is not None and not resuming:
        backbone = load_adapter(backbone, adapter_path(adapter))
    seg = Segmenter(backbone, device=device)
    learner = OnlineLearner(seg, folder, config)
    learner.start()
    return seg, learner


def accept_hook(learner: OnlineLearner, classes: Callable[[], dict[str, int]]):
    """``on_accept`` for the annotator: the slice's label map (label values) becomes a learner sample
    listing every class the app knows (a class absent from the slice is taught as absent there)."""

    def on_accept(image_id, label_map, meta, embedding, prompts) -> None:
        named = sorted(classes().items(), key=lambda kv: kv[1])
        index = np.zeros(int(max(int(label_map.max()), max(v for _, v in named))) + 1, np.int64)
        for k, (_, value) in enumerate(named, start=1):
            index[value] = k
        learner.add(embedding, meta, index[np.asarray(label_map, np.int64)], [n for n, _ in named],
                    prompts=plain_prompts(prompts), image_id=str(image_id), label_values=[v for _, v in named])

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
