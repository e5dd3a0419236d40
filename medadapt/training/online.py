"""Learning from the masks a user accepts, while the user keeps working.

An :class:`OnlineLearner` wraps the serving :class:`~medadapt.inference.Segmenter`
(built with ``precision=None``: a float32 model adapters can be applied to).
Each accepted mask goes, with the image embedding the segmenter already
computed, into an on-disk :class:`~medadapt.training.replay.ReplayBuffer`. A
private copy of the decoder side (prompt encoder, mask decoder, class tokens,
context and depth adapters; the image encoder is left out and never run)
trains on the cached embeddings with the trainer's losses: the automatic loss
on the learned class tokens, the prompted loss with simulated boxes/clicks and
corrective clicks, and (``proposal_clicks``) corrective clicks that start from
the class tokens' own proposal, which is how the app opens each image.
:meth:`OnlineLearner.publish` copies the trained weights into the serving
model; serving never waits for a training step.

A model with a depth adapter reads each slice with its neighbours: the app
hands over a volume slice's embedding with its neighbours'
(1 x S x C x h x w), so the depth adapter trains on what it reads when it
serves; a lone 2-D image stands in for its own neighbours.

The first accepted mask of a bare backbone gives it an adapter (mask decoder
trained, learned class tokens); a class name never seen before adds a class
and keeps the learned rows of the others. The checkpoint (``FOLDER/adapter``)
loads with ``Segmenter.from_pretrained(name, adapter=FOLDER/adapter)``; a
learner opened again on ``FOLDER`` resumes from it and the buffer.

Threads: ``torch.set_num_threads`` sets the calling thread's OpenMP team size
and the default that threads starting later take. The background worker sets
``worker_threads`` for itself (1 by default, so that on a small CPU the serving
thread keeps the rest), and :meth:`OnlineLearner.start` then puts the default
back, so that the serving thread and threads started later are unaffected.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..adapters import AdapterConfig, AutomaticConfig, apply, load_adapter, save_adapter
from ..adapters.apply import add_class_prompts
from ..adapters.io import CONFIG_NAME
from ..core.errors import MedAdaptError
from ..foundation import Backbone, ImageMeta
from ..inference.predictor import Segmenter
from .losses import automatic_loss
from .online_config import OnlineConfig
from .online_model import joined, new_class_tokens, training_copy
from .prompted import prompted_loss, proposal_loss
from .replay import ReplayBuffer, check_classes, check_label_map
from .samples import to_model_frame

TOKENS = ("class_prompts.tokens", "class_prompts.mask_tokens")
log = logging.getLogger("medadapt.online")


def _new_values(new: Sequence[str], taken: Sequence[int], wanted: dict[str, int] | None) -> list[int]:
    """Label values for classes ``new``: the ``wanted`` one where it is free, else the next value above all."""
    used, out = set(int(v) for v in taken), []
    for name in new:
        v = (wanted or {}).get(name)
        if v is None or v in used:
            v = max(used, default=0) + 1
        used.add(v)
        out.append(v)
    return out


class OnlineLearner:
    """Fine-tunes ``segmenter``'s decoder side from accepted masks kept in ``folder`` (see the module docstring).

    ``lock`` is held while published weights are copied into the serving model (milliseconds); a serving
    thread that must never decode with half-copied weights holds it around its decoding (and calls no method
    of the learner while it holds it: the learner takes its own training lock first, then ``lock``).
    ``version`` counts changes to the serving model (publications, new classes); ``steps`` training steps;
    ``last_batch`` the buffer indices of the last step's batch; ``error`` what stopped the background worker;
    ``save_error`` why its last save failed (it goes on training); :meth:`status` all of it for a page.
    ``pause``: a callable the background worker asks before each step; while it returns True (the user is
    working, e.g. :meth:`medadapt.app.session.Annotator.busy`) no step starts. ``training``: a background step
    is running now (a serving thread may then use fewer torch threads).
    """

    def __init__(self, segmenter: Segmenter, folder: str | Path, config: OnlineConfig | dict | None = None) -> None:
        if not isinstance(segmenter, Segmenter):
            raise MedAdaptError(f"OnlineLearner needs a medadapt Segmenter; got {type(segmenter).__name__}")
        backbone = segmenter.backbone
        if not isinstance(backbone, Backbone) or backbone.inference_only:
            raise MedAdaptError("the segmenter's model was optimised for inference and cannot be trained: build it "
                                "with Segmenter(build_backbone(name), precision=None)")
        if segmenter.student is not None:
            raise MedAdaptError("the segmenter answers with a distilled student, which does not learn online: "
                                "call segmenter.set_student(None) first")
        self.config = config if isinstance(config, OnlineConfig) else OnlineConfig.from_dict(config)
        self.segmenter, self.folder = segmenter, Path(folder)
        self.lock = threading.RLock()  # serving side: held while weights are copied into the serving model
        self._train = threading.RLock()  # the training copy, optimiser and every change to the serving model
        self._wake = threading.Condition()
        self._pending, self._busy = 0, False
        self._queued: list[str] = []  # keys of the samples the worker's next burst trains on (see sample_key)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.error: BaseException | None = None  # what stopped the background worker; stop() raises it
        self.save_error: str | None = None  # why the worker's last save failed (it goes on training), or None
        self.pause: Callable[[], bool] | None = None  # True while the serving side wants the CPU: no step starts
        self.training = False  # a background step is running now
        self.version = self.steps = 0
        self.last_batch: list[int] = []
        self.model: Backbone | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._trained: dict[str, nn.Parameter] = {}
        self._dirty = False
        self.buffer = ReplayBuffer(self.folder / "buffer")
        self.origin: dict[str, Any] | None = None  # the adapter a new folder started from, kept with the checkpoint
        self._trained_samples: set[str] = set()  # samples whose steps the worker ran (their sample_key)
        checkpoint = _recover(self.folder / "adapter")
        if (checkpoint / CONFIG_NAME).is_file():
            if backbone.adapter_config is not None:
                raise MedAdaptError(f"{self.folder} holds a checkpoint to resume, but the segmenter already has an "
                                    "adapter: give a segmenter of the bare backbone (Segmenter(build_backbone(name), "
                                    "precision=None)) and the learner loads the checkpoint onto it")
            with self.lock:
                load_adapter(backbone, checkpoint).eval()
            online = getattr(backbone, "adapter_metadata", {}).get("online", {})
            online = online if isinstance(online, dict) else {}
            self.steps = int(online.get("steps", 0))
            self.origin = online.get("origin") if isinstance(online.get("origin"), dict) else None
            trained = online.get("trained")
            if isinstance(trained, list):
                self._trained_samples = {str(k) for k in trained}
            else:  # a checkpoint from before samples were counted: every sample it had was trained
                self._trained_samples = {sample_key(r) for r in self.buffer.records}
        self.rng = np.random.default_rng([self.config.seed, self.steps])
        grid = tuple(backbone.prompt_encoder.image_embedding_size)
        for r in self.buffer.records:
            shape = tuple(r.get("embedding_shape", ()))
            if shape[-3:] != (backbone.embed_dim, *grid):
                raise MedAdaptError(f"the replay buffer in {self.folder} holds embeddings of shape "
                                    f"{r.get('embedding_shape')}, not those of {backbone.info.name}; give another folder")
            if len(shape) == 4 and backbone.depth_slices > 1 and shape[0] != backbone.depth_slices:
                raise MedAdaptError(f"the replay buffer in {self.folder} holds slices with {shape[0]} slices each; "
                                    f"this model's depth adapter reads {backbone.depth_slices}: give another folder")
        with self._train:  # the values the samples were labelled with, for classes no checkpoint holds yet
            values = {c: int(v) for r in self.buffer.records for c, v in zip(r["classes"], r.get("label_values") or ())}
            self._register([c for r in self.buffer.records for c in r["classes"]], values or None)

    # ------------------------------------------------------------------ classes
    @property
    def class_names(self) -> list[str]:
        """The classes the serving model proposes in automatic mode, in order."""
        return list(self.segmenter.classes)

    @property
    def label_values(self) -> list[int]:
        cfg = self.segmenter.backbone.adapter_config
        return list(cfg.automatic.label_values) if cfg is not None and cfg.automatic is not None else []

    def _register(self, names: Sequence[str], values: dict[str, int] | None = None) -> None:
        """Make sure the serving model and the training copy know ``names`` (adapter and classes as needed);
        ``values``: the label value a new class should carry, where free."""
        new = [n for n in dict.fromkeys(names) if n not in self.class_names]
        backbone = self.segmenter.backbone
        created = False
        if new and (backbone.adapter_config is None or backbone.adapter_config.automatic is None):
            auto = AutomaticConfig(list(new), _new_values(new, [], values), self.config.tokens_per_class)
            with self.lock:
                if backbone.adapter_config is None:
                    apply(backbone, AdapterConfig(train=["mask_decoder"], automatic=auto))
                else:
                    backbone.adapter_config.automatic = auto
                    add_class_prompts(backbone, backbone.adapter_config)
                backbone.eval()
                self.segmenter.forget_answers()
                self.version += 1
            created = True
        if backbone.adapter_config is None or backbone.adapter_config.automatic is None:
            return
        if self.model is None:
            self._copy_model()
        if new and not created:
            self._grow(new, values)

    def _copy_model(self) -> None:
        self.model = training_copy(self.segmenter.backbone, self._trains)
        self._build_optimizer()

    def _trains(self, name: str) -> bool:
        if name.startswith(("image_encoder.", "text_head.")):
            return False
        return self.config.train_classes or not name.startswith("class_prompts.")

    def _grow(self, new: list[str], values: dict[str, int] | None = None) -> None:
        """Add classes ``new`` to both models: old rows kept, new rows initialised as ``apply`` does."""
        serving = self.segmenter.backbone
        if serving.text_head is not None:
            raise MedAdaptError(f"this adapter has learned text prompts for {self.class_names}; it cannot learn new "
                                f"classes {new} online")
        auto = serving.adapter_config.automatic
        extra = new_class_tokens(self.model, len(new), auto.tokens_per_class, len(auto.class_names))
        grown = AutomaticConfig(auto.class_names + new, auto.label_values + _new_values(new, auto.label_values, values),
                                auto.tokens_per_class)
        self.model.class_prompts = joined(self.model.class_prompts, extra).requires_grad_(self.config.train_classes)
        self.model.adapter_config.automatic = copy.deepcopy(grown)
        with self.lock:
            serving.class_prompts = joined(serving.class_prompts, copy.deepcopy(extra)).requires_grad_(True)
            serving.adapter_config.automatic = grown
            self.segmenter.forget_answers()
            self.version += 1
        self._build_optimizer()

    def _build_optimizer(self) -> None:
        """AdamW over the training copy's trained parameters; Adam's state carries over for unchanged ones."""
        named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not named:
            raise MedAdaptError("nothing to train: the adapter trains no decoder-side part; use train_classes: true "
                                "or an adapter that trains the mask decoder")
        cfg = self.config
        others, tokens = [p for n, p in named.items() if n not in TOKENS], [p for n, p in named.items() if n in TOKENS]
        groups = ([{"params": others}] if others else []) + (
            [{"params": tokens, "lr": cfg.lr * cfg.token_lr_scale, "weight_decay": 0.0}] if tokens else [])
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if self.optimizer is not None:
            for n, p in named.items():
                old = self._trained.get(n)
                if old is not None and old.shape == p.shape and old in self.optimizer.state:
                    opt.state[p] = self.optimizer.state[old]
        self.optimizer, self._trained = opt, named

    # ------------------------------------------------------------------ samples
    def add(self, embedding: torch.Tensor, meta: ImageMeta, label_map: np.ndarray, classes: Sequence[str] | str,
            prompts: dict[str, Any] | None = None, image_id: str | None = None,
            label_values: Sequence[int] | None = None) -> int:
        """Hand over an accepted annotation; returns its index in the buffer (the newest).

        ``embedding``, ``meta``: the image's embedding and geometry (``Segmenter.embedding()``);
        ``label_map``: H x W (the original image size) with 0 background and value k for ``classes[k - 1]``
        (a bool mask with one class); a class listed but absent from the map is taught as absent.
        ``prompts``: what produced it, e.g. ``{"points": [[x, y], ...], "labels": [1, ...], "box": [...]}``
        (kept in the record). The same ``image_id`` again replaces the earlier sample. ``label_values``: the
        value each of ``classes`` has in the user's label files, given to a class the model learns here for the
        first time (so its automatic answers write the same values); by default new classes take the next free
        values.
        """
        names = check_classes(classes)
        values = None
        if label_values is not None:
            values = [int(v) for v in label_values]
            if len(values) != len(names) or any(v < 1 for v in values) or len(set(values)) != len(values):
                raise MedAdaptError(f"label_values must give one distinct value >= 1 for each of {names}; "
                                    f"got {list(label_values)}")
        if not isinstance(meta, ImageMeta):
            raise MedAdaptError(f"meta must be the ImageMeta of the embedding (Segmenter.embedding()[1]); "
                                f"got {type(meta).__name__}")
        label = check_label_map(label_map, len(names), tuple(meta.original_size))
        backbone = self.segmenter.backbone
        want = (1, backbone.embed_dim, *backbone.prompt_encoder.image_embedding_size)
        stack = (1, backbone.depth_slices, *want[1:])
        shape = tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else None
        if shape != want and not (backbone.depth_slices > 1 and shape == stack):
            raise MedAdaptError(f"embedding must be this model's 1 x C x h x w tensor {want} (Segmenter.embedding()"
                                f"[0]){f', or {stack} for a volume slice with its neighbours' if stack != want else ''}"
                                f"; got {shape if shape is not None else embedding!r}")
        if backbone.text_head is not None and set(names) - set(self.class_names):
            raise MedAdaptError(f"this adapter has learned text prompts for {self.class_names}; it cannot learn new "
                                f"classes {sorted(set(names) - set(self.class_names))} online")
        proc = backbone.processor
        target = to_model_frame(label, meta, proc.image_size, proc.mask_size)
        sample = self.buffer.prepare(embedding, target, names, prompts, image_id, values)  # a bad one creates nothing
        if self.model is None or set(names) - set(self.class_names):
            # a class the model does not know yet (or no training copy yet): registered before the sample is in
            # the buffer, so that a step never draws a sample of an unknown class; this waits for a running step,
            # once per new class. Otherwise the training lock is not taken: an accept never waits for a step.
            with self._train:
                self._register(names, None if values is None else dict(zip(names, values)))
        index, record = self.buffer.commit(sample)
        with self._wake:
            self._queued.append(sample_key(record))
            self._pending += 1
            self._wake.notify_all()
        return index

    # ------------------------------------------------------------------ training
    def step(self, n: int = 1) -> float:
        """Run ``n`` training steps now, in this thread; returns their mean loss. Publishes nothing."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MedAdaptError(f"step(n) needs a whole number of steps >= 1; got {n!r}")
        with self._train:
            if self.model is None or len(self.buffer) == 0:
                raise MedAdaptError("nothing to train on yet: add an accepted mask first (learner.add(...))")
            return float(np.mean([self._step() for _ in range(n)]))

    def _step(self) -> float:
        cfg, model = self.config, self.model
        idx = self.buffer.sample(cfg.batch_size, self.rng, newest=cfg.newest, replay=cfg.replay)
        samples = [self.buffer.get(i) for i in idx]
        device = model.device
        emb = torch.stack([decoder_input(s.embedding, model.depth_slices) for s in samples]).to(device, torch.float32)
        target = torch.stack([s.target for s in samples]).to(device)
        for part in (model.prompt_encoder, model.mask_decoder, model.class_prompts, model.context_adapter):
            if part is not None:
                part.train()
        total = torch.zeros((), device=device)
        low = None
        if cfg.train_classes:
            names = self.class_names
            low = model.decode_classes(emb, torch.arange(len(names), device=device)).float()
            groups: dict[tuple[int, ...], list[int]] = {}
            for b, s in enumerate(samples):  # each sample is scored on the classes it was annotated for
                groups.setdefault(tuple(names.index(c) for c in s.classes), []).append(b)
            for ids, rows in groups.items():
                part = low[torch.tensor(rows, device=device)][:, torch.tensor(ids, device=device)]
                total = total + automatic_loss(part, target[rows]) * (len(rows) / len(samples))
        if cfg.prompted:
            total = total + cfg.prompted_weight * prompted_loss(model, emb, target, cfg, self.rng)
        if cfg.proposal_clicks:
            total = total + cfg.proposal_weight * self._proposal_term(emb, target, samples, low)
        self.optimizer.zero_grad(set_to_none=True)
        if total.requires_grad:
            total.backward()
            self.optimizer.step()
        self.steps += 1
        self.last_batch = idx
        self._dirty = True
        return float(total.detach())

    def _proposal_term(self, emb: torch.Tensor, target: torch.Tensor, samples: list, low: torch.Tensor | None):
        """:func:`~medadapt.training.prompted.proposal_loss` for one annotated class per sample, starting from
        the class tokens' answer for it (``low``: this step's B x K class logits, when the automatic loss made
        them)."""
        names, rows, ids, masks = self.class_names, [], [], []
        for b, s in enumerate(samples):
            present = [int(v) for v in torch.unique(target[b]).tolist() if v > 0]
            if not present:
                continue
            k = present[int(self.rng.integers(len(present)))]
            rows.append(b)
            ids.append(names.index(s.classes[k - 1]))
            masks.append((target[b] == k).cpu().numpy())
        if not rows:
            return torch.zeros((), device=emb.device)
        if low is None:
            with torch.no_grad():
                low = self.model.decode_classes(emb, torch.arange(len(names), device=emb.device)).float()
        proposal = low[torch.tensor(rows), torch.tensor(ids)]
        return proposal_loss(self.model, emb[rows], proposal, np.stack(masks), self.config.proposal_clicks, self.rng)

    def publish(self) -> int:
        """Copy the trained weights into the serving model (under :attr:`lock`); returns the new ``version``."""
        with self._train:
            if self.model is None:
                return self.version
            serving = dict(self.segmenter.backbone.named_parameters())
            with self.lock, torch.no_grad():
                for name, p in self._trained.items():
                    serving[name].copy_(p)
                self.version += 1
                self.segmenter.forget_answers()
            self._dirty = False
            return self.version

    def save(self, path: str | Path | None = None) -> Path:
        """Publish what is new, then write the serving model's adapter to ``path`` (default ``FOLDER/adapter``),
        as ``medadapt finetune`` does; the folder is replaced whole, so a crash leaves the old or the new one."""
        final = Path(path) if path is not None else self.folder / "adapter"
        if final.exists() and not final.is_dir():
            raise MedAdaptError(f"{final} is a file; save() writes an adapter folder: give a folder path")
        with self._train:
            backbone = self.segmenter.backbone
            if backbone.adapter_config is None:
                raise MedAdaptError("nothing to save yet: the model has no adapter until a mask is accepted")
            if self._dirty:
                self.publish()
            records = self.buffer.records
            trained = [k for k in map(sample_key, records) if k in self._trained_samples]
            online = {"steps": self.steps, "samples": len(records), "version": self.version, "trained": trained}
            if self.origin is not None:
                online["origin"] = self.origin
            meta = {"class_names": self.class_names, "label_values": self.label_values, "online": online}
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.new.", dir=final.parent))
            try:
                save_adapter(backbone, tmp, metadata=meta)
                _swap(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    # ------------------------------------------------------------------ background worker
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def untrained(self) -> list[str]:
        """Keys (:func:`sample_key`) of the buffer's samples the background worker has not trained on yet:
        accepted while the user kept working and the app stopped, or before a crash or a failed save."""
        return [k for k in map(sample_key, self.buffer.records) if k not in self._trained_samples]

    def start(self) -> None:
        """Train in a background thread: ``steps_per_sample`` steps per sample not trained on yet (see
        :meth:`untrained`: also those of an earlier run of the app) and per sample added from now on, then publish
        (and save, with ``autosave``), then wait for more. Does nothing when already running."""
        if self.running:
            return
        self._stopping.clear()
        with self._wake:
            self._queued = self.untrained() if self.model is not None else []
            self._pending, self._busy = len(self._queued), False
        ready = threading.Event()
        before = torch.get_num_threads()
        self._thread = threading.Thread(target=self._work, args=(ready,), name="medadapt-online-learner", daemon=True)
        self._thread.start()
        ready.wait(timeout=30)
        if self.config.worker_threads:
            torch.set_num_threads(before)  # the default for threads started later, which the worker changed

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the worker after its current step (what it trained is published); re-raises its error, if any."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        thread.join(timeout)
        if thread.is_alive():
            raise MedAdaptError(f"the online learner's worker did not stop within {timeout} s")
        self._thread = None
        error, self.error = self.error, None
        if error is not None:
            raise MedAdaptError(f"the online learner's worker stopped on an error: {error}") from error

    def _autosave(self) -> None:
        """The worker's save after a burst: a failure (a full disk for a moment) is logged and kept in
        :attr:`save_error` for the page, and training goes on; the next burst or the app's stop saves again."""
        try:
            self.save()
        except Exception as exc:
            self.save_error = f"could not save the online learner's model to {self.folder / 'adapter'}: {exc}"
            log.warning("%s; training goes on", self.save_error)
        else:
            self.save_error = None

    def status(self) -> dict[str, Any]:
        """What the serving side shows about the learner: whether its worker runs, the error that stopped it
        (or that a save failed), its steps and samples."""
        error = self.error
        return {"running": self.running, "training": self.training, "steps": self.steps, "samples": len(self.buffer),
                "error": None if error is None else f"the online learner stopped on an error: "
                                                    f"{type(error).__name__}: {error}",
                "save_error": self.save_error}

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the worker has trained on every sample added (or stopped); False on timeout."""
        with self._wake:
            return self._wake.wait_for(lambda: (self._pending == 0 and not self._busy) or not self.running, timeout)

    def _work(self, ready: threading.Event) -> None:
        try:
            if self.config.worker_threads:
                torch.set_num_threads(self.config.worker_threads)
        finally:
            ready.set()
        try:
            while not self._stopping.is_set():
                with self._wake:
                    self._wake.wait_for(lambda: self._pending > 0 or self._stopping.is_set())
                    if self._stopping.is_set():
                        break
                    todo, self._pending, self._busy = self._pending * self.config.steps_per_sample, 0, True
                    keys, self._queued = self._queued, []
                for _ in range(todo):
                    while self.pause is not None and self.pause() and not self._stopping.is_set():
                        time.sleep(0.05)  # the user is working: the next step waits for a quiet moment
                    if self._stopping.is_set():
                        break
                    with self._train:
                        self.training = True
                        try:
                            self._step()
                        finally:
                            self.training = False
                else:  # every step of the burst ran: its samples are trained (a stop leaves them to the next start)
                    with self._train:
                        self._trained_samples.update(keys)
                self.publish()
                if self.config.autosave:
                    self._autosave()
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()
        except BaseException as exc:  # kept for stop() to raise; the serving side goes on with the last weights
            self.error = exc
            log.error("the online learner's worker stopped: %s: %s", type(exc).__name__, exc)
        finally:
            with self._wake:
                self._busy = False
                self._wake.notify_all()


def sample_key(record: dict[str, Any]) -> str:
    """A replay record's key in the checkpoint's list of trained samples: its file's uuid (a sample accepted
    again gets a new file, so it counts as untrained again)."""
    return str(record["file"])[:16]


def decoder_input(embedding: torch.Tensor, slices: int) -> torch.Tensor:
    """A stored embedding as a model with ``slices`` slices per embedding reads it: C x h x w without a depth
    adapter (the centre of a stack), S x C x h x w with one (a lone image stands in for its neighbours, as
    :meth:`~medadapt.foundation.Backbone.adapt_embedding` does)."""
    if embedding.ndim == 4:
        if slices == 1:
            return embedding[embedding.shape[0] // 2]
        if embedding.shape[0] != slices:
            raise MedAdaptError(f"a replay sample holds {embedding.shape[0]} slices per embedding; this model's "
                                f"depth adapter reads {slices}: give another folder")
        return embedding
    return embedding if slices == 1 else embedding[None].expand(slices, *embedding.shape)


def _swap(tmp: Path, final: Path) -> None:
    """Put folder ``tmp`` in place of ``final``: the old one is moved aside first and removed last."""
    aside = final.with_name(f".{final.name}.old")
    if aside.exists():
        shutil.rmtree(aside)
    if final.exists():
        final.rename(aside)
    tmp.rename(final)
    shutil.rmtree(aside, ignore_errors=True)


def _recover(final: Path) -> Path:
    """``final``, moved back from aside when a :func:`_swap` was interrupted between its two renames; folders
    of saves interrupted before the swap are removed."""
    aside = final.with_name(f".{final.name}.old")
    if not final.exists() and aside.is_dir():
        aside.rename(final)
    for tmp in final.parent.glob(f".{final.name}.new.*") if final.parent.is_dir() else ():
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def holds_checkpoint(folder: str | Path) -> bool:
    """Whether the online learner's ``folder`` holds a saved model to resume (a save interrupted between its
    two renames is completed first, as the learner itself would on start)."""
    return (_recover(Path(folder) / "adapter") / CONFIG_NAME).is_file()


__all__ = ["OnlineConfig", "OnlineLearner", "holds_checkpoint"]
