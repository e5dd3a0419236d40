"""Shared helpers for benchmark scripts: where data lives, machine facts, writing results.

Results go to ``benchmarks/results/<dataset>/<experiment>/``: one ``summary.md`` (what was measured, the
table, the machine, the command), one ``results.json`` (the same figures, machine-readable) and the
experiment's logs and pictures.

Benchmarks read the real data in ``../shared/data`` (or ``$MEDADAPT_DATA``);
they are not tests and a user's clone may not have that folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from medadapt.core.files import atomic_write, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def data_root(arg: str | None = None) -> Path:
    """The shared data folder: ``--data-root``, else ``$MEDADAPT_DATA``, else ``../shared/data``."""
    root = Path(arg or os.environ.get("MEDADAPT_DATA") or REPO.parent / "shared" / "data")
    if not root.is_dir():
        raise SystemExit(f"data folder not found: {root} (pass --data-root or set MEDADAPT_DATA)")
    return root


def hc18_images(data_root_arg: str | None, exams: str) -> tuple[Path, list[Path]]:
    """HC18's folder and its images whose exam number lies in ``exams`` ("100-129", inclusive)."""
    lo, hi = (int(v) for v in exams.split("-"))
    root = data_root(data_root_arg) / "hc18"
    return root, sorted(p for p in (root / "images").glob("*.png") if lo <= int(p.name.split("_")[0]) <= hi)


def add_run_arguments(ap, exams: str = "100-129") -> None:
    """The arguments of the scripts that look at one HC18 run: RUN, --data-root, --exams."""
    ap.add_argument("run")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--exams", default=exams, help="exam number range, inclusive")


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": _dt.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        info["commit"] = "unknown"
    try:  # the code that ran is not the commit alone (the reports under benchmarks/results do not count)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal", "--", "medadapt",
                                  "benchmarks", ":(exclude)benchmarks/results"],
                                 cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        if changed:
            info["commit"] += " with uncommitted changes to medadapt/ or benchmarks/"
    except Exception:
        pass
    return info


def result_name(name: str, kind: str) -> tuple[str, str]:
    """The default ``(dataset, experiment)`` of a run name: ``acdc_3labeled_lora`` -> ``("acdc", "KIND_3labeled_lora")``.

    The first ``_``-separated part of a run name is its dataset (``acdc``, ``hc18``); the rest, after ``KIND_``,
    names the experiment. A name without ``_`` gives ``(name, KIND)``.
    """
    dataset, _, rest = name.partition("_")
    return dataset, f"{kind}_{rest}" if rest else kind


def parse_result(arg: str) -> tuple[str, str]:
    """``--result DATASET/EXPERIMENT`` as a tuple; anything else is a usage error."""
    parts = arg.strip("/").split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise SystemExit(f"--result must be DATASET/EXPERIMENT (e.g. acdc/finetune_3labeled), got {arg!r}")
    return parts[0], parts[1]


def result_dir(dataset: str, experiment: str) -> Path:
    """``benchmarks/results/DATASET/EXPERIMENT``: the folder of one experiment's summary, figures and logs."""
    return RESULTS / dataset / experiment


def pinned_torch() -> str | None:
    """The torch version ``constraints.txt`` at the repository root pins, if it pins one."""
    try:
        for line in (REPO / "constraints.txt").read_text().splitlines():
            name, sep, version = line.split("#", 1)[0].strip().partition("==")
            if sep and name.strip().lower() == "torch":
                return version.strip()
    except OSError:
        pass
    return None


def environment_line(torch_version: str) -> str:
    """Which lock file covers the environment a figure was measured in."""
    pinned = pinned_torch()
    if pinned and pinned.split("+")[0] == torch_version.split("+")[0]:
        return (f"Environment: `constraints.txt` at the repository root records the package versions of the "
                f"current environment (torch {pinned}).")
    lock = f"torch {pinned}" if pinned else "no torch pin"
    return (f"Environment: measured under torch {torch_version}; `constraints.txt` at the repository root "
            f"({lock}) does not cover that version.")


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a user would type it from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else Path("?")
    try:
        script_text = str(script.relative_to(REPO))
    except ValueError:
        script_text = argv[0] if argv else "?"
    return " ".join(["python", script_text, *(shlex.quote(a) for a in argv[1:])])


