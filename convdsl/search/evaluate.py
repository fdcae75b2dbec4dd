"""One candidate's evaluation, run in a worker (a local process or a Ray task).

``evaluate_candidate(task)`` takes a plain dict (picklable, no open files) and returns one: it
elaborates the candidate's program with the same front end as ``convdsl train``, trains it with
the same trainer on the same split, then times the trained network on the chosen backend.  The
worker writes nothing: the weights come back as safetensors bytes and the parent stores them, so
a Ray worker on another machine needs neither the space's files nor the output folder.

Never raises: any error becomes ``{"status": "failed", "error": ...}``.
"""
from __future__ import annotations

import functools
import os
import socket
import statistics
import time
import traceback
from typing import Any

CLOCKS = ("cpu", "wall")


@functools.lru_cache(maxsize=4)
def _dataset(spec: str, split_seed: int, val_fraction: float):
    from convdsl.train import load_dataset

    return load_dataset(spec, seed=split_seed, val_fraction=val_fraction)


def measure_latency(module: Any, shape: tuple[int, ...], repeats: int = 30, warmup: int = 5,
                    max_seconds: float = 2.0) -> dict[str, float]:
    """Median time of one forward pass on zeros of ``shape``: wall clock, and CPU time of this
    process (equal to the wall time on an idle core with one thread, and much less disturbed when
    other work shares the machine)."""
    import torch

    x = torch.zeros(shape)
    walls: list[float] = []
    cpus: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
        start = time.perf_counter()
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            module(x)
            cpus.append(time.process_time() - c0)
            walls.append(time.perf_counter() - w0)
            if time.perf_counter() - start > max_seconds and len(walls) >= 5:
                break
    return {"wall_ms": 1e3 * statistics.median(walls), "cpu_ms": 1e3 * statistics.median(cpus)}


def evaluate_candidate(task: dict[str, Any]) -> dict[str, Any]:
    """Train and time one program; see the module docstring.

    task keys: text, file, network, sources, data, split_seed, val_fraction, epochs, seeds, batch_size,
    lr, optimizer, weight_decay, seed, backend, latency_batch, latency_clock, threads."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        import torch

        threads = int(task.get("threads", 1))
        torch.set_num_threads(threads)
        out.update(_run(task, threads))
        out["status"] = "done"
    except Exception as e:  # a failed candidate is a result, never a crash of the search
        from convdsl.errors import ConvDSLError

        out["status"] = "failed"
        out["error"] = e.render() if isinstance(e, ConvDSLError) else \
            f"{type(e).__name__}: {e}\n" + "".join(traceback.format_exc(limit=-3))
    out["seconds"] = time.perf_counter() - t0
    return out


def _run(task: dict[str, Any], threads: int) -> dict[str, Any]:
    from safetensors.numpy import save as save_bytes

    from convdsl.backends import backend_module
    from convdsl.backends.torch import build_module
    from convdsl.ir.stats import summary
    from convdsl.ir.verify import verify
    from convdsl.lang.elaborate import Options
    from convdsl.train import train
    from convdsl.search.space import elaborate_text

    sources: dict[str, str] = task.get("sources") or {}

    def loader(path: str) -> str:
        if path in sources:
            return sources[path]
        from convdsl.lang.source import read_source

        return read_source(path)

    dataset = _dataset(task["data"], task["split_seed"], task["val_fraction"])
    runs = []  # one per training seed (initialization and shuffling): the first one's weights are kept
    for seed in range(task["seed"], task["seed"] + int(task.get("seeds", 1))):
        gs, _ = elaborate_text(task["text"], task["file"], task.get("network"), Options(seed=seed), loader)
        verify(gs)
        runs.append((gs, train(gs, dataset, task["epochs"], batch_size=task["batch_size"], lr=task.get("lr"),
                               optimizer=task.get("optimizer", "adamw"), weight_decay=task.get("weight_decay", 5e-4),
                               seed=seed, progress=False, threads=threads, build=build_module)))
    g, result = runs[0]
    stats = summary(g)
    module = backend_module(task.get("backend", "torch")).build_module(g)
    if hasattr(module, "eval"):
        module.eval()
    lat = measure_latency(module, (task.get("latency_batch", 1), *dataset.input_shape))
    clock = task.get("latency_clock", "cpu")
    arrays = {n: a if a.flags.c_contiguous else a.copy() for n, a in g.params.items()}
    return {
        "val_acc": sum(r.val_accuracy for _, r in runs) / len(runs),
        "val_loss": sum(r.val_loss for _, r in runs) / len(runs),
        "val_acc_seeds": [r.val_accuracy for _, r in runs],
        "params": g.params.count(),
        "macs": int(stats.get("macs", 0)),
        "latency_ms": lat["cpu_ms"] if clock == "cpu" else lat["wall_ms"],
        "latency_wall_ms": lat["wall_ms"],
        "latency_cpu_ms": lat["cpu_ms"],
        "train_seconds": sum(r.seconds for _, r in runs),
        "history": [[e.epoch, e.train_loss, e.val_loss, e.val_acc] for e in result.history],
        "weights": save_bytes(arrays, metadata={"network": g.name}),
    }
