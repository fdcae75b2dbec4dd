"""The op-attribute fuzzer's programs: every op of the registry on small inputs, one attribute
changed at a time to an edge value.

    for case in cases(EDGE_VALUES):
        outcome = check_case(case)       # "refused" (located ConvDSLError) or "accepted"

A ``Case`` is one single-op network: ``BASES[op]`` gives the op's inputs and a call with the
attributes it needs, and the fuzzed attribute is written by keyword with the edge value as CDL
text.  ``batch_text`` joins many cases into one network (each with its own inputs and output),
so that one TVM build covers many single-op programs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from convdsl.ir.ops import OPS


@dataclass(frozen=True)
class Base:
    inputs: tuple[tuple[str, str], ...]  # (name, CDL type) of each network input
    call: str  # the op call with the attributes it needs, by keyword: "conv2d(out=4)"
    body: str = "{y} = {x} | {call}"  # how the call is applied; {x}, {a}, {b}... name the inputs


X4 = (("x", "f32[2, 4, 6, 6]"),)
_X = {1: (("x", "f32[2, 4, 8]"),), 2: X4, 3: (("x", "f32[2, 4, 4, 4, 4]"),)}
_AB = (("a", "f32[2, 4, 6, 6]"), ("b", "f32[2, 4, 6, 6]"))
_SEQ = (("x", "f32[2, 5, 8]"),)
_SIGNAL = (("x", "f32[2, 4, 16]"),)
_QUANTIZED = "{y} = {x} | quantize(0.02, 128) | {call}"

BASES: dict[str, Base] = {}
for _n, _x in _X.items():
    BASES.update({
        f"conv{_n}d": Base(_x, f"conv{_n}d(out=4)"),
        f"conv_transpose{_n}d": Base(_x, f"conv_transpose{_n}d(out=4)"),
        f"batchnorm{_n}d": Base(_x, f"batchnorm{_n}d()"),
        f"instancenorm{_n}d": Base(_x, f"instancenorm{_n}d()"),
        f"maxpool{_n}d": Base(_x, f"maxpool{_n}d(k=2)"),
        f"avgpool{_n}d": Base(_x, f"avgpool{_n}d(k=2)"),
        f"adaptive_avgpool{_n}d": Base(_x, f"adaptive_avgpool{_n}d()"),
        f"adaptive_maxpool{_n}d": Base(_x, f"adaptive_maxpool{_n}d()"),
        f"qconv{_n}d": Base(_x, f"qconv{_n}d(out=4, in_scale=0.02, in_zp=128)", _QUANTIZED),
    })
for _op in ("identity", "relu", "relu6", "leaky_relu", "gelu", "silu", "sigmoid", "tanh", "erf", "hardswish",
            "hardsigmoid", "neg", "affine", "softmax", "dropout", "global_avgpool", "global_maxpool", "flatten", "rot90",
            "flip", "glu", "prelu", "batchnorm", "layernorm2d"):
    BASES[_op] = Base(X4, f"{_op}()")
for _op in ("add", "sub", "mul", "div", "matmul", "concat"):
    BASES[_op] = Base(_AB, f"{_op}()", "{y} = ({a}, {b}) | {call}")
BASES.update({
    "linear": Base((("x", "f32[2, 8]"),), "linear(out=4)"),
    "qlinear": Base((("x", "f32[2, 8]"),), "qlinear(out=4, in_scale=0.02, in_zp=128)", _QUANTIZED),
    "layernorm": Base(_SEQ, "layernorm()"),
    "qlayernorm": Base(_SEQ, "qlayernorm(eps=1e-5, x_scale=0.001, out_scale=0.03, out_zp=128)"),
    "qgelu": Base(X4, "qgelu(out_scale=0.02, out_zp=10)"),
    "qattention": Base((("x", "f32[2, 5, 24]"),), "qattention(heads=2, in_scale=0.02, in_zp=128)", _QUANTIZED),
    "packed_attention": Base((("x", "f32[2, 5, 24]"),), "packed_attention(heads=2)"),
    "groupnorm": Base(X4, "groupnorm(groups=2)"),
    "cast": Base(X4, "cast(dtype=f16)"),
    "drop_path": Base(X4, "drop_path(p=0.1)"),
    "mean": Base(X4, "mean(dims=[2, 3])"),
    "amax": Base(X4, "amax(dims=1)"),
    "vector_norm": Base(X4, "vector_norm(dims=[2, 3])"),
    "upsample": Base(X4, "upsample(scale=2)"),
    "reshape": Base(X4, "reshape(shape=[0, 4, -1])"),
    "permute": Base(X4, "permute(dims=[0, 2, 3, 1])"),
    "transpose": Base(X4, "transpose(dim0=1, dim1=2)"),
    "squeeze": Base((("x", "f32[2, 4, 1, 1]"),), "squeeze()"),
    "unsqueeze": Base(X4, "unsqueeze(dim=1)"),
    "split": Base((("x", "f32[2, 8, 6, 6]"),), "split(sizes=[4, 4])", "{y}, {y}_2 = {x} | {call}"),
    "pad": Base(X4, "pad(pad=[0, 1, 0, 1])"),
    "pixel_shuffle": Base(X4, "pixel_shuffle(factor=2)"),
    "pixel_unshuffle": Base(X4, "pixel_unshuffle(factor=2)"),
    "select": Base(X4, "select(index=0)"),
    "index_select": Base(X4, "index_select(index=[3, 0, 0])"),
    "take": Base(X4, "take(shape=[2, 3], dim=1)"),
    "mhsa": Base(_SEQ, "mhsa(heads=2)"),
    "cross_attention": Base((("x", "f32[2, 5, 8]"), ("m", "f32[2, 7, 6]")), "cross_attention(heads=2)",
                            "{y} = ({x}, {m}) | {call}"),
    "window_attention": Base((("x", "f32[2, 4, 4, 8]"),), "window_attention(heads=2, window=2)"),
    "conv_attention": Base((("x", "f32[2, 8, 6, 6]"),), "conv_attention(heads=2)"),
    "halo_attention": Base((("x", "f32[2, 8, 4, 4]"),), "halo_attention(heads=2, block_size=2, halo=1)"),
    "patch_embed": Base((("x", "f32[2, 3, 8, 8]"),), "patch_embed(dim=8, patch=2)"),
    "class_token": Base(_SEQ, "class_token()"),
    "pos_embed": Base(_SEQ, "pos_embed()"),
    "layer_scale": Base(X4, "layer_scale(layout=first)"),
    "global_filter": Base(X4, "global_filter()"),
    "adaptive_filter": Base((("x", "f32[2, 8, 6, 6]"),), "adaptive_filter(blocks=2)"),
    "fft_conv": Base(_SIGNAL, "fft_conv()"),
    "s4d": Base(_SIGNAL, "s4d(state=4)"),
    "sgconv": Base(_SIGNAL, "sgconv(kernel_dim=4)"),
    "selective_scan": Base(_SIGNAL, "selective_scan(state=4)"),
    "dynamic_filter": Base((("x", "f32[2, 4, 6, 6]"), ("k", "f32[2, 9, 6, 6]")), "dynamic_filter()",
                           "{y} = ({x}, {k}) | {call}"),
    "parameter": Base(X4, "parameter(shape=[1, 4, 6, 6])"),
    "quantize": Base(X4, "quantize(scale=0.05, zero_point=128)"),
    "dequantize": Base(X4, "dequantize(scale=0.05, zero_point=128)", "{y} = {x} | quantize(0.05, 128) | {call}"),
})

# Edge values as CDL text, for every attribute of every op whatever its kind: numbers at and
# around the usual bounds, integers past int32 and int64, non-finite floats (1e309 is inf,
# 1e309 - 1e309 is nan), the wrong kind (words, strings, bools, lists, nested and empty lists)
# and long lists (ranks past what tensors allow).
EDGE_VALUES = (
    "0", "1", "-1", "2", "3", "-3", "7", "2147483648", "1000000000000", "9223372036854775808", "-9223372036854775809",
    "10 ** 400",
    "0.0", "0.5", "-0.5", "1.0", "1.5", "1e-300", "1e-45", "1e300", "3.5e38",
    "1e309", "-1e309", "(1e309 - 1e309)",
    "true", "false", '"s"', '""', "foo", "none", "same",
    "[]", "[0]", "[-1]", "[1, 1]", "[2, 2]", "[2, 2, 2]", "[-2, -2]", "[0, 0, 0]", "[0.5, 0.5]", "[[1]]", "[1e309]",
    "[1000000000000]", "[1, 1, 1, 1, 1, 1, 1, 1]", "[" + ", ".join(["1"] * 65) + "]",
)

# The thorough profile adds values between the edges, and pairs of them in lists.
MORE_VALUES = (
    "4", "5", "6", "8", "9", "16", "-2", "-4", "-5", "-6", "63", "64", "65", "255", "256", "-128", "-129", "32767",
    "2147483647", "-2147483648", "-2147483649", "4294967296", "9223372036854775807", "10 ** 100", "0.25", "0.999",
    "1.0001", "2.5", "-1e-300", "1e38", "-1e300", "-3.5e38", "-(1e309 - 1e309)", "1e-7", "2.0",
    "[3, 3]", "[1, 2]", "[2, 1]", "[1, 1, 1]", "[3]", "[0, 1]", "[1, 0]", "[-1, 1]", "[5, 5]", "[64]",
    "[0, 1, 0, 1]", "[1, 1, 1, 1]", "[1, 1, 1, 1, 1, 1]", "[-1, -1, -1, -1]", "[1.5]", "[2.0, 2.0]", "[true]",
    '["s"]', "[foo]", "[1, [2]]", "[1e300, 1e300]", "[9223372036854775808]", "[2147483648, 1]",
    "[" + ", ".join(["1"] * 25) + "]", "[" + ", ".join(["2"] * 64) + "]",
)


@dataclass(frozen=True)
class Case:
    op: str
    attr: str | None  # None: the base program itself
    value: str  # CDL text of the value

    @property
    def base(self) -> Base:
        return BASES[self.op]

    def call(self) -> str:
        name, rest = self.base.call.split("(", 1)
        parts = [p for p in _split_args(rest[:-1]) if self.attr is None or not p.startswith(self.attr + "=")]
        if self.attr is not None:
            parts.append(f"{self.attr}={self.value}")
        return f"{name}({', '.join(parts)})"

    def statement(self, suffix: str = "") -> tuple[list[str], str, str]:
        """(input declarations, body line, output name), names carrying ``suffix``."""
        names = {n: n + suffix for n, _ in self.base.inputs}
        decls = [f"{names[n]}: {t}" for n, t in self.base.inputs]
        out = "y" + suffix
        return decls, self.base.body.format(y=out, call=self.call(), **names), out

    def text(self) -> str:
        decls, body, out = self.statement()
        return f"network t({', '.join(decls)}) {{\n    {body}\n    return {out}\n}}\n"

    def __str__(self) -> str:
        return self.call() if self.attr is not None else f"{self.call()} (base)"


def _split_args(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def cases(values: tuple[str, ...] = EDGE_VALUES) -> list[Case]:
    """The base program of every op, then every (op, attribute, value)."""
    out = [Case(op, None, "") for op in OPS]
    for op, d in OPS.items():
        for a in d.attrs:
            out += [Case(op, a.name, v) for v in values]
    return out


def batch_text(batch: list[Case]) -> str:
    """One network running every case of ``batch`` side by side (inputs and outputs numbered)."""
    decls, lines, outs = [], [], []
    for i, c in enumerate(batch):
        d, body, out = c.statement(f"_{i}")
        decls += d
        lines.append(body)
        outs.append(out)
    return f"network batch({', '.join(decls)}) {{\n" + "".join(f"    {ln}\n" for ln in lines) \
        + f"    return {', '.join(outs)}\n}}\n"


_LOCATED = re.compile(r":\d+:\d+")
