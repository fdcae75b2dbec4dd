"""The op table's vocabulary: what one op definition consists of.

Each op is defined exactly once (see ``convdsl/ir/ops/``) as an ``OpDef``:
its attribute schema, shape rule, parameter shapes with initializers, cost,
doc and example, and the properties passes read (``random``, ``commutative``,
``identity_when``, ``out_channels``...) as data, so that no pass keeps a set of
op names of its own.  Backends keep their lowering tables keyed by
``OpDef.name`` (backends/registry.py).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from convdsl.errors import CDLTypeError, ShapeError, did_you_mean, format_count
from convdsl.ir.domains import ANY, Domain
from convdsl.ir.types import DTYPE_BYTES, FLOAT_DTYPES, Size, TensorType


class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Attr:
    """One hyper-parameter of an op.

    ``kind`` is one or more of: int, float, bool, ints (int or list of ints), dims (int or
    list of ints and symbolic sizes, ``types.Size``: a shape),
    sym (a bare word from ``choices``), str, floats, any — joined by ``|``.
    ``domain``: the numbers (and list lengths) every backend runs (convdsl/ir/domains.py);
    None admits what every backend can hold (``domains.ANY``).
    """

    name: str
    kind: str
    default: Any = REQUIRED
    choices: tuple[str, ...] | None = None
    doc: str = ""
    domain: Domain | None = None


@dataclass(frozen=True)
class Init:
    """How a parameter is initialized (matches PyTorch's per-layer defaults)."""

    kind: str  # uniform | normal | trunc_normal | ones | zeros | const | orthogonal | gabor | arange ...
    args: tuple = ()


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    init: Init
    dtype: str = "f32"
    buffer: bool = False  # running statistics and other non-trainable state
    trainable: bool = True


@dataclass(frozen=True)
class Cost:
    macs: int = 0
    flops: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.macs + other.macs, self.flops + other.flops)


Attrs = Mapping[str, Any]
InferFn = Callable[[Attrs, list[TensorType]], list[TensorType]]
ParamsFn = Callable[[Attrs, list[TensorType]], dict[str, ParamSpec]]
# Buffers a reference model stores but the op computes from its attributes (Swin's and MaxViT's
# relative_position_index): local name -> the value (a numpy array).  Loading a weights file
# accepts such a key when its values equal the derived ones and refuses it when they differ.
DerivedFn = Callable[[Attrs, list[TensorType]], dict[str, Any]]
CostFn = Callable[[Attrs, list[TensorType], list[TensorType]], Cost]
NormalizeFn = Callable[[dict, list[TensorType]], dict]
IdentityFn = Callable[[Attrs, TensorType, TensorType], bool]  # (attrs, input type, output type)


def always_identity(attrs: Attrs, x: TensorType, y: TensorType) -> bool:
    """``identity_when`` of an op that returns its input at inference whatever its attributes."""
    return True


def identity_if_same_type(attrs: Attrs, x: TensorType, y: TensorType) -> bool:
    """``identity_when`` of an op that moves no element when its output type is its input type."""
    return x == y


AxisFn = Callable[[Attrs, int, TensorType], bool]  # (attrs, channel axis of input 0, its type)


@dataclass(frozen=True)
class Prune:
    """How an op's channels relate to its input's, for structured pruning (convdsl/passes/prune).

    - ``kind="keep"``: channel c of input 0 is channel c of every output, on the same axis,
      when ``along(attrs, axis, input type)`` accepts the axis the channels lie on (None: any
      axis; otherwise the op acts along the channels and they are pinned); each parameter in
      ``params`` holds one slice per channel, along the given axis, and is sliced with it;
      ``scale`` names the parameter whose magnitude scores a channel (the bn_scale criterion).
    - ``kind="rule"``: a rule of its own, registered under the op's name in
      convdsl/passes/prune/couplings.py (channel spaces) and apply.py (slicing).
    - ``kind="opaque"``: not understood: the widths it reads and writes never change; ``why``
      says why (documentation: shown by the completeness test).
    """

    kind: str
    along: AxisFn | None = None
    params: Mapping[str, int] = field(default_factory=dict)
    scale: str | None = None
    why: str = ""


