"""The ``medadapt`` command line: thin ``main()`` wrappers over library functions.

Every subcommand parses arguments, calls one library function and prints its
result. A :class:`~medadapt.core.errors.MedAdaptError` becomes one line on stderr and
exit status 2 (no traceback): the message already says what to fix. ``--verbose``
(before or after the subcommand) prints the full error text with its traceback and
shows the third-party warnings medadapt silences (see ``foundation/builtins.py``).
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
import warnings
from typing import Sequence

from .core.errors import MedAdaptError

# Each command imports the library part it runs when it runs (lazy, for start-up time only: those parts pull
# in torch, MONAI and transformers, which `medadapt --help` does not need). They all sit below this module.


def _cmd_models(args: argparse.Namespace) -> int:
    from .foundation import list_backbones

    rows = [(s.name, s.family, f"{s.image_size} px", s.weights) for s in list_backbones()]
    print(_table(("backbone", "family", "input", "weights"), rows))
    return 0


def _is_volume_path(path: str) -> bool:
    from pathlib import Path

    return path.endswith((".nii", ".nii.gz")) or Path(path).is_dir()


def _cmd_predict(args: argparse.Namespace) -> int:
    from .inference.segment import segment_file, segment_volume_file

    boxes, points = args.box or [], args.point or []
    for b in boxes:
        if len(b) not in (4, 5):
            raise MedAdaptError(f"--box takes X0 Y0 X1 Y1 (an image or --slice) or Z X0 Y0 X1 Y1 (a volume); "
                                f"got {len(b)} numbers")
    for p in points:
        if len(p) not in (3, 4):
            raise MedAdaptError(f"--point takes X Y LABEL (an image or --slice) or Z X Y LABEL (a volume); "
                                f"got {len(p)} values")
    volume = any(len(b) == 5 for b in boxes) or any(len(p) == 4 for p in points) or (
        not boxes and not points and not args.text and args.slice is None and _is_volume_path(args.image))
    if volume:
        if args.slice is not None or any(len(b) == 4 for b in boxes) or any(len(p) == 3 for p in points):
            raise MedAdaptError("a volume prompt names its slice: --box Z X0 Y0 X1 Y1 and --point Z X Y LABEL, "
                                "without --slice (or give --slice K and 2-D prompts to segment one slice)")
        if args.text or args.overlay or args.multimask:
            raise MedAdaptError("--text, --overlay and --multimask apply to one image or slice (--slice K)")
        if args.clip or args.clip_weights or args.text_encoder:
            raise MedAdaptError("--clip, --clip-weights and --text-encoder go with --text, which applies to one "
                                "image or slice (--slice K)")
        result = segment_volume_file(
            args.image, out=args.out, boxes=[[float(v) for v in b] for b in boxes],
            points=[[_coordinate(v) for v in p[:3]] + [_label(p[3])] for p in points], model=args.model,
            checkpoint=args.checkpoint, axis=args.axis, window=args.window, device=args.device,
            adapter=args.adapter, refine=args.refine, overwrite=args.overwrite, cleanup=_cleanup(args.cleanup))
        names = [f"class {t!r}" for t in result.labels] or ["object"]
        for name, area in zip(names, result.areas):
            print(f"{name}: {area} voxels")
        print(f"mask written to {result.out}")
        return 0
    if args.cleanup:
        raise MedAdaptError("--cleanup applies to a whole volume in automatic mode (--adapter RUN, no prompt, no "
                            "--slice)")
    points = [(_coordinate(x), _coordinate(y)) for x, y, _ in args.point] if args.point else None
    labels = [_label(v) for _, _, v in args.point] if args.point else None
    result = segment_file(
        args.image,
        out=args.out,
        boxes=args.box,
        points=points,
        point_labels=labels,
        overlay=args.overlay,
        overwrite=args.overwrite,
        model=args.model,
        checkpoint=args.checkpoint,
        slice_index=args.slice,
        axis=args.axis,
        window=args.window,
        multimask=args.multimask,
        device=args.device,
        text=args.text,
        clip=args.clip,
        clip_weights=args.clip_weights,
        adapter=args.adapter,
        refine=args.refine,
        text_encoder=args.text_encoder,
    )
    kind = "text" if args.text else "class"
    names = [f"{kind} {t!r}" for t in result.labels] or [f"prompt {i + 1}" for i in range(len(result.areas))]
    for name, area, score in zip(names, result.areas, result.scores):
        print(f"{name}: {area} pixels, {result.score_name} {score:.3f}")
    print(f"mask written to {result.out}" + (f"; overlay to {result.overlay}" if result.overlay else ""))
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from .inference.batch import segment_batch

    r = segment_batch(
        args.inputs, args.out, prompts=args.prompts, model=args.model, checkpoint=args.checkpoint,
        adapter=args.adapter, device=args.device, axis=args.axis, window=args.window, refine=args.refine,
        multimask=args.multimask, workers=args.workers, retry_failed=args.retry_failed, overwrite=args.overwrite,
        progress=not args.no_progress, series_format=args.series_format, cleanup=_cleanup(args.cleanup),
    )
    parts = [f"{r.ok} written ({r.images} images, {r.volumes} volumes) in {r.seconds:.1f} s", f"{r.failed} failed",
             f"{r.skipped} already done"] + [f"{r.not_retried} failed before (--retry-failed retries them)"] * bool(
                 r.not_retried) + [f"{r.elsewhere} left to the other ranks (this is rank {r.rank[0]} of {r.rank[1]}, "
                                   "from RANK / WORLD_SIZE)"] * bool(r.elsewhere)
    print(", ".join(parts) + f"; manifest: {r.manifest}")
    return 1 if r.failed or r.not_retried else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    result = export_model(args.source, args.out, format=args.format, checkpoint=args.checkpoint,
                          overwrite=args.overwrite, tolerance=args.tolerance, log=print)
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in result.max_abs_diff.items())
    print(f"exported to {result.folder} ({', '.join(result.manifest['graphs'].values())}); "
          f"largest difference from PyTorch: {diffs}")
    return 0


def _cmd_annotate(args: argparse.Namespace) -> int:
    from .app import annotate
    from .training.config import apply_overrides

    annotate(args.data, adapter=args.adapter, model=args.model, checkpoint=args.checkpoint, host=args.host,
             port=args.port, labels=args.labels, axis=args.axis, window=args.window, device=args.device,
             learn=args.learn, local=args.local,
             online=apply_overrides({}, args.online) if args.online else None)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out, device=args.device, finetune=not args.no_finetune, epochs=args.epochs)
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .recipes import finetune, load_config
    from .training import distributed

    world = distributed.start()  # joins the other ranks when torchrun launched several; else one rank
    if not world.main and not args.verbose:
        warnings.simplefilter("ignore")  # rank 0 shows them; the data and config are the same on every rank
    try:
        config = world.agree(lambda: load_config(args.config, args.overrides))  # a bad config: one message
        finetune(config, resume=args.resume)
        distributed.stop(wait=True)  # every rank finished: leave together
    finally:
        distributed.stop()
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from .recipes import distill

    distill(args.run, args.overrides, resume=args.resume)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import describe_evaluation, evaluate_run

    report = evaluate_run(
        args.run, data=args.data, split=args.split, modes=_csv(args.modes), out_dir=args.out,
        device=args.device, limit=args.limit, texts=dict(split_pair(t) for t in args.text or []),
        metrics=_csv(args.metrics), student=not args.no_student, tolerance=args.nsd_tolerance, units=args.units,
        cleanup=_cleanup(args.cleanup), overwrite=args.overwrite, student_tta=args.student_tta,
    )
    print(report.table())
    print(describe_evaluation(report.settings))
    return 0


def split_pair(
    value: str, option: str = "--text", example: str = "TEXT=CLASS, e.g. 'LV cavity=left ventricle'"
) -> tuple[str, str]:
    """``'A=B'`` -> ``('A', 'B')``, split at the last ``=`` so the left side may contain one."""
    left, sep, right = value.rpartition("=")
    if not sep or not left.strip() or not right.strip():
        raise MedAdaptError(f"{option} takes {example}; got {value!r}")
    return left.strip(), right.strip()


def _adapter_backbone(adapter: str | None) -> str | None:
    """The backbone an adapter (a run folder, its adapter/ folder or file) was trained on; None when there is
    no readable adapter there (loading it then says why)."""
    if not adapter:
        return None
    from .adapters import read_adapter_info
    from .inference.predictor import adapter_path

    try:
        name = read_adapter_info(adapter_path(adapter)).get("backbone")
    except MedAdaptError:
        return None
    return name if isinstance(name, str) else None


def _csv(value: str) -> list[str]:
    """``'dice, hd95'`` -> ``['dice', 'hd95']`` (empty items dropped; the library checks the names)."""
    return [v.strip() for v in value.split(",") if v.strip()]


def _cleanup(value: str | None) -> list[str] | None:
    """``--cleanup largest,holes`` -> ``['largest', 'holes']`` (the library names what it does not know)."""
    return None if value is None else _csv(value)


def _coordinate(value: str) -> float:
    """A --point coordinate (Z, X or Y) as a number, or an error that says what --point takes."""
    try:
        return float(value)
    except ValueError:
        raise MedAdaptError(f"--point takes numbers: [Z] X Y LABEL, e.g. --point 120 88 1; got {value!r}") from None


def _label(value: str) -> int:
    if value not in ("0", "1"):
        raise MedAdaptError(f"point label must be 1 (foreground) or 0 (background); got {value!r}")
    return int(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="medadapt", description="Adapt SAM-family models to medical segmentation.")
    verbose_help = ("show third-party warnings (silenced by default) and, for an error, its full text and "
                    "traceback instead of one line")
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    # also accepted after the subcommand; SUPPRESS keeps a subcommand without it from resetting the flag
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", parents=[common],
                       help="list backbones, their input size and where their weights come from")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("predict", parents=[common], help="segment one image from box / point prompts")
    p.add_argument("image", help="PNG/JPEG/TIFF/NPY/DICOM image; a NIfTI volume or DICOM series folder (with "
                   "--slice K for one slice; with Z-prompts or --adapter alone for the whole volume)")
    p.add_argument("--box", nargs="+", type=float, action="append", metavar="[Z] X0 Y0 X1 Y1",
                   help="box in pixel coordinates of the image; repeat for several objects. On a volume, "
                        "Z X0 Y0 X1 Y1 boxes slice Z and the object is propagated through the volume (repeat "
                        "on other slices of the same object)")
    p.add_argument("--point", nargs="+", action="append", metavar="[Z] X Y LABEL",
                   help="click at (X, Y); LABEL 1 = foreground, 0 = background; repeatable. On a volume: "
                        "Z X Y LABEL")
    p.add_argument("--out", required=True, help="output mask: .png, .nii or .nii.gz; .dcm (DICOM-SEG) for a DICOM "
                   "series")
    p.add_argument("--overlay", default=None, help="also write an overlay PNG here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out / --overlay if they exist (the input image is never replaced)")
    p.add_argument("--model", default=None, help="backbone name (see `medadapt models`; default: the one the "
                   "--adapter was trained on, else litemedsam)")
    p.add_argument("--checkpoint", default=None, help="local weights for backbones that need them")
    p.add_argument("--slice", type=int, default=None, help="slice index for a 3D volume")
    p.add_argument("--axis", type=int, default=2, help="axis to slice a volume along (default 2)")
    p.add_argument("--window", default=None, help="CT window: a preset (e.g. abdomen, lung, bone) or LEVEL,WIDTH in HU (e.g. 40,400)")
    p.add_argument("--multimask", action="store_true", help="take the best of three candidate masks per prompt")
    p.add_argument("--adapter", default=None, metavar="RUN",
                   help="run folder or adapter file from `medadapt finetune`; with no prompt, segments every "
                        "learned class")
    p.add_argument("--refine", action="store_true",
                   help="with --adapter and no prompt: re-prompt each class with a box around its own largest "
                        "component (self-prompting; no ground truth needed)")
    p.add_argument("--cleanup", default=None, metavar="LIST",
                   help="a volume in automatic mode, comma-separated: largest (each class keeps its largest 3-D "
                        "component), holes (holes filled slice by slice); see docs/volumes.md")
    p.add_argument("--text", action="append", default=None, metavar="NAME",
                   help="segment a named structure: with --adapter of a model trained with learned text "
                        "prompts, or zero-shot with --clip; repeat for several")
    p.add_argument("--clip", default=None, metavar="NAME_OR_PATH",
                   help="CLIP model for --text, read offline: hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-"
                        "vit_base_patch16_224 from the Hugging Face cache, a model folder, or an open_clip name")
    p.add_argument("--clip-weights", default=None, metavar="FILE",
                   help="weights file when --clip is an open_clip architecture name")
    p.add_argument("--text-encoder", default=None, metavar="FOLDER",
                   help="with --adapter and --text: the folder of the text encoder the adapter's learned text "
                        "prompts were trained with, when it is not where the adapter recorded it (another machine)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("segment", parents=[common], help="segment every image of a folder, dataset or list",
                       description="Batch inference: one mask per input in OUT, in the input's format and geometry, "
                                   "a manifest of every file, resumable (see docs/batch.md).")
    p.add_argument("inputs", metavar="IN", help="a folder (searched recursively; a folder of DICOM files is one "
                   "series), a dataset (imagesTr/... or images/ + masks/), or a .txt list of files")
    p.add_argument("out", metavar="OUT", help="output folder (not IN); holds manifest.csv and segment.json")
    p.add_argument("--adapter", default=None, metavar="RUN",
                   help="run folder or adapter file from `medadapt finetune`: without --prompts, segments every "
                        "learned class")
    p.add_argument("--prompts", default=None, metavar="JSON",
                   help='JSON mapping each input (relative to IN) to {"boxes": [[x0, y0, x1, y1]], "points": '
                        '[[x, y]], "point_labels": [1]}; volumes {"slices": {"K": {...}}}')
    p.add_argument("--model", default=None, help="backbone name (see `medadapt models`; default: the one the "
                   "--adapter was trained on, else litemedsam)")
    p.add_argument("--checkpoint", default=None, help="local weights for backbones that need them")
    p.add_argument("--axis", type=int, default=2, help="axis volumes are segmented along, slice by slice (default 2)")
    p.add_argument("--series-format", choices=["nifti", "dicom-seg"], default="nifti",
                   help="what a DICOM series' mask is written as: NAME.nii.gz (default) or NAME.seg.dcm, a "
                        "DICOM-SEG on the series' images (needs highdicom: pip install medadapt[dicom-seg])")
    p.add_argument("--window", default=None, help="CT window: a preset (e.g. abdomen, lung, bone) or LEVEL,WIDTH in HU (e.g. 40,400)")
    p.add_argument("--refine", action="store_true", help="automatic mode: self-prompt each class (see predict)")
    p.add_argument("--cleanup", default=None, metavar="LIST",
                   help="automatic mode, comma-separated: largest (each class keeps its largest component, 3-D in a "
                        "volume), holes (holes filled slice by slice); see docs/volumes.md")
    p.add_argument("--multimask", action="store_true", help="take the best of three candidate masks per prompt")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes that read ahead (default min(2, CPUs); 0 reads in the main process)")
    p.add_argument("--retry-failed", action="store_true", help="retry the files the manifest records as failed")
    p.add_argument("--overwrite", action="store_true", help="redo every file, replacing earlier outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available; "
                   "cuda:LOCAL_RANK under torchrun)")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("finetune", parents=[common], help="fine-tune an adapted backbone from a YAML config")
    p.add_argument("config", help="YAML recipe, e.g. configs/acdc/3labeled.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5 data.labeled=labeled_7")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its last checkpoint (on any number of torchrun ranks)")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("distill", parents=[common], help="distil a fine-tuned run into a specialist student",
                       description="Label the run's unlabelled cases with its adapted model and train a MONAI "
                                   "student on them (RUN/student/); predict, segment and evaluate then answer "
                                   "automatic mode with the student. Settings: the distill: section of the run's "
                                   "config.yaml (see docs/distill.md).")
    p.add_argument("run", help="run folder written by `medadapt finetune`")
    p.add_argument("overrides", nargs="*", help="distill.KEY=VALUE overrides, e.g. distill.iterations=3000")
    p.add_argument("--resume", action="store_true", help="continue an interrupted distillation from its last state")
    p.set_defaults(func=_cmd_distill)

    p = sub.add_parser("evaluate", parents=[common],
                       help="Dice, HD95 and surface Dice per case and class, automatic and prompted",
                       description="Score a fine-tuned run per case and class; writes evaluation.json/.csv.")
    p.add_argument("run", help="run folder or adapter file written by `medadapt finetune`")
    p.add_argument("--data", default=None, metavar="FOLDER_OR_YAML",
                   help="score other data than the run's own data config (the default). A dataset FOLDER "
                        "(e.g. a held-out folder of images/ + masks/) is read with the run's data settings "
                        "(classes, layout, window) and its split lists; use --split all to score every "
                        "labelled case in it. A data YAML (a config's data: section, or a whole config) "
                        "describes another dataset completely; its classes must be the adapter's, in order")
    p.add_argument("--split", default="val",
                   help="val, test or all (default val): the cases the data config lists under data.val / "
                        "data.test, or every case; --split test scores a held-out test split")
    p.add_argument("--metrics", default="dice,hd95,nsd", metavar="LIST",
                   help="comma-separated: dice, hd95, nsd (normalised surface Dice; default all three); 'dice' "
                        "skips the surface metrics, which take seconds per large volume")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, metavar="D",
                   help="surface Dice tolerance, in the report's unit (mm or pixels; default 2)")
    p.add_argument("--units", default="auto", choices=("auto", "mm", "px"),
                   help="HD95 and the NSD tolerance in mm (volumes with a spacing) or pixels; auto (default): mm "
                        "when every case is a volume file, else pixels. ACDC stores no real in-plane spacing: "
                        "use px there")
    p.add_argument("--modes", default="automatic,self-prompted,box,1-click",
                   help="comma-separated: automatic, self-prompted (automatic refined by boxes from itself), "
                        "box, 1-click (default: all)")
    p.add_argument("--out", default=None, help="folder for evaluation.json/.csv (default: RUN/eval_SPLIT)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N cases (N >= 1)")
    p.add_argument("--text", action="append", default=None, metavar="TEXT=CLASS",
                   help="also score a learned text prompt against the class it names, e.g. 'LV cavity=left "
                        "ventricle'; repeatable")
    p.add_argument("--device", default=None)
    p.add_argument("--cleanup", default=None, metavar="LIST",
                   help="clean up the automatic and self-prompted label maps before scoring, comma-separated: "
                        "largest (each class keeps its largest 3-D component), holes (holes filled slice by slice)")
    p.add_argument("--no-student", action="store_true",
                   help="score the adapted decoder in automatic mode even when the run holds a distilled student")
    p.add_argument("--student-tta", default=None, choices=["none", "flip", "dihedral"],
                   help="the student's test-time augmentation: none, flip (the mirrored slice) or dihedral (all 8 "
                        "flips and quarter turns); default: the one the student was saved with")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an evaluation in the output folder made with other settings (refused without it)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("export", parents=[common],
                       help="write a backbone or a run as ONNX graphs, checked against PyTorch",
                       description="Export the image encoder and the prompt encoder + mask decoder (and the class "
                                   "decoder of an adapted model) as ONNX, LoRA merged; run them with "
                                   "Segmenter.from_pretrained(OUT, runtime='onnxruntime') (see docs/export.md).")
    p.add_argument("source", metavar="MODEL_OR_RUN", help="backbone name (see `medadapt models`) or a run folder / "
                   "adapter written by `medadapt finetune`")
    p.add_argument("--out", required=True, help="folder to write (new, empty, or an earlier export with --overwrite)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    p.add_argument("--checkpoint", default=None, help="local weights for backbones that need them")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest difference from PyTorch the check accepts (default 1e-3)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("annotate", parents=[common], help="segment images in a local web page and save the masks",
                       description="Serve a local annotation page: click, box and scribble prompts, masks redrawn "
                                   "after each, Accept saves a label map (see docs/annotate.md).")
    p.add_argument("data", metavar="DATA", help="a folder of 2-D images, a NIfTI volume, a DICOM series folder, or "
                   "a dataset (imagesTr/ + labelsTr/, images/ + masks/)")
    p.add_argument("--adapter", default=None, metavar="RUN",
                   help="run folder from `medadapt finetune`: its classes, each slice opened with their proposal")
    p.add_argument("--model", default=None, help="backbone name (see `medadapt models`; default: the one the "
                   "--adapter was trained on, else litemedsam)")
    p.add_argument("--checkpoint", default=None, help="local weights for backbones that need them")
    p.add_argument("--labels", default=None, metavar="DIR", help="folder for the label files and the session file "
                   "(default: DATA/labels/, or the dataset's own label folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--axis", type=int, default=2, help="axis to slice volumes along (default 2)")
    p.add_argument("--window", default=None, help="CT window for what the model sees: a preset (e.g. abdomen) or LEVEL,WIDTH in HU")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--learn", action=argparse.BooleanOptionalAction, default=True,
                   help="train the model online from every accepted mask (default; --no-learn serves it as loaded)")
    p.add_argument("--local", action=argparse.BooleanOptionalAction, default=False,
                   help="a click changes the mask only near it (--no-local: the whole object is decoded again)")
    p.add_argument("--online", nargs="+", default=None, metavar="KEY=VALUE",
                   help="online learner settings (OnlineConfig fields, values as YAML), e.g. proposal_clicks=6 "
                        "(see docs/annotate.md)")
    p.set_defaults(func=_cmd_annotate)

    p = sub.add_parser("demo", parents=[common],
                       help="box-prompted segmentation and few-label fine-tuning on bundled real images")
    p.add_argument("--out", default="medadapt-demo", help="folder for overlays and the run (default ./medadapt-demo)")
    p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs (default 20)")
    p.add_argument("--no-finetune", action="store_true", help="only the box-prompted part")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medadapt`` command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow an option (`finetune RECIPE --resume train.epochs=8`): argparse stops
    # filling the overrides at the first option, so what it left over joins them
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "model", "") is None:
        args.model = _adapter_backbone(getattr(args, "adapter", None)) or "litemedsam"
    if args.verbose:
        # in front of every filter, including the ones medadapt adds for known-harmless warnings
        warnings.simplefilter("default")
    try:
        return int(args.func(args) or 0)
    except MedAdaptError as exc:
        if getattr(exc, "reported", False):  # a rank other than 0, whose error rank 0 has printed
            return 2
        if args.verbose:
            traceback.print_exception(exc, file=sys.stderr)
        print(f"medadapt: error: {_error_text(exc, args.verbose)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medadapt: interrupted", file=sys.stderr)
        return 130


def _error_text(exc: MedAdaptError, verbose: bool) -> str:
    """The message, or by default only its first line (a wrapped YAML/library error can span several),
    without the terminal escape codes some libraries put in theirs (torch bolds part of its pickle refusal)."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(exc)).strip()
    first, _, rest = text.partition("\n")
    if verbose or not rest.strip():
        return text
    return f"{first.rstrip()} [...] (medadapt --verbose shows the full message)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
