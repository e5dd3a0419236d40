"""Training on two ranks (``torchrun``, gloo, CPU): the weights one process reaches with the whole batch, and a
killed two-rank run that resumes, on two ranks or on one.

Each rank runs its share of every global batch; the random stream is drawn for the whole batch on every rank.
So 2 ranks x batch b train as 1 process x batch 2b, up to float rounding: the ranks sum the gradient in
another order, and the decoder's matrix products round differently on fewer rows. After the runs below
(float32, CPU) no weight differs by more than ``TOLERANCE``; the learning rate is 1e-3, so Adam moves a
weight by about 1e-3 a step. Every rank compares its weights, optimiser, generators and EMA teacher with
rank 0's each epoch and stops the run if any differ, so a run that finishes had them identical.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_ssl import _discs

from medadapt.recipes import config_from_dict, finetune

TOLERANCE = 1e-4  # largest |difference| of any trained weight or teacher weight, 2 ranks against 1
SSL = {"threshold": 0.3, "cutmix": 1.0, "copy_paste": 0.5, "adaptive_threshold": True, "geometric": 0.5,
       "refine": "replace", "refine_decoder": "pretrained", "rampup_epochs": 0, "stream": True, "stream_cases": 3}


def _raw(data: Path, out: Path, name: str, batch: int, *, unlabeled_batch: int | None = None, epochs: int = 2,
         adapter: dict | None = None) -> dict:
    raw = {
        "backbone": "tiny_sam_vit",
        "data": {"root": str(data), "layout": "folder", "classes": [1], "labeled": [str(i) for i in range(5)],
                 "val": ["5"], "unlabeled": [str(i) for i in range(6, 14)]},
        "prompts": {"automatic": True, "prompted": ["box", "points"], "corrective_clicks": 1},
        "train": {"batch_size": batch, "epochs": epochs, "lr": 1e-3, "amp": "off", "device": "cpu",
                  "tensorboard": False},
        "output": str(out), "name": name,
    }
    if adapter is not None:
        raw["adapter"] = adapter
    if unlabeled_batch is not None:  # streamed unlabelled cases, embeddings cached on disk
        raw["ssl"] = {**SSL, "unlabeled_batch_size": unlabeled_batch}
        raw["train"]["cache_dir"] = str(out / f"cache_{name}")
    return raw


def _torchrun(raw: dict, folder: Path, *args: str, wait: bool = True) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node 2 -m medadapt finetune CONFIG``, one thread per rank; with
    ``wait``, checked to succeed (and killed, ranks included, if it runs past a few minutes)."""
    cfg = folder / f"{raw['name']}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "medadapt", "finetune", str(cfg), *args]
    err = folder / f"{raw['name']}.err"
    with open(err, "w") as fh:
        proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=fh)
    if wait:
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            kill_all(proc)
        assert proc.returncode == 0, err.read_text()[-3000:]
    return proc


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process under it (torchrun starts each rank in a session of its own)."""
    def children(pid: int) -> list[int]:
        try:
            found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return []
        return [c for p in map(int, found) for c in [p, *children(p)]]

    if proc.poll() is not None:  # ended (its ranks end before it): nothing to kill
        return
    for pid in [*children(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def kill_at_a_random_step(proc: subprocess.Popen, run: Path, rng: random.Random, timeout: float = 240) -> None:
    """SIGKILL ``proc`` and its processes at a random moment of the epoch after the second checkpoint (one
    epoch's time, measured between the first two checkpoints, drawn uniformly), and check the run had not ended."""
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.time() + timeout
    stamps: list[float] = []
    while len(stamps) < 2 and time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and (not stamps or ckpt.stat().st_mtime_ns != stamps[-1]):
            stamps.append(ckpt.stat().st_mtime_ns)
        time.sleep(0.01)
    if len(stamps) < 2:
        kill_all(proc)
        raise AssertionError("no second checkpoint before the run ended")
    time.sleep(rng.uniform(0, (stamps[1] - stamps[0]) / 1e9))
    kill_all(proc)
    assert not (run / "metrics.json").exists(), "the run ended before the kill"


def _rows(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def _state(run: Path) -> dict[str, torch.Tensor]:
    """The trained weights and the EMA teacher's, from the run's checkpoint."""
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    out = dict(state["trainable"])
    teacher = state.get("extensions", {}).get("ssl", {}).get("teacher", {})
    out.update({f"teacher.{k}": v for k, v in teacher.items()})
    return out


def _largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _same_log(a: list[dict], b: list[dict], places: float = 2e-5) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert abs(float(ra[k]) - float(rb[k])) <= places, (k, ra, rb)


@pytest.fixture(autouse=True)
def one_thread():
    """The runs in this process on one thread, as each rank runs (two threads beside two ranks on two cores
    spin-wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _discs(tmp_path_factory.mktemp("discs"), 14)


@pytest.fixture(scope="module")
def two_rank_ssl(data, tmp_path_factory):
    """A streamed semi-supervised run on 2 ranks, 1 labelled and 1 unlabelled slice per rank per step."""
    out = tmp_path_factory.mktemp("ssl")
    raw = _raw(data, out, "two", 1, unlabeled_batch=1, epochs=5)
    _torchrun(raw, out)
    return out / "two", raw


def test_two_ranks_fine_tune_as_one_process_with_the_whole_batch(data, tmp_path):
    """Supervised, the encoder running (LoRA, augmentation) with simulated prompts and corrective clicks: 2 ranks x
    2 slices against 1 process x 4. The last step of each epoch has 1 slice, so rank 1 has no row of it."""
    lora = {"lora": {"rank": 2}}
    one = finetune(config_from_dict(_raw(data, tmp_path, "one", 4, adapter=lora)), log=lambda m: None)
    _torchrun(_raw(data, tmp_path, "two", 2, adapter=lora), tmp_path)
    two = tmp_path / "two"
    assert _largest_difference(_state(one), _state(two)) <= TOLERANCE
    _same_log(_rows(one), _rows(two))
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_two_ranks_train_a_semi_supervised_run_as_one_process(data, tmp_path, two_rank_ssl):
    """Streamed unlabelled cases (each rank reads its share of each chunk), CutMix, copy-paste, turned views,
    adaptive thresholds, refinement, the feature stream and the EMA teacher: 2 ranks x (1 labelled, 1 unlabelled)
    against 1 process x (2, 2), over 15 steps."""
    two, raw = two_rank_ssl
    one = finetune(config_from_dict(_raw(Path(raw["data"]["root"]), tmp_path, "one", 2, unlabeled_batch=2,
                                         epochs=5)), log=lambda m: None)
    assert _largest_difference(_state(one), _state(two)) <= TOLERANCE
    _same_log(_rows(one), _rows(two))


def test_a_killed_two_rank_run_resumes_to_the_same_end_on_two_ranks_or_continues_on_one(tmp_path, two_rank_ssl):
    """SIGKILLed at a random step after its second checkpoint and resumed on 2 ranks, the run ends with the weights
    and log of the run never killed; resumed on 1 rank instead (the same 2 labelled slices per step), it continues
    to the last epoch."""
    reference, raw = two_rank_ssl
    raw = {**raw, "output": str(tmp_path), "name": "killed"}
    raw["train"] = {**raw["train"], "cache_dir": str(tmp_path / "cache")}
    run = tmp_path / "killed"
    kill_at_a_random_step(_torchrun(raw, tmp_path, wait=False), run, random.Random())
    shutil.copytree(run, tmp_path / "kept")
    kept_rows = len(_rows(tmp_path / "kept"))

    _torchrun(raw, tmp_path, "--resume")
    assert _rows(run) == _rows(reference)
    a, b = _state(reference), _state(run)
    assert all(torch.equal(a[k], b[k]) for k in a)

    run.rename(tmp_path / "resumed_on_two")
    (tmp_path / "kept").rename(run)
    cfg = config_from_dict({**raw, "train": {**raw["train"], "batch_size": 2}})
    finetune(cfg, resume=True, log=lambda m: None)
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5] and 2 <= kept_rows < 5
    assert rows[:2] == _rows(reference)[:2]  # the epochs before the kill are kept
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 5


SLOW_DISTILLATION = """
import sys, time
import medadapt.recipes as recipes
import medadapt.training.distributed as distributed
distributed.start.__defaults__ = (0.2,)  # the ranks' timeout: 12 s instead of an hour
real = recipes.distill_run
def slow(*args, **kwargs):  # a distillation that outlasts the timeout, as a real one outlasts the hour
    time.sleep(20)
    return real(*args, **kwargs)
recipes.distill_run = slow
from medadapt.cli import main
sys.exit(main())
"""


def test_a_distillation_longer_than_the_ranks_timeout_finishes_on_rank_0(data, tmp_path):
    """Fine-tuning on 2 ranks with a ``distill:`` section: the student is one process on rank 0. The other
    ranks must not wait for it at a barrier, where they would time out and torchrun would stop rank 0."""
    raw = _raw(data, tmp_path, "distilled", 2, epochs=1)
    raw["distill"] = {"student": {"channels": [4, 8, 16], "size": 64, "res_units": 1}, "iterations": 4,
                      "val_every": 2, "batch_size": 2, "unlabeled_batch_size": 2, "tta": False}
    (tmp_path / "run.py").write_text(SLOW_DISTILLATION)
    (tmp_path / "distilled.yaml").write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(tmp_path / "run.py"), "finetune", str(tmp_path / "distilled.yaml")]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "distilled" / "student" / "student.json").is_file()


def test_an_error_on_every_rank_is_printed_once(data, tmp_path):
    """Data that fails its checks fails on both ranks before anything is written; rank 0 prints it, once."""
    raw = _raw(data, tmp_path, "bad", 2)
    raw["data"]["labeled"] = ["no_such_case"]
    proc = _torchrun(raw, tmp_path, wait=False)
    try:
        proc.wait(timeout=240)
    finally:
        kill_all(proc)  # only if it hung
    lines = [ln for ln in (tmp_path / "bad.err").read_text().splitlines() if ln.startswith("medadapt: error:")]
    assert proc.returncode != 0 and len(lines) == 1 and "no_such_case" in lines[0], lines
    assert not (tmp_path / "bad").exists()


def _primitives(rank: int, port: int) -> None:
    """One of two ranks checking the distributed helpers on hand-made tensors (run by the test below)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from medadapt.core.errors import MedAdaptError
    from medadapt.training import distributed

    world = distributed.start()
    try:
        assert (world.rank, world.size, world.main) == (rank, 2, rank == 0)
        # a batch of 3 rows: rank 0 computes row 0, rank 1 rows 1-2; every rank gets all three, and the gradient
        # of its own rows, times 2 (DistributedDataParallel halves it again when it averages over the ranks)
        x = torch.arange(12.0).reshape(3, 4).requires_grad_()
        part = world.split(3)
        assert part.counts == [1, 2] and (part.start, part.stop) == ((0, 1) if rank == 0 else (1, 3))
        y = part.gather(part.take(x) * 3.0)
        assert torch.equal(y, x.detach() * 3.0)
        weights = torch.arange(3.0)[:, None].expand(3, 4)
        (y * weights).sum().backward()
        own = torch.zeros(3, 1)
        own[part.start : part.stop] = 1.0
        assert torch.equal(x.grad, 2 * 3.0 * weights * own)
        # a batch of 1 row: rank 0 has none, computes row 0 anyway, drops it, and its gradient is zero
        x = torch.ones(1, 2, requires_grad=True)
        part = world.split(1)
        y = part.gather(part.take(x) * torch.tensor([[2.0, 5.0]]) * (rank + 1))
        assert torch.equal(y, torch.tensor([[4.0, 10.0]]))  # rank 1's row
        y.sum().backward()
        assert torch.equal(x.grad, torch.zeros(1, 2) if rank == 0 else torch.tensor([[8.0, 20.0]]))
        # rows held by the rank that read them, put in order (rank 0 holds none of the second batch)
        for owners in ([1, 0, 1], [1, 1]):
            rows = [i for i, o in enumerate(owners) if o == rank]
            local = torch.tensor([[float(i)] for i in rows]) if rows else None
            whole = world.assemble(local, owners, torch.device("cpu"))
            assert torch.equal(whole, torch.arange(len(owners), dtype=torch.float32)[:, None])
        assert float(world.all_reduce_sum(torch.tensor(rank + 1.0))) == 3.0
        assert world.broadcast_object({"from": rank}) == {"from": 0}
        # an error on one rank is raised on both, said once: by rank 0, naming the rank it came from
        def fail_on_one():
            if rank == 1:
                raise MedAdaptError("the data folder is missing")
            return "fine"
        try:
            world.agree(fail_on_one)
            raise AssertionError("agree did not raise")
        except MedAdaptError as exc:
            assert str(exc) == "rank 1: the data folder is missing" if rank == 0 else getattr(exc, "reported", False)
        # the same state passes; a weight that differs on one rank stops the run, named
        world.check_same({"w": torch.ones(3), "rng": "state"}, "training state")
        try:
            world.check_same({"w": torch.ones(3) + rank * 1e-7, "rng": "state"}, "training state")
            raise AssertionError("check_same did not raise")
        except MedAdaptError as exc:
            assert "rank 1 holds another training state than rank 0 (w)" in str(exc)
            assert getattr(exc, "reported", False) == (rank == 1)
    finally:
        distributed.stop()


def test_the_helpers_gather_rows_and_gradients_and_stop_every_rank_on_one_error():
    """The pieces the runs above rely on, on two processes: gathering rows with their gradients (a rank without
    rows included), rows held by other ranks, an error on one rank raised on all, and ranks that diverge."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.start_processes(_primitives, args=(port,), nprocs=2, join=False, start_method="spawn")
    deadline = time.time() + 120
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError("the two ranks did not finish")