def keep_channels(along: AxisFn | None = None, params: Mapping[str, int] | None = None,
                  scale: str | None = None) -> Prune:
    return Prune("keep", along, dict(params or {}), scale)


PRUNE_RULE = Prune("rule")


def opaque(why: str) -> Prune:
    return Prune("opaque", why=why)


def on_axis(*axes: int) -> AxisFn:
    """Channels pass when they lie on one of ``axes`` (of the input)."""
    return lambda attrs, axis, t: axis in axes


def before_axis(k: int) -> AxisFn:
    """Channels pass when they lie before axis ``k`` (the op acts on dims k and after)."""
    return lambda attrs, axis, t: axis < k


def before_last(nd: int) -> AxisFn:
    """Channels pass when they lie before the last ``nd`` dims (pooling over them)."""
    return lambda attrs, axis, t: axis < t.rank - nd


def off_attr(name: str) -> AxisFn:
    """Channels pass when they lie on none of the dims the attribute ``name`` lists."""

    def along(attrs: Attrs, axis: int, t: TensorType) -> bool:
        return axis not in normalize_dims(name, attrs[name], t.rank)

    return along


@dataclass(frozen=True)
class OutChannels:
    """The output channels of a producer (a conv, a linear...): the ``axis`` of its output that
    carries them (-1: the last) and, per parameter holding one slice per output channel, the
    axis of that slice.  Axis 1 of a ``weight`` is the grouped layout of transposed convolutions,
    [in, out/groups, ...]: output channel g*(out/groups) + j is [group g's rows, j]."""

    axis: int
    params: Mapping[str, int]
# Peak bytes an op allocates at run time besides its outputs (attention logits, unfolded windows,
# FFT buffers, index tables...), the most any backend needs.  Called on *bound* types (every dim
# an int); the elaborator adds it to what --max-memory bounds.
WorkspaceFn = Callable[[Attrs, list[TensorType], list[TensorType]], int]


def no_params(attrs: Attrs, ins: list[TensorType]) -> dict[str, ParamSpec]:
    return {}


