"""Parameter store: stable dotted names -> numpy arrays.

Arrays are materialized lazily from their ``ParamSpec`` so that checking a
500 MB network allocates nothing.  Initialization is deterministic: each
parameter draws from its own generator seeded by (global seed, name), so the
values do not depend on construction order and survive graph rewrites.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Iterator

import numpy as np

from convdsl.ir.optable import Init, ParamSpec
from convdsl.ir.types import DTYPE_BYTES, NUMPY_DTYPE


def _rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def _orthogonal(rng: np.random.Generator, shape: tuple[int, ...], gain: float) -> np.ndarray:
    rows = shape[0]
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    flat = rng.standard_normal((rows, cols)).astype(np.float64)
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape)


def _gabor(shape: tuple[int, ...], args: tuple) -> np.ndarray:
    """A bank of Gabor filters [out, in, k, k]: orientations spread over pi,
    scales from ``args`` (sigma, lambda, gamma)."""
    sigma = float(args[0]) if len(args) > 0 else 2.0
    lam = float(args[1]) if len(args) > 1 else 2.0 * sigma
    gamma = float(args[2]) if len(args) > 2 else 0.5
    out_c, in_c = shape[0], shape[1]
    kh, kw = shape[-2], shape[-1]
    ys, xs = np.meshgrid(np.arange(kh) - (kh - 1) / 2, np.arange(kw) - (kw - 1) / 2, indexing="ij")
    bank = np.empty(shape, dtype=np.float64)
    for o in range(out_c):
        theta = math.pi * o / out_c
        xr = xs * math.cos(theta) + ys * math.sin(theta)
        yr = -xs * math.sin(theta) + ys * math.cos(theta)
        g = np.exp(-(xr**2 + (gamma * yr) ** 2) / (2 * sigma**2)) * np.cos(2 * math.pi * xr / lam)
        g -= g.mean()
        g /= np.abs(g).sum() + 1e-12
        bank[o] = g.reshape((1,) * (len(shape) - 3) + (kh, kw))
    return bank


def materialize(spec: ParamSpec, seed: int, name: str) -> np.ndarray:
    init, shape = spec.init, spec.shape
    dtype = np.dtype(NUMPY_DTYPE.get(spec.dtype, "float32"))
    kind, args = init.kind, init.args
    if kind == "zeros":
        return np.zeros(shape, dtype)
    if kind == "ones":
        return np.ones(shape, dtype)
    if kind == "const":
        return np.full(shape, args[0], dtype)
    if kind == "arange":  # e.g. S4D-Lin imaginary parts: scale * arange(n) broadcast
        start = float(args[0]) if len(args) > 0 else 0.0
        step = float(args[1]) if len(args) > 1 else 1.0
        base = start + step * np.arange(shape[-1])
        return np.broadcast_to(base, shape).astype(dtype).copy()
    rng = _rng(seed, name)
    if kind == "uniform":
        lo, hi = args
        u = rng.random(size=shape, dtype=np.float32)  # draw in float32: 138M values in ~1 s
        return (u * np.float32(hi - lo) + np.float32(lo)).astype(dtype, copy=False)
    if kind == "normal":
        mean, std = args
        return (mean + std * rng.standard_normal(size=shape, dtype=np.float32)).astype(dtype)
    if kind == "trunc_normal":
        std = float(args[0])
        lo = float(args[1]) if len(args) > 1 else -2.0
        hi = float(args[2]) if len(args) > 2 else 2.0
        x = std * rng.standard_normal(size=shape)
        bad = (x < lo) | (x > hi)
        while bad.any():
            x[bad] = std * rng.standard_normal(size=int(bad.sum()))
            bad = (x < lo) | (x > hi)
        return x.astype(dtype)
    if kind == "log_uniform":  # exp(U(log lo, log hi)), e.g. SSM step sizes
        lo, hi = args
        return np.exp(rng.uniform(math.log(lo), math.log(hi), size=shape)).astype(dtype)
    if kind == "orthogonal":
        return _orthogonal(rng, shape, float(args[0]) if args else 1.0).astype(dtype)
    if kind == "gabor":
        return _gabor(shape, tuple(args)).astype(dtype)
    raise ValueError(f"unknown initializer {kind!r}")


class ParamStore:
    """Ordered mapping name -> array, with lazy initialization from specs."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.specs: dict[str, ParamSpec] = {}
        self._arrays: dict[str, np.ndarray] = {}

    def declare(self, name: str, spec: ParamSpec) -> None:
        if name in self.specs:
            raise ValueError(f"duplicate parameter {name!r}")
        self.specs[name] = spec

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def __getitem__(self, name: str) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            arr = materialize(self.specs[name], self.seed, name)
            self._arrays[name] = arr
        return arr

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        spec = self.specs.get(name)
        if spec is None:
            raise KeyError(name)
        if tuple(value.shape) != tuple(spec.shape):
            self.specs[name] = ParamSpec(tuple(value.shape), spec.init, spec.dtype, spec.buffer, spec.trainable)
        self._arrays[name] = value

    def set_spec(self, name: str, spec: ParamSpec) -> None:
        self.specs[name] = spec
        self._arrays.pop(name, None)

    def remove(self, name: str) -> None:
        self.specs.pop(name, None)
        self._arrays.pop(name, None)

    def names(self) -> list[str]:
        return list(self.specs)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for n in self.specs:
            yield n, self[n]

    def is_materialized(self, name: str) -> bool:
        return name in self._arrays

    def count(self, trainable_only: bool = False) -> int:
        """Number of parameter elements (buffers such as running stats excluded)."""
        return sum(
            math.prod(s.shape)
            for s in self.specs.values()
            if not s.buffer and (s.trainable or not trainable_only)
        )

    def nbytes(self) -> int:
        return sum(math.prod(s.shape) * DTYPE_BYTES.get(s.dtype, 4) for s in self.specs.values())

    def copy(self) -> "ParamStore":
        other = ParamStore(self.seed)
        other.specs = dict(self.specs)
        other._arrays = dict(self._arrays)
        return other

    def map(self, fn: Callable[[str, np.ndarray], np.ndarray]) -> None:
        for n in list(self.specs):
            self[n] = fn(n, self[n])
