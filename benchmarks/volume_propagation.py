"""Promptable volume segmentation: one box on one slice, propagated through the volume.

For each volume and structure (LA: the left atrium; BraTS: the FLAIR edema; ACDC val: RV, MYO and LV of each
frame, one object each) the ground truth gives one tight box on the slice where the structure is largest, and
``Segmenter.predict_volume(boxes={z: box})`` propagates it (``--boxes-at``: boxes on more slices, fused).
Two references run on the same cached embeddings:

* ``every_slice``: a ground-truth box on every slice that holds the structure, each slice decoded alone (the
  ceiling of slice-wise boxes);
* ``box_chain``: the previous slice's mask box as the only prompt, no mask prompt, no point, no stopping rule;
* ``in_extent``: the same walks as ``propagated`` without the stopping rules, cut to the slices that hold the
  structure (the ground truth's extent): what a perfect stopping rule would give, so the gap between it and
  ``every_slice`` is the slices' masks, not where the walks end.

Dice and HD95 (mm, from the file's spacing) per volume in 3-D. ``--grid`` scores propagation settings; choose
them on BraTS and ACDC val (``--sets brats acdc``), never on the set you report. Each finished
(volume, structure, method) is appended to RUN/results.jsonl, so a stopped run resumes.

    python benchmarks/volume_propagation.py --sets la brats acdc
    python benchmarks/volume_propagation.py --sets la --boxes-at 0.15 0.85   # three boxes per structure
    python benchmarks/volume_propagation.py --sets brats acdc --limit 8 --run runs/volume_grid \
        --grid min_score=0.5,0.7,0.8 min_area_ratio=0,0.2 mask_prompt=0,1 point=0,1
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_root, write_result  # noqa: E402

from medadapt.evaluation.metrics import dice_per_class, hd95_per_class  # noqa: E402
from medadapt.inference import Segmenter  # noqa: E402
from medadapt.inference.propagation import (  # noqa: E402
    Propagation,
    PropagationConfig,
    mean_probability,
    probability_mask,
)
from medadapt.io.imaging import load_volume, volume_slice, voxel_size  # noqa: E402
from medadapt.prompts.regions import mask_box  # noqa: E402
from medadapt.prompts.types import Prompts  # noqa: E402

# The volumes PropagationConfig's defaults were chosen on (--grid); --chosen-on adds more. Summaries give the mean
# over the other volumes too ("held out").
SELECTION = [f"patient{p:03d}_frame{f:02d}" for p in (2, 19, 28, 30) for f in (1, 2)] + ["BraTS2021_01646"]
# in_extent: no stopping rule, only a vanished mask ends a walk
UNSTOPPED = dict(min_score=0.0, min_area_ratio=0.0, max_drop=1.0, patience=0, base_patience=0)
NAIVE = PropagationConfig(min_score=0.0, min_area_ratio=0.0, margin=0.0, mask_prompt=False, point=False,
                          box_threshold=0.5, patience=0)


def cases(root: Path, name: str, limit: int | None) -> list[tuple[str, Path, Path, dict[int, str]]]:
    if name == "la":
        imgs = sorted((root / "la" / "imagesTr").glob("*.nii.gz"))
        out = [(p.name[:-7], p, root / "la" / "labelsTr" / p.name, {1: "left atrium"}) for p in imgs]
    elif name == "brats":
        imgs = sorted((root / "brats_flair" / "imagesTr").glob("*.nii.gz"))
        out = [(p.name[:-7], p, root / "brats_flair" / "labelsTr" / p.name, {1: "edema"}) for p in imgs]
    elif name == "acdc":
        imgs = sorted((root / "acdc" / "imagesVal").glob("*.nii.gz"))
        out = [(p.name[:-7], p, root / "acdc" / "labelsVal" / p.name, {1: "RV", 2: "MYO", 3: "LV"}) for p in imgs]
    else:
        raise SystemExit(f"unknown set {name}")
    return out[:limit]


def parse_list(item: str) -> tuple[str, list]:
    """``KEY=V1,V2`` -> (KEY, [values of the PropagationConfig field's type]); booleans as 0/1."""
    key, _, values = item.partition("=")
    kind = type(getattr(PropagationConfig(), key))
    return key, [kind(int(v)) if kind is bool else kind(v) for v in values.split(",")]


def parse_values(items: list[str]) -> dict:
    """``["KEY=V", ...]`` -> PropagationConfig keyword arguments."""
    return {key: values[0] for key, values in map(parse_list, items)}


def slice_boxes(gt: np.ndarray, axis: int) -> dict[int, np.ndarray]:
    """A tight box around the structure on every slice that holds it (display frame)."""
    return {k: mask_box(volume_slice(gt, k, axis) > 0) for k in range(gt.shape[axis])
            if np.take(gt, k, axis).any()}


def prompted_slices(boxes: dict[int, np.ndarray], largest: int, fractions: list[float]) -> list[int]:
    """The slice where the structure is largest and, for each fraction f of ``--boxes-at``, the slice at f of its
    extent (0 its first slice, 1 its last; the nearest slice that holds it)."""
    ks = sorted(boxes)
    wanted = [ks[0] + f * (ks[-1] - ks[0]) for f in fractions]
    return sorted({largest, *(min(ks, key=lambda k: abs(k - w)) for w in wanted)})


def every_slice(seg: Segmenter, boxes: dict[int, np.ndarray]) -> np.ndarray:
    session = seg.volume
    out = np.zeros(session.data.shape, bool)
    for k, box in boxes.items():
        seg.show_plane(session, k)
        session.write_plane(out, k, seg.predict(boxes=box[None]).masks[0])
    return out


def every_slice_both(seg: Segmenter, boxes: dict[int, np.ndarray]) -> np.ndarray:
    """``every_slice`` answered as ``PropagationConfig.base`` answers a walk: the adapted and the base decoder
    each decode the box, and their probabilities are averaged (a pixel is in where the mean is above
    ``base_threshold``)."""
    session, threshold = seg.volume, PropagationConfig().base_threshold
    out = np.zeros(session.data.shape, bool)
    for k, box in boxes.items():
        emb, prompts = session.embedding(k), Prompts(boxes=box[None])
        own = seg.decode_embedding(emb, session.meta, prompts)
        base = seg.decode_embedding(emb, session.meta, prompts, mask_decoder=seg.base_decoder)
        low = mean_probability([torch.from_numpy(own.logits[:1]), torch.from_numpy(base.logits[:1])], 2)
        session.write_plane(out, k, probability_mask(session, low, threshold))
    return out


def in_extent(pred: np.ndarray, gt: np.ndarray, axis: int) -> np.ndarray:
    """``pred`` on the slices that hold the structure, empty on the others."""
    keep = np.any(gt, axis=tuple(i for i in range(3) if i != axis))
    shape = [1, 1, 1]
    shape[axis] = -1
    return pred & keep.reshape(shape)


def score(pred: np.ndarray, gt: np.ndarray, spacing) -> dict:
    dice = dice_per_class(pred.astype(np.uint8), gt.astype(np.uint8), [1])[1]
    hd = hd95_per_class(pred.astype(np.uint8), gt.astype(np.uint8), [1], spacing=spacing)[1]
    inter = int((pred & gt).sum())
    return {"dice": round(float(dice), 4), "hd95_mm": None if np.isnan(hd) else round(float(hd), 2),
            "precision": round(inter / max(int(pred.sum()), 1), 4), "recall": round(inter / max(int(gt.sum()), 1), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=["la", "brats", "acdc"], choices=["la", "brats", "acdc"])
    ap.add_argument("--run", default="runs/volume_propagation", help="resumable run folder")
    ap.add_argument("--limit", type=int, default=None, help="first N volumes of each set")
    ap.add_argument("--cases", nargs="+", default=None, metavar="ID",
                    help="only these volumes (file names without .nii.gz), e.g. a set's selection volumes")
    ap.add_argument("--experiment", default=None,
                    help="the report's name under benchmarks/results/<set>/ (default: box_propagation, or "
                         "propagation_selection with --grid)")
    ap.add_argument("--grid", nargs="+", default=None, metavar="KEY=V1,V2",
                    help="score every combination of these PropagationConfig values instead, e.g. "
                         "min_score=0.5,0.7 overlap=0,1 (booleans as 0/1)")
    ap.add_argument("--config", nargs="+", default=None, metavar="KEY=V",
                    help="propagate with these PropagationConfig values instead of the defaults (booleans as 0/1); "
                         "box_chain, which does not depend on them, is left out")
    ap.add_argument("--chosen-on", nargs="+", default=[], metavar="ID",
                    help="volumes the settings were chosen on besides the defaults' (left out of 'held out')")
    ap.add_argument("--adapter", default=None, metavar="RUN",
                    help="an adapted model (a finetune run folder): also scores its decoder's walks alone "
                         "(without_base), and without class proposals (no_proposals)")
    ap.add_argument("--boxes-at", nargs="+", type=float, default=[], metavar="F",
                    help="ground-truth boxes also on the slices at these fractions of each structure's extent "
                         "(0 its first slice, 1 its last), e.g. 0.15 0.85: a user who boxes it near its ends too "
                         "(reported as box_propagation_<n>boxes)")
    ap.add_argument("--axis", type=int, default=2)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args(argv)
    if any(not 0.0 <= f <= 1.0 for f in args.boxes_at):
        ap.error(f"--boxes-at takes fractions of the extent in [0, 1]; got {args.boxes_at}")
    at = args.boxes_at = sorted(set(args.boxes_at))
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    log = run / "results.jsonl"
    done = {(r["set"], r["case"], r["label"], r["method"]) for r in protocol_rows([log], at)} if log.exists() else set()
    seg = Segmenter.from_pretrained("litemedsam", adapter=args.adapter)
    root = data_root(args.data_root)
    if args.grid:
        grid = dict(map(parse_list, args.grid))
        methods = {"grid:" + ",".join(f"{k}={v}" for k, v in zip(grid, combo)): PropagationConfig(**dict(zip(grid, combo)))
                   for combo in itertools.product(*grid.values())}
    else:
        given = parse_values(args.config or [])
        methods = {"propagated": PropagationConfig(**given), "every_slice": None,
                   "in_extent": PropagationConfig(**{**given, **UNSTOPPED})}
        if not (args.config or args.adapter or at):
            methods["box_chain"] = NAIVE
        if args.adapter:  # the adapted decoder's walk alone, with and without its class proposals
            methods["without_base"] = PropagationConfig(**{**given, "base": False})
            methods["no_proposals"] = PropagationConfig(**{**given, "proposals": False, "base": False})
            if seg.base_decoder is not None:
                methods["every_slice_both"] = "both"
    for name in args.sets:
        for case, image, label, classes in cases(root, name, args.limit):
            if args.cases and case not in args.cases:
                continue
            todo = [(v, m) for v in classes for m in methods if (name, case, v, m) not in done]
            if not todo:
                continue
            labels, affine = load_volume(label)
            spacing = voxel_size(affine)
            seg.set_volume(image, axis=args.axis)
            for value, method in todo:
                gt = labels == value
                if not gt.any():
                    continue
                boxes = slice_boxes(gt, args.axis)
                z = max(boxes, key=lambda k: int(np.take(gt, k, args.axis).sum()))
                zs = prompted_slices(boxes, z, at)
                encoded, enc_s, start = seg.volume.encoded, seg.volume.encode_seconds, time.perf_counter()
                if methods[method] is None:
                    pred = every_slice(seg, boxes)
                elif methods[method] == "both":
                    pred = every_slice_both(seg, boxes)
                else:
                    obj = Propagation(seg.volume, methods[method])
                    obj.start({k: {"box": boxes[k]} for k in zs})
                    pred = obj.volume()
                    if method == "in_extent":
                        pred = in_extent(pred, gt, args.axis)
                wall = time.perf_counter() - start
                row = {"set": name, "case": case, "label": value, "structure": classes[value], "method": method,
                       "slice": z, **({"boxes_at": at, "prompted": zs} if at else {}), "gt_slices": len(boxes), "pred_slices": int(np.any(pred, axis=tuple(
                           i for i in range(3) if i != args.axis)).sum()),
                       **score(pred, gt, spacing), "seconds": round(wall, 2),
                       "encoded": seg.volume.encoded - encoded,
                       "encode_seconds": round(seg.volume.encode_seconds - enc_s, 2)}
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
            seg.reset_volume()
    if args.grid:
        summarise_grid([log], args)
    else:
        summarise(log, args)
    return 0


def protocol_rows(logs: list[Path], at: list[float]) -> list[dict]:
    """The rows of the results.jsonl files ``logs`` measured with ``--boxes-at`` ``at`` (one-box rows carry none)."""
    return [r for log in logs for line in log.read_text().splitlines()
            if (r := json.loads(line)).get("boxes_at", []) == at]


def where_else(at: list[float], table: bool = True) -> str:
    """The report's words for ``--boxes-at`` (``table``: the report lists the prompted slices)."""
    if not at:
        return ""
    return (" and on the slices at " + ", ".join(f"{f:g}" for f in at) + " of its extent (0 its first slice, 1 its "
            "last; `--boxes-at`" + ("; the `slice` column lists the prompted slices)" if table else ")"))


def summarise_grid(logs: list[Path], args) -> None:
    """Mean Dice of each setting over the selection objects, overall and per set; ranked by the overall mean."""
    at = args.boxes_at
    rows = protocol_rows(logs, at)
    by = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    full = max(len(v) for v in by.values())
    sets = [s for s in args.sets if any(r["set"] == s for r in rows)]
    table = ["| setting | mean Dice, all objects | " + " | ".join(f"{s} (objects)" for s in sets) + " |",
             "|---" * (2 + len(sets)) + "|"]
    ranked = sorted((m for m in by if len(by[m]) == full), key=lambda m: -np.mean([r["dice"] for r in by[m]]))
    payload = {}
    for m in ranked:
        per = {s: [r["dice"] for r in by[m] if r["set"] == s] for s in sets}
        table.append(f"| {m[5:]} | {np.mean([r['dice'] for r in by[m]]):.3f} | "
                     + " | ".join(f"{np.mean(v):.3f} ({len(v)})" for v in per.values()) + " |")
        payload[m[5:]] = {"mean_dice": float(np.mean([r["dice"] for r in by[m]])),
                          **{s: float(np.mean(v)) for s, v in per.items()},
                          "objects": [[r["set"], r["case"], r["label"], r["dice"]] for r in by[m]]}
    volumes = sorted({(r["set"], r["case"]) for r in rows})
    md = ("Propagation settings scored on selection volumes, one ground-truth box on the slice where each "
          f"structure is largest{where_else(at, table=False)}"
          + (f", with LiteMedSAM adapted by `{args.adapter}` (its walk and the base decoder's, averaged)"
             if args.adapter else "")
          + "; settings not named in a row are `PropagationConfig`'s defaults of the run that scored it. Rows are "
          "ranked by the mean over all objects. Volumes: "
          + ", ".join(f"{s} {c}" for s, c in volumes) + ".\n\n" + "\n".join(table))
    write_result(sets[-1], args.experiment or "propagation_selection" + (f"_{1 + len(at)}boxes" if at else ""), {"settings": payload}, md,
                 title=f"Choosing the propagation settings on {' and '.join(sets)}")


def summarise(log: Path, args) -> None:
    at = args.boxes_at
    rows = protocol_rows([log], at)
    for name in args.sets:
        sel = [r for r in rows if r["set"] == name]
        if not sel:
            continue
        chosen = set(SELECTION) | set(args.chosen_on)
        table = ["| method | mean Dice | held out | min | max | HD95 mm (median) | volumes x structures |",
                 "|---|---|---|---|---|---|---|"]
        payload = {}
        for method in ("propagated", "without_base", "no_proposals", "in_extent", "every_slice", "every_slice_both",
                       "box_chain"):
            rs = [r for r in sel if r["method"] == method]
            if not rs:
                continue
            d = np.array([r["dice"] for r in rs])
            held = [r["dice"] for r in rs if r["case"] not in chosen]
            hd = [r["hd95_mm"] for r in rs if r["hd95_mm"] is not None]
            held_mean = float(np.mean(held)) if held else None
            held_cell = f"{held_mean:.3f} ({len(held)})" if held else "none (all chosen on)"
            table.append(f"| {method} | {d.mean():.3f} | {held_cell} | {d.min():.3f} | {d.max():.3f} | "
                         f"{np.median(hd) if hd else float('nan'):.1f} | {len(rs)} |")
            payload[method] = {"mean_dice": round(float(d.mean()), 4),
                               "held_out_mean_dice": None if held_mean is None else round(held_mean, 4), "rows": rs}
        extra = ["without_base", "every_slice_both", "no_proposals"] if args.adapter else ["box_chain"] * (not at)
        head = ["volume", "structure", "slice", "propagated", "precision / recall", "in extent", "every slice",
                *(m.replace("_", " ") for m in extra)]
        per = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for r in [r for r in sel if r["method"] == "propagated"]:
            other = {x["method"]: x["dice"] for x in sel if x["case"] == r["case"] and x["label"] == r["label"]}
            mark = " (selection)" if r["case"] in chosen else ""
            pr = f"{r['precision']:.2f} / {r['recall']:.2f}" if "precision" in r else "-"
            where = " ".join(map(str, r.get("prompted", [r["slice"]])))
            cells = [f"{r['case']}{mark}", r["structure"], where, f"{r['dice']:.3f}", pr,
                     *(f"{other.get(m, float('nan')):.3f}" for m in ["in_extent", "every_slice", *extra])]
            per.append("| " + " | ".join(cells) + " |")
        md = (
            "One ground-truth box (tight around the structure) on the slice where it is largest"
            + where_else(at) + ", propagated by `Segmenter.predict_volume(boxes={z: box" + (", ..." if at else "")
            + "})` with "
            + (f"`PropagationConfig({', '.join(args.config)})`" if args.config else "the default `PropagationConfig`")
            + (f" (LiteMedSAM adapted by `{args.adapter}`: the adapted decoder's walk, guided by its class "
               "proposals, and the base decoder's walk, their probabilities averaged on each slice; "
               "`without_base`: the adapted decoder's walk alone, `base=False`; `no_proposals`: that walk without "
               "its class proposals, `proposals=False, base=False`; `every_slice_both`: `every_slice` with the two "
               "decoders' probabilities averaged on each slice, the ceiling of the propagated answer; "
               if args.adapter else " (LiteMedSAM, ")
            + f"slices along axis {args.axis}). `every_slice`: a ground-truth box on every slice that holds the "
            "structure, each decoded alone (the ceiling of slice-wise boxes). `in_extent`: the same walks without "
            "stopping rules, cut to the slices that hold the structure (a perfect stopping rule). "
            + ("" if args.config or args.adapter or at
               else "`box_chain`: the previous slice's mask box as the only prompt, no stopping rule. ")
            + "3-D Dice per volume and structure; HD95 in mm from "
            "the file's spacing (ACDC stores 1 mm in-plane: read its HD95 as pixels in-plane). The settings were "
            "chosen on " + (f"{', '.join(sorted(chosen))} (`--chosen-on` and the defaults' selection volumes)"
                            if args.chosen_on else "the BraTS volume and 8 ACDC validation frames "
                            "([selection](../../acdc/propagation_selection/summary.md))")
            + "; `held out` is the mean over the volumes not used for that choice; those used are marked "
            "`(selection)` below.\n\n"
            + "\n".join(table) + "\n\n" + "\n".join(per)
        )
        write_result(name, args.experiment or "box_propagation" + (f"_{1 + len(at)}boxes" if at else ""),
                     {"results": payload, "boxes_at": at}, md)


if __name__ == "__main__":
    raise SystemExit(main())
