"""ONNX exports of pooling and resampling (see export.py for the entry format).

Pooling maps onto MaxPool / AveragePool / GlobalAveragePool; adaptive pooling
onto a plain pool when the output size divides the input (or is 1), else onto
one slice-and-reduce per output cell (PyTorch's start/end index formulas);
upsample onto Resize with the coordinate rule F.interpolate uses.
"""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.ops.pool import normalize_dims, pool_geometry
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

from convdsl.backends.onnx.common import family
from convdsl.backends.onnx.export import Exporter


def _batched(cx: Exporter, x: str, t: TensorType, nd: int, fn) -> str:
    """Run a pooling op written for [N, C, *spatial] on an unbatched [C, *spatial] input too."""
    if t.rank == nd + 2:
        return fn(x)
    return cx.op("Squeeze", [fn(cx.op("Unsqueeze", [x, cx.ints([0])])), cx.ints([0])])


def _pool(kind: str, nd: int):
    def export(cx, node: Node, args, ins):
        a = node.attrs
        k, s, p, d = pool_geometry(a, nd)
        common = dict(kernel_shape=list(k), strides=list(s), pads=list(p) + list(p), ceil_mode=int(a["ceil_mode"]))
        if kind == "max":
            fn = lambda x: cx.op("MaxPool", [x], dilations=list(d), **common)  # noqa: E731
        else:
            fn = lambda x: cx.op("AveragePool", [x], count_include_pad=int(a["count_include_pad"]), **common)  # noqa: E731
        return _batched(cx, args[0], ins[0], nd, fn)

    return export


def _global(reduce: str):
    def export(cx, node, args, ins):
        # Global*Pool is what adaptive pooling to 1 exports as; the reduction keeps the two apart
        return cx.op(reduce, [args[0]], axes=list(range(2, ins[0].rank)), keepdims=int(node.attrs["keepdim"]))

    return export


def _cells(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows: [floor(i*in/out), ceil((i+1)*in/out))."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _adaptive(kind: str, nd: int):
    def export(cx, node, args, ins):
        out = tuple_n(node.attrs["out"], nd)
        t = ins[0]
        sizes = t.shape[-nd:]
        pool = "AveragePool" if kind == "avg" else "MaxPool"
        reduce = "ReduceMean" if kind == "avg" else "ReduceMax"

        def fn(x: str) -> str:
            if all(o == 1 for o in out):
                return cx.op("GlobalAveragePool" if kind == "avg" else "GlobalMaxPool", [x])
            if not all(isinstance(s, int) for s in sizes):
                raise cx.error("adaptive pooling to a size other than 1 needs static spatial sizes",
                               hint="bind the symbolic sizes when exporting (--bind H=...)")
            if all(s % o == 0 for s, o in zip(sizes, out)):
                k = [s // o for s, o in zip(sizes, out)]
                return cx.op(pool, [x], kernel_shape=k, strides=k)
            y = x
            for i, (size, o) in enumerate(zip(sizes, out)):  # one spatial axis at a time
                axis = 2 + i
                if size == o:
                    continue
                parts = [cx.op(reduce, [cx.op("Slice", [y, cx.ints([lo]), cx.ints([hi]), cx.ints([axis])])],
                               axes=[axis], keepdims=1) for lo, hi in _cells(size, o)]
                y = cx.op("Concat", parts, axis=axis)
            return y

        return _batched(cx, args[0], t, nd, fn)

    return export


def _mean(cx, node, args, ins):
    normalize_dims("mean", node.attrs["dims"], ins[0].rank)  # checked; written as the program wrote them
    dims = node.attrs["dims"]
    # ONNX axes may count from the end, so `mean(-1)` stays -1 and comes back as written
    axes = [int(d) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    return cx.op("ReduceMean", [args[0]], axes=axes, keepdims=int(node.attrs["keepdim"]))


def _upsample(cx, node, args, ins):
    a = node.attrs
    t = ins[0]
    nd = t.rank - 2
    mode = {"nearest": "nearest", "bicubic": "cubic"}.get(a["mode"], "linear")
    attrs = {"mode": mode}
    if mode == "nearest":  # src = floor(dst * in/out), as F.interpolate's "nearest"
        attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    elif a["align_corners"]:
        attrs["coordinate_transformation_mode"] = "align_corners"
    else:
        attrs["coordinate_transformation_mode"] = "pytorch_half_pixel"
    if mode == "cubic":
        attrs["cubic_coeff_a"] = -0.75
    if a["size"] is not None:
        out = tuple_n(a["size"], nd)
        sizes = cx.shape_tensor((t.shape[0], t.shape[1], *out), [(args[0], t)])
        return cx.op("Resize", [args[0], "", "", sizes], **attrs)
    scale = a["scale"]
    scales = (float(scale),) * nd if isinstance(scale, (int, float)) else tuple(float(s) for s in scale)
    return cx.op("Resize", [args[0], "", cx.const([1.0, 1.0, *scales], "float32")], **attrs)


EXPORTS = family("pool", {
    **{f"{k}pool{n}d": _pool(k, n) for k in ("max", "avg") for n in (1, 2, 3)},
    "global_avgpool": _global("ReduceMean"),
    "global_maxpool": _global("ReduceMax"),
    **{f"adaptive_{k}pool{n}d": _adaptive(k, n) for k in ("avg", "max") for n in (1, 2, 3)},
    "mean": _mean,
    "upsample": _upsample,
})
