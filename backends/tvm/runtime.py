"""Running compiled TVM modules on NumPy arrays or torch tensors.

``Runner`` wraps a Relax VM.  NumPy inputs are copied to the device; torch
tensors on the same device are passed without a copy through DLPack when they
are contiguous and 64-byte aligned (the alignment TVM's kernels assume), and
copied otherwise.  Outputs come back as the kind of the first input: NumPy
arrays, or torch tensors sharing TVM's memory (DLPack).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from convdsl.errors import UsageError

ALIGN = 64


class Runner:
    """Callable: a list of inputs (NumPy arrays or torch tensors) -> list of outputs."""

    def __init__(self, executable, device, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]],
                 amx: bool = False) -> None:
        from tvm.runtime.vm import VirtualMachine  # the runtime alone: loading needs no compiler

        if amx:  # the library may run AMX tile instructions: the process needs the tile state first
            from convdsl.backends.tvm.targets import request_amx

            request_amx()

        self.device = device
        self.inputs = inputs  # [{"name", "shape" (sizes, and dynamic symbols as text), "dtype" (numpy)}]
        self.outputs = outputs
        self.vm = VirtualMachine(executable, device)
        self._seen: dict[str, int] = {}  # sizes of the dynamic symbols in the call being checked
        self._main = self.vm["main"]

    # -- inputs and outputs ------------------------------------------------------------
    def _check(self, i: int, shape: Sequence[int], dtype: str) -> None:
        """Input ``i`` against the shape the library takes: its sizes, and any size (>= 1) where it
        has a dynamic symbol (one size per symbol across the inputs of a call: ``self._seen``)."""
        spec = self.inputs[i]
        want = list(spec["shape"])
        ok = len(shape) == len(want) and str(dtype) == spec["dtype"]
        sizes = dict(self._seen)
        for d, n in zip(want, shape) if ok else ():
            if isinstance(d, str):
                ok = ok and n >= 1 and sizes.setdefault(d, n) == n
            else:
                ok = ok and d == n
        if ok:
            self._seen = sizes
        else:
            dynamic = sorted({d for s in self.inputs for d in s["shape"] if isinstance(d, str)})
            seen = ", ".join(f"{k} = {v}" for k, v in self._seen.items() if k in want)
            raise UsageError(f"input '{spec['name']}' was compiled for {spec['dtype']}{want}, "
                             f"got {dtype}{list(shape)}" + (f" (an earlier input gave {seen})" if seen else ""),
                             hint=f"this library takes any {', '.join(dynamic)} and the other dims as compiled"
                             if dynamic else "this library has static shapes: recompile with --bind N=... for "
                                             "another batch, or with --dynamic-batch for any batch")

    def to_device(self, i: int, x):
        import tvm

        if isinstance(x, np.ndarray):
            self._check(i, x.shape, x.dtype)
            return tvm.runtime.tensor(np.ascontiguousarray(x), self.device)
        if _is_torch(x):
            self._check(i, x.shape, str(x.dtype).replace("torch.", ""))
            same_device = (x.device.type == "cpu") == (self.device.dlpack_device_type() == 1)
            if same_device and x.is_contiguous() and x.data_ptr() % ALIGN == 0:
                return tvm.runtime.from_dlpack(x.detach())
            return tvm.runtime.tensor(x.detach().cpu().contiguous().numpy(), self.device)
        if isinstance(x, tvm.runtime.Tensor):
            return x
        raise UsageError(f"input {i} is a {type(x).__name__}; give NumPy arrays or torch tensors")

    def __call__(self, inputs: Sequence[Any]) -> list[Any]:
        if len(inputs) != len(self.inputs):
            raise UsageError(f"the network takes {len(self.inputs)} input(s), got {len(inputs)}")
        args = self.prepare(inputs)
        out = self._main(*args)
        outs = list(out) if not hasattr(out, "numpy") else [out]
        if inputs and _is_torch(inputs[0]):
            import torch

            return [torch.from_dlpack(o) for o in outs]
        return [o.numpy() for o in outs]

    # -- measurement --------------------------------------------------------------------
    def prepare(self, inputs: Sequence[Any]) -> list[Any]:
        """Inputs already on the device, for timing the module alone."""
        self._seen = {}
        return [self.to_device(i, x) for i, x in enumerate(inputs)]

    def timed_call(self, inputs: Sequence[Any]) -> Callable[[], Any]:
        """What is timed, by `convdsl bench` and benchmarks/peers.py alike: one call of the module on
        ``inputs`` put on the device once (``prepare``), synchronized; the outputs stay TVM tensors
        (on the CPU, in host memory).  The input copy and output conversion of ``runner(inputs)``
        stay outside (0.1-0.3 ms for a 224x224 image)."""
        args, main, device = self.prepare(inputs), self._main, self.device

        def call():
            out = main(*args)
            device.sync()
            return out

        return call

    def time_ms(self, args: list[Any], *, repeat: int = 20, warmup: int = 2, min_ms: float = 0.0) -> list[float]:
        """Wall-clock milliseconds of ``repeat`` calls (after ``warmup``), synchronized per call."""
        for _ in range(warmup):
            self._main(*args)
        self.device.sync()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            n = 0
            while True:
                self._main(*args)
                n += 1
                self.device.sync()
                if (time.perf_counter() - t0) * 1e3 >= min_ms:
                    break
            times.append((time.perf_counter() - t0) * 1e3 / n)
        return times


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def profile(runner: Runner, args: list[Any], *, repeat: int = 5) -> list[dict[str, Any]]:
    """Per-kernel time of one call of ``main``, the median over ``repeat`` calls.

    The Relax VM calls an instrument before and after every call instruction;
    the device is synchronized around each kernel, so the times add up to a
    little more than an unprofiled call.  Rows: kernel name, calls per run,
    milliseconds per run, share of the total; sorted by time."""
    import tvm
    from tvm.runtime.vm import VMInstrumentReturnKind

    runs: list[dict[str, float]] = []
    counts: dict[str, int] = {}
    state: dict[str, Any] = {"run": {}, "count": {}}

    def instrument(func, name, before_run, ret_value, *call_args):
        if before_run:
            runner.device.sync()
            state["t0"] = time.perf_counter()
        else:
            runner.device.sync()
            ms = (time.perf_counter() - state["t0"]) * 1e3
            name = str(name)
            state["run"][name] = state["run"].get(name, 0.0) + ms
            state["count"][name] = state["count"].get(name, 0) + 1
        return VMInstrumentReturnKind.NO_OP

    runner.vm.set_instrument(tvm.runtime.convert(instrument) if hasattr(tvm.runtime, "convert") else instrument)
    try:
        runner._main(*args)  # warm-up
        for _ in range(repeat):
            state["run"], state["count"] = {}, {}
            runner._main(*args)
            runs.append(state["run"])
            counts = state["count"]
    finally:
        runner.vm.set_instrument(None)
    names = sorted(runs[0])
    med = {n: float(np.median([r.get(n, 0.0) for r in runs])) for n in names}
    total = sum(med.values()) or 1.0
    rows = [{"kernel": n, "calls": counts.get(n, 0), "ms": med[n], "percent": 100.0 * med[n] / total} for n in names]
    return sorted(rows, key=lambda r: -r["ms"])