def write_result(dataset: str, experiment: str, payload: dict, markdown: str, *, title: str | None = None,
                 files: dict[str, str | os.PathLike] | None = None) -> Path:
    """Write ``results/DATASET/EXPERIMENT/results.json`` and ``summary.md`` atomically; return the summary's path.

    ``payload`` gets a ``machine`` block and the ``command``; ``markdown`` (what was measured, the table) gets a
    title and a closing section with the machine, date, torch version, command and environment. ``files``
    (``{"log_seed0.csv": RUN/log.csv, ...}``) are copied into the folder beside them.
    """
    folder = result_dir(dataset, experiment)
    info = machine()
    command = command_line()
    payload = {"machine": info, "command": command, **payload}
    hardware = f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads"
    if info.get("gpu"):
        hardware += f", GPU {info['gpu']}"
    md = (
        f"# {title or f'{dataset}/{experiment}'}\n\n{markdown.rstrip()}\n\n## Measured on\n\n"
        f"- Machine: {hardware}\n"
        f"- Date: {info['date']}; commit {info['commit']}\n"
        f"- torch {info['torch']}, Python {info['python']}\n"
        f"- Command: `{command}`\n"
        f"- {environment_line(info['torch'])}\n"
    )
    for name, src in (files or {}).items():
        atomic_write(folder / name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    atomic_write_text(folder / "results.json", json.dumps(payload, indent=2) + "\n")
    return atomic_write_text(folder / "summary.md", md)


def mode_summary(report, mode: str) -> dict:
    """One mode of an :class:`~medadapt.evaluation.report.EvaluationReport`: per-class and mean Dice, HD95, cases."""
    rows = [r for r in report.summary() if r["mode"] == mode]
    mean = next(r for r in rows if r["value"] is None)
    return {"per_class": {r["class"]: r["dice_mean"] for r in rows if r["value"] is not None},
            "mean": mean["dice_mean"], "hd95": mean["hd95_mean"], "cases": mean["n"]}


def cached_report(out: Path, run: Path, student: bool):
    """The evaluation kept in ``out`` when it still stands (None otherwise): for the student, only while the
    run's student is the one that made it (a later round's student is scored again)."""
    from medadapt.evaluation.report import EvaluationReport
    from medadapt.student import read_student_info

    if not (out / "evaluation.json").is_file():
        return None
    report = EvaluationReport.from_json(out / "evaluation.json")
    made_by = report.settings.get("student_weights")
    if student and made_by is not None and made_by != read_student_info(run).get("weights_sha256"):
        return None
    return report


def write_run_result(result: str | None, run: Path, kind: str, payload: dict, markdown: str) -> Path:
    """Write a run's result to ``--result DATASET/EXPERIMENT`` (default: the run's dataset, ``KIND_<rest of its
    name>``, a ``_sN`` seed suffix dropped), print it and where it went; returns the summary's path."""
    dataset, experiment = parse_result(result) if result else result_name(run.name.rsplit("_s", 1)[0], kind)
    path = write_result(dataset, experiment, payload, markdown)
    print(markdown)
    print(f"written to {path}")
    return path


def copy_for_distillation(run: Path, twin: Path) -> None:
    """Make ``twin`` a distillable copy of the distilled run ``run``: its config, adapter and foundation
    pseudo-labels (not its student), unless ``twin`` holds a config already (a resumed copy)."""
    if (twin / "config.yaml").is_file():
        return
    twin.mkdir(exist_ok=True)
    shutil.copyfile(run / "config.yaml", twin / "config.yaml")
    shutil.copytree(run / "adapter", twin / "adapter", dirs_exist_ok=True)
    shutil.copytree(run / "distill" / "pseudo", twin / "distill" / "pseudo", dirs_exist_ok=True)


def has_student(run: Path, settings, fix: str) -> bool:
    """Whether ``run`` holds a finished student; refuses (SystemExit) one made with other ``distill:``
    settings than ``settings`` (a :class:`~medadapt.ssl.distill.DistillConfig`; ``val_every`` may differ).
    ``fix`` ends the message: what to delete or pass instead."""
    from dataclasses import asdict

    from medadapt.ssl.distill import recorded_settings

    made = run / "student" / "student.json"
    if not made.is_file():
        return False
    want = json.loads(json.dumps(asdict(settings)))
    had = recorded_settings(json.loads(made.read_text()).get("distill"))
    if {**had, "val_every": None} != {**want, "val_every": None}:
        raise SystemExit(f"{run}/student was distilled with other settings than {fix}")
    return True


@contextlib.contextmanager
def timed_stage(path: Path, key: str, every: float = 30.0):
    """Add the wall time of the ``with`` block to ``key`` in the JSON file ``path`` (other keys kept), written
    every ``every`` seconds while it runs (once the stage has made ``path``'s folder), so a stage killed and
    resumed later counts the time it had run. The other keys are read on entry and written back each time:
    nothing else should write the file during the block."""
    times = json.loads(path.read_text()) if path.is_file() else {}
    before, t0 = times.get(key, 0.0), time.perf_counter()
    done = threading.Event()

    def write() -> None:
        atomic_write_text(path, json.dumps({**times, key: before + time.perf_counter() - t0}))

    def tick() -> None:  # not before the stage has made the folder (a run folder made early may be refused)
        while not done.wait(every):
            if path.parent.is_dir():
                write()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        if path.parent.is_dir():
            write()


def median_time(fn, repeats: int, warmup: int = 1, sync=None) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (``sync`` waits for a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
