"""Supervised training and evaluation of a classifier graph on the torch backend.

``train`` builds the module from the graph, trains a copy of its parameters (the graph is not
touched until training finishes), then writes every parameter and buffer (batchnorm running
statistics included) back into the graph's ``ParamStore``, so ``save_weights(graph, path)`` saves
the trained network.  Cross-entropy loss, AdamW (or SGD with Nesterov momentum), cosine learning
rate decay to zero over all steps, weight decay on weights only (not on biases or norm scales).

Deterministic for a given seed on a given machine and thread count: the seed fixes the shuffling
(its own generator), dropout and any other randomness (the global torch generator, restored
afterwards), and deterministic algorithms are requested while training.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convdsl.errors import UsageError, did_you_mean
from convdsl.ir.graph import Graph, ModuleBuilder
from convdsl.train.data import Dataset, check_fits
from convdsl.train.limits import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_LR, MAX_SEED, MAX_THREADS, MAX_WEIGHT_DECAY


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float  # running accuracy over the epoch's batches, in train mode
    val_loss: float
    val_acc: float
    lr: float  # at the end of the epoch
    seconds: float  # training and validation of this epoch


@dataclass
class TrainResult:
    history: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0
    dataset: str = ""
    params: int = 0

    @property
    def val_accuracy(self) -> float:
        """Validation accuracy of the final weights (the ones written to the graph)."""
        return self.history[-1].val_acc if self.history else float("nan")

    @property
    def val_loss(self) -> float:
        return self.history[-1].val_loss if self.history else float("nan")

    def to_dict(self) -> dict:
        return {"history": [asdict(e) for e in self.history], "seconds": self.seconds, "dataset": self.dataset,
                "params": self.params, "val_accuracy": self.val_accuracy}


# optimizer name -> constructor(param groups, lr)
OPTIMIZERS: dict[str, Callable[[list[dict], float], torch.optim.Optimizer]] = {
    "adamw": lambda groups, lr: torch.optim.AdamW(groups, lr=lr),
    "sgd": lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True),
}
DEFAULT_LR = {"adamw": 3e-3, "sgd": 0.05}


# ---- module <-> graph -----------------------------------------------------------------------
def _trainable_module(graph: Graph, build: ModuleBuilder) -> nn.Module:
    """The graph's module with its own copy of every tensor (build_module shares the store's memory)."""
    model = build(graph)
    own = {name: t.detach().clone() for name, t in model.state_dict().items()}
    model.load_state_dict(own, strict=True, assign=True)
    specs = graph.params.specs
    for name, p in model.named_parameters():
        spec = specs.get(name)
        p.requires_grad_(spec is None or spec.trainable)
    return model


def _write_back(graph: Graph, model: nn.Module) -> None:
    """Every tensor of the module's state_dict back into the graph's store (as numpy copies)."""
    state = model.state_dict()
    missing = [n for n in graph.params.specs if n not in state]
    if missing:  # build_module loads strictly, so this means the backend renamed something
        raise UsageError(f"trained module lacks parameter '{missing[0]}' of network {graph.name}")
    for name in graph.params.names():
        graph.params[name] = state[name].detach().cpu().numpy().copy()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)  # biases, norm scales: no decay
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# ---- determinism ----------------------------------------------------------------------------
@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Intra-op threads for the duration (None: leave torch's setting)."""
    was = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(was)


@contextlib.contextmanager
def _deterministic(seed: int, threads: int | None) -> Iterator[None]:
    """Seed torch's global generator and ask for deterministic kernels; restore both afterwards."""
    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]), _threads(threads):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was, warn_only=was_warn)


def _in_range(what: str, value, lo, hi, integer: bool = True) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        raise UsageError(f"{what} must be {'a whole number' if integer else 'a number'} from {lo:,} to {hi:,}, "
                         f"got {value!r}"[:300])


@contextlib.contextmanager
def _step_errors(epoch: int, batch: int) -> Iterator[None]:
    """What torch raises on a user's network and data (a batch of one through batchnorm, an
    allocation the machine refuses) is a usage error, not a traceback."""
    try:
        yield
    except (RuntimeError, ValueError, IndexError, MemoryError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        hint = "a batch of one sample cannot train batchnorm: use another --batch-size" \
            if "more than 1 value per channel" in first else None
        where = f"in epoch {epoch}" if epoch else "in evaluation"
        raise UsageError(f"training failed {where} on a batch of {batch}: {first}", hint=hint) from None


# ---- progress -------------------------------------------------------------------------------
class _Progress:
    """Rich bars (all steps, and the current epoch) on stderr when it is a terminal, else nothing."""

    def __init__(self, enabled: bool, epochs: int, steps: int, name: str) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        if not console.is_terminal:  # logs and pipes get the per-epoch results only
            return
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=console,
                            transient=True, refresh_per_second=4)
        self.total = self.bar.add_task(f"training {name}", total=epochs * steps, status="")
        self.epoch = self.bar.add_task("epoch 1", total=steps, status="")
        self.bar.start()

    def start_epoch(self, epoch: int, epochs: int) -> None:
        if self.bar:
            self.bar.reset(self.epoch, description=f"epoch {epoch}/{epochs}", status="")

    def step(self, loss: float) -> None:
        if self.bar:
            self.bar.update(self.epoch, advance=1, status=f"loss {loss:.4f}")
            self.bar.update(self.total, advance=1)

    def end_epoch(self, stats: EpochStats) -> None:
        if self.bar:
            self.bar.update(self.total, status=f"val acc {100 * stats.val_acc:.2f}%")

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