def elementwise_cost(attrs: Attrs, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    return Cost(0, sum(o.numel() for o in outs))


def zero_cost(attrs: Attrs, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    return Cost(0, 0)


EXAMPLE_INPUTS = "x: f32[N, 64, 14, 14]"
SPATIAL_EXAMPLE_INPUTS = {1: "x: f32[N, 64, 100]", 2: EXAMPLE_INPUTS, 3: "x: f32[N, 64, 8, 14, 14]"}  # by spatial rank
def no_workspace(attrs: Attrs, ins: list[TensorType], outs: list[TensorType]) -> int:
    return 0


def nbytes(t: TensorType) -> int:
    """Bytes of a bound tensor type (every dim an int), for workspace functions."""
    return math.prod(t.shape) * DTYPE_BYTES.get(t.dtype, 4)


def work_bytes(t: TensorType) -> int:
    """Bytes of one element as kernels compute it: f16/bf16 work in f32 on CPU, f64 stays f64."""
    return max(4, DTYPE_BYTES.get(t.dtype, 4)) if t.dtype in FLOAT_DTYPES else 4


def io_workspace(per_input: float = 0.0, per_output: float = 0.0) -> WorkspaceFn:
    """A workspace of copies of the inputs and outputs: layout reorders (oneDNN's blocked formats,
    TVM's NCHW[x]c), contiguous copies before a kernel, temporaries of composite ops."""
    def workspace(attrs: Attrs, ins: list[TensorType], outs: list[TensorType]) -> int:
        return int(per_input * sum(nbytes(t) for t in ins) + per_output * sum(nbytes(t) for t in outs))
    return workspace


@dataclass(frozen=True)
class OpDef:
    name: str
    group: str
    attrs: tuple[Attr, ...]
    infer: InferFn
    inputs: tuple[int, int | None] = (1, 1)  # (min, max); max None = variadic
    params: ParamsFn = no_params
    cost: CostFn = elementwise_cost
    normalize: NormalizeFn | None = None  # resolves defaults that depend on inputs
    doc: str = ""
    example: str = ""
    input_names: tuple[str, ...] = ("x",)
    shape_rule: str = ""  # human-readable shape rule for docs
    example_inputs: str = EXAMPLE_INPUTS  # the network inputs the example is written for (CDL parameters)
    # -- properties passes read ---------------------------------------------------------------
    random: bool = False  # draws random numbers while training (dropout): cse never merges two of them
    commutative: bool = False  # op(a, b) == op(b, a) bit for bit with two inputs: cse sorts them
    identity_when: IdentityFn | None = None  # True: returns its one input unchanged at inference (remove_identity)
    out_channels: OutChannels | None = None  # a producer's output channels (fold_bn, quantize, prune's criteria)
    folds_into_producer: bool = False  # inference batchnorm: fold_bn folds it into the conv/linear before it
    int8: str | None = None  # the int8 op the quantize pass makes of it (conv2d -> qconv2d)
    int8_passthrough: bool = False  # commutes with per-tensor quantization: runs on the int8 tensor (quantize)
    int8_shared_scale: bool = False  # joins tensors: runs on int8 ones whose producers all write its scale (quantize)
    prune: Prune | None = None  # how channels flow through it (passes/prune); None: not stated yet
    workspace: WorkspaceFn = no_workspace  # run-time bytes besides the outputs (see WorkspaceFn)
    derived: DerivedFn | None = None  # buffers of a reference model the op recomputes (see DerivedFn)

    def attr(self, name: str) -> Attr | None:
        for a in self.attrs:
            if a.name == name:
                return a
        return None

    def param_specs(self, attrs: dict, ins: list[TensorType]) -> dict[str, "ParamSpec"]:
        """``params``, with the float parameters in the dtype the node computes in: that of its
        first floating-point input (an f64 network has f64 weights; f32 when no input is float,
        e.g. int8 or token ids).  Non-float parameters (counters, int8 weights) keep theirs."""
        specs = self.params(attrs, ins)
        dtype = next((t.dtype for t in ins if t.dtype in FLOAT_DTYPES), "f32")
        if dtype == "f32":
            return specs
        return {k: replace(s, dtype=dtype) if s.dtype == "f32" else s for k, s in specs.items()}


@dataclass(frozen=True)
class Symbol:
    """A bare word used as a value (``pad=same``); carries its span for errors."""

    name: str
    span: Any = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.name


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _coerce(kind: str, value: Any, attr: Attr) -> tuple[bool, Any]:
    if value is None and attr.default is None:
        return True, None
    if kind == "any":
        return True, value
    if kind == "int":
        return (True, value) if _is_int(value) else (False, None)
    if kind == "float":
        if _is_int(value) or isinstance(value, float):
            return True, float(value)
        return False, None
    if kind == "bool":
        return (True, value) if isinstance(value, bool) else (False, None)
    if kind == "ints":
        if _is_int(value):
            return True, value
        if isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
            return True, tuple(value)
        return False, None
    if kind == "dims":
        if _is_int(value) or isinstance(value, Size):
            return True, value
        if isinstance(value, (list, tuple)) and all(_is_int(v) or isinstance(v, Size) for v in value):
            return True, tuple(value)
        return False, None
    if kind == "floats":
        if isinstance(value, (list, tuple)) and all(_is_int(v) or isinstance(v, float) for v in value):
            return True, tuple(float(v) for v in value)
        return False, None
    if kind == "sym":
        name = value.name if isinstance(value, Symbol) else value if isinstance(value, str) else None
        if name is None and _is_bare_layer(value):  # `mode=linear` names the word, not the op
            name = value.name
        if name is None:
            return False, None
        if attr.choices is not None and name not in attr.choices:
            return False, None
        return True, name
    if kind == "str":
        return (True, value) if isinstance(value, str) else (False, None)
    raise ValueError(f"unknown attr kind {kind!r}")


KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "ints": "an integer or a list of integers",
              "dims": "an integer or a list of integers and symbolic sizes",
              "sym": "one of the words", "str": "a string", "floats": "a list of numbers", "any": "a value"}


def describe_kind(attr: Attr) -> str:
    parts = []
    for k in attr.kind.split("|"):
        if k == "sym" and attr.choices:
            parts.append(" / ".join(attr.choices))
        else:
            parts.append(KIND_WORDS.get(k, k))
    return " or ".join(parts)


def bind_attrs(op: OpDef, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Match positional and keyword hyper-parameters to ``op.attrs``.

    Raises ``CDLTypeError`` (without a span; the caller adds it).
    """
    out: dict[str, Any] = {}
    if len(args) > len(op.attrs):
        raise CDLTypeError(
            f"{op.name} takes at most {len(op.attrs)} hyper-parameters, got {len(args)}",
            expected=", ".join(a.name for a in op.attrs) or "no hyper-parameters",
            got=f"{len(args)} positional values",
        )
    for a, v in zip(op.attrs, args):
        out[a.name] = v
    names = {a.name for a in op.attrs}
    for k, v in kwargs.items():
        if k not in names:
            raise CDLTypeError(
                f"{op.name} has no hyper-parameter '{k}'",
                expected=", ".join(a.name for a in op.attrs) or "no hyper-parameters",
                got=k,
                hint=did_you_mean(k, names),
            )
        if k in out:
            raise CDLTypeError(f"{op.name}: '{k}' given twice (positionally and by keyword)")
        out[k] = v
    result: dict[str, Any] = {}
    for a in op.attrs:
        if a.name not in out:
            if a.default is REQUIRED:
                raise CDLTypeError(
                    f"{op.name} needs '{a.name}'",
                    expected=f"{a.name}: {describe_kind(a)}",
                    got="nothing",
                    hint=f"write {op.example}" if op.example else None,
                )
            result[a.name] = a.default
            continue
        v = out[a.name]
        for kind in a.kind.split("|"):
            ok, coerced = _coerce(kind, v, a)
            if ok:
                result[a.name] = check_domain(op, a, kind, coerced)
                break
        else:
            hint = None
            word = v.name if isinstance(v, Symbol) else v if isinstance(v, str) else None
            if word is not None and a.choices:
                hint = did_you_mean(word, a.choices) or f"valid words: {', '.join(a.choices)}"
            sizes = [x for x in (v if isinstance(v, (list, tuple)) else [v]) if isinstance(x, Size)]
            if sizes:
                hint = (f"{sizes[0]} is a symbolic size, known only when the network runs; {op.name}'s {a.name} "
                        "takes fixed numbers: use a static dim (a number in the input's type)")
            raise CDLTypeError(
                f"bad value for {op.name}({a.name}=...)",
                expected=describe_kind(a),
                got=format_value(v),
                hint=hint,
            )
    return result


DOMAINS_HINT = "every hyper-parameter's domain is in docs/ops.md (`convdsl ops --markdown`)"


def check_domain(op: OpDef, a: Attr, kind: str, value: Any) -> Any:
    """``value`` (already of ``kind``) if it lies in ``a``'s domain; CDLTypeError otherwise, saying
    the domain (expected) and the value (got).  Lists are checked entry by entry and by length."""
    if kind not in ("int", "float", "ints", "floats", "dims") or value is None:
        return value
    domain = a.domain or ANY
    integer = kind in ("int", "ints", "dims")
    values = value if isinstance(value, tuple) else (value,)
    if isinstance(value, tuple) and not domain.min_len <= len(value) <= domain.max_len:
        n = domain.min_len if domain.min_len == domain.max_len else f"{domain.min_len} to {domain.max_len}"
        raise CDLTypeError(f"{op.name}: {a.name} takes a list of {n} entries",
                           expected=f"{n} entries", got=f"{len(value)} entries", hint=DOMAINS_HINT)
    for v in values:
        if isinstance(v, Size):  # a symbolic size: positive whatever the symbols' values (shape rules check it)
            continue
        if not domain.admits(v):
            what = domain.describe(integer)
            raise CDLTypeError(f"{op.name}: {a.name} {domain.why_not(v)}",
                               expected=what + (" (each entry)" if isinstance(value, tuple) else ""),
                               got=format_count(v) if isinstance(v, int) else format_value(v),
                               hint=(f"{a.name}: {a.doc}; " if a.doc else "") + DOMAINS_HINT)
    return value


def _is_bare_layer(v: Any) -> bool:
    """An op or block value written as a bare word (no arguments, no label)."""
    return hasattr(v, "args") and hasattr(v, "name") and not v.args and not getattr(v, "kwargs", ()) \
        and getattr(v, "label", None) is None


# ---- CDL literals ----------------------------------------------------------------------------------
# The one way a value is written as CDL text: diagnostics here and in the op modules, the graph
# printer (convdsl/lang/printer.py), the formatter (convdsl/lang/format.py) and the random programs
# of convdsl/verify all use format_value.  (It lives in the IR, the lowest layer that prints values,
# because the op table's error messages do.)
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}


def quote(text: str) -> str:
    """A CDL string literal for ``text``."""
    return '"' + "".join(_ESCAPES.get(c, c) for c in text) + '"'


def format_number(v: int | float) -> str:
    """An int or float as CDL reads it back (infinities overflow back from 1e999; NaN has no literal);
    exponents without a leading zero (1e-6, not Python's 1e-06)."""
    if isinstance(v, float) and math.isinf(v):
        return "-1e999" if v < 0 else "1e999"
    return re.sub(r"e([+-])0(\d)", r"e\1\2", repr(v)) if isinstance(v, float) else repr(v)


def format_value(v: Any, words: bool = True) -> str:
    """``v`` as CDL: none, true/false, numbers, bare words (symbols, layers named without arguments,
    and identifier-like strings when ``words``), quoted strings, [lists]."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return format_number(v)
    if isinstance(v, Symbol) or _is_bare_layer(v):
        return v.name
    if isinstance(v, Size):  # an expression over the network's symbols: 4*N
        return v.dim
    if isinstance(v, str):
        return v if words and IDENT.match(v) else quote(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x, words) for x in v) + "]"
    return str(v)


def expect_rank(op: str, t: TensorType, *ranks: int, what: str = "input") -> None:
    if t.rank not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ShapeError(
            f"{op} needs a rank-{want} {what}",
            expected=f"rank {want}",
            got=f"{t} (rank {t.rank})",
        )


def check_positive(op: str, name: str, vals: tuple[int, ...]) -> None:
    """Kernel sizes, strides, dilations... must be positive."""
    if any(v <= 0 for v in vals):
        raise CDLTypeError(f"{op}: {name} must be positive", expected="integers > 0", got=format_value(vals))


def tuple_n(v: Any, n: int, name: str = "value") -> tuple[int, ...]:
    """Expand an int or check a list to n entries (kernel sizes, strides...)."""
    if isinstance(v, int):
        return (v,) * n
    v = tuple(v)
    if len(v) != n:
        raise CDLTypeError(f"{name} needs {n} values here", expected=f"{n} integers", got=format_value(v))
    return v


def normalize_dims(op: str, dims, rank: int, what: str = "dim") -> tuple[int, ...]:
    """Resolve negative dims against ``rank``; raise on out-of-range or repeats."""
    vals = (dims,) if isinstance(dims, int) else tuple(dims)
    out = []
    for d in vals:
        if not -rank <= d < rank:
            raise ShapeError(f"{op}: {what} {d} is out of range for a rank-{rank} input",
                             expected=f"{what} in [{-rank}, {rank - 1}]", got=str(d))
        out.append(d % rank)
    if len(set(out)) != len(out):
        raise CDLTypeError(f"{op}: {what}s repeat", got=format_value(vals))
    return tuple(out)