# ---- loops ----------------------------------------------------------------------------------
def _batches(n: int, batch_size: int, gen: torch.Generator | None) -> list[torch.Tensor]:
    """Index batches; shuffled (and without a short tail, when there is more than one batch)
    when a generator is given.  A batch of one would break batchnorm in training mode."""
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    chunks = list(order.split(batch_size))
    if gen is not None and len(chunks) > 1 and len(chunks[-1]) < batch_size:
        chunks.pop()
    return chunks


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    for idx in _batches(len(y), batch_size, None):
        logits = _logits(model, x[idx])
        loss_sum += F.cross_entropy(logits, y[idx], reduction="sum").item()
        correct += (logits.argmax(1) == y[idx]).sum().item()
    n = max(len(y), 1)
    return loss_sum / n, correct / n


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def train(graph: Graph, dataset: Dataset, epochs: int, batch_size: int = 64, lr: float | None = None,
          optimizer: str = "adamw", weight_decay: float = 5e-4, seed: int = 0, progress: bool = True,
          label_smoothing: float = 0.0, eval_batch_size: int = 512, threads: int | None = 1,
          on_epoch: Callable[[EpochStats], None] | None = None, *, build: ModuleBuilder) -> TrainResult:
    """Train ``graph`` on ``dataset`` for ``epochs`` and write the weights into the graph.  ``build``
    makes the module that is trained (the torch backend's ``build_module``).

    ``lr`` defaults per optimizer (AdamW 3e-3, SGD 0.05) and decays by a cosine to zero over all
    steps.  ``on_epoch`` is called after each epoch (e.g. to print a row or stop a search early by
    raising).  ``threads`` sets torch's intra-op threads while training: digits-sized networks run
    fastest on one (batches are too small to split; a second thread only waits), and a search
    runs one trainer per core; None keeps torch's setting.  Returns the per-epoch history; the
    graph keeps the final weights."""
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer '{optimizer}'",
                         hint=did_you_mean(optimizer, OPTIMIZERS) or f"optimizers: {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    _in_range("--epochs", epochs, 1, MAX_EPOCHS)
    _in_range("--batch-size", batch_size, 1, MAX_BATCH_SIZE)
    _in_range("the evaluation batch size", eval_batch_size, 1, MAX_BATCH_SIZE)
    _in_range("--seed", seed, 0, MAX_SEED)
    if threads is not None:
        _in_range("--threads", threads, 1, MAX_THREADS)
    _in_range("--lr", lr, 1e-12, MAX_LR, integer=False)
    _in_range("--weight-decay", weight_decay, 0.0, MAX_WEIGHT_DECAY, integer=False)
    _in_range("label smoothing", label_smoothing, 0.0, 1.0, integer=False)
    check_fits(graph, dataset)
    x_tr, y_tr = torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)
    x_va, y_va = torch.from_numpy(dataset.x_val), torch.from_numpy(dataset.y_val)
    steps = len(_batches(len(y_tr), batch_size, torch.Generator().manual_seed(0)))
    result = TrainResult(dataset=dataset.name, params=graph.params.count())
    start = time.perf_counter()
    with _deterministic(seed, threads):
        model = _trainable_module(graph, build)
        opt = OPTIMIZERS[optimizer](_param_groups(model, weight_decay), lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
        shuffle = torch.Generator().manual_seed(seed)
        bar = _Progress(progress, epochs, steps, graph.name)
        try:
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                bar.start_epoch(epoch, epochs)
                model.train()
                loss_sum, correct, seen = 0.0, 0, 0
                for idx in _batches(len(y_tr), batch_size, shuffle):
                    xb, yb = x_tr[idx], y_tr[idx]
                    with _step_errors(epoch, len(yb)):
                        logits = _logits(model, xb)
                        loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
                    if not torch.isfinite(loss):
                        raise UsageError(f"training diverged in epoch {epoch}: loss is {loss.item()}",
                                         hint=f"lower the learning rate (now {lr:g})")
                    opt.zero_grad(set_to_none=True)
                    with _step_errors(epoch, len(yb)):
                        loss.backward()
                    opt.step()
                    sched.step()
                    loss_sum += loss.item() * len(yb)
                    correct += (logits.argmax(1) == yb).sum().item()
                    seen += len(yb)
                    bar.step(loss.item())
                with _step_errors(epoch, min(len(y_va), eval_batch_size)):
                    val_loss, val_acc = _evaluate(model, x_va, y_va, eval_batch_size)
                stats = EpochStats(epoch, loss_sum / seen, correct / seen, val_loss, val_acc,
                                   opt.param_groups[0]["lr"], time.perf_counter() - t0)
                result.history.append(stats)
                bar.end_epoch(stats)
                if on_epoch is not None:
                    on_epoch(stats)
        finally:
            bar.close()
    model.eval()
    _write_back(graph, model)
    result.seconds = time.perf_counter() - start
    return result


def evaluate(graph: Graph, dataset: Dataset, split: str = "val", batch_size: int = 512,
             threads: int | None = 1, *, build: ModuleBuilder) -> dict:
    """Accuracy and mean cross-entropy of the graph's current weights on one split, run by the
    module ``build`` makes of the graph (the torch backend's ``build_module``)."""

    if split not in ("val", "train"):
        raise UsageError(f"unknown split '{split}'", hint="val or train")
    _in_range("--batch-size", batch_size, 1, MAX_BATCH_SIZE)
    if threads is not None:
        _in_range("--threads", threads, 1, MAX_THREADS)
    check_fits(graph, dataset)
    x, y = (dataset.x_val, dataset.y_val) if split == "val" else (dataset.x_train, dataset.y_train)
    model = build(graph)
    with _threads(threads), _step_errors(0, min(len(y), batch_size)):
        loss, acc = _evaluate(model, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), batch_size)
    return {"accuracy": acc, "loss": loss, "n": int(len(y))}
