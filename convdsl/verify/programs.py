"""Random, well-typed CDL programs, as text.

``generate(draw)`` builds one program statement by statement while tracking
the kind and shape of every tensor it has made (``steps.py`` computes them,
independently of the op table), so the program is valid by construction:

    block b0(c, k=3, act=relu)(x) {
        y = x | conv2d(c, k, pad=k // 2) | batchnorm | act
        return x + y if channels(x) == c else y
    }

    network net(x0: f32[N, 4, 8, 8]) {
        t1 = x0 | conv2d(8, 3, stride=2, pad=same, pad_mode=circular) | gelu
        t2 = t1 | b0(8, k=5) as "stage1"
        t3 = t1 + t2
        return t3
    }

Statements: pipes of one to three stages, binary arithmetic (residual adds,
gates, safe division), concat, split, hand-written attention (``@``),
cross-attention, dynamic filters, block calls (graph blocks with parameters
and layer arguments, sequential blocks, transformer and SSM blocks, a
recursive block, a multi-output block), ``repeat`` and ``for`` loops,
constants and ``def`` functions.  Every statement also has an equivalent
spelling; ``Program.twin`` is the whole program written that way (same
parameters in the same order), for the metamorphic property.

The text is decorated for the formatter's sake (comments, pipes broken over
lines), which never changes its meaning.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

from convdsl.verify.draws import Draw
from convdsl.verify.steps import SPATIAL, STEPS, WIDTHS, Shape, Step, activation, divisors, draw_step, fits, lit

KINDS = ("img", "seq", "tok", "vec", "nhwc", "vol")

# Ops no random program draws, and why.  Every other op is drawn (tests/test_op_registry.py
# generates programs and checks both directions): a new op needs a step in steps.py or a line here.
_QUANT = "made by the quantize pass from conv/linear; prop_quantize checks it against the float network " \
         "and prop_quantize_tvm against TVM"
NOT_DRAWN: dict[str, str] = {
    **{f"batchnorm{nd}d": "drawn as the twin spelling of batchnorm (prop_twin compares the two)" for nd in (1, 2, 3)},
    "quantize": _QUANT, "dequantize": _QUANT, "qlinear": _QUANT, **{f"qconv{nd}d": _QUANT for nd in (1, 2, 3)},
    "cast": "made by the cast pass; prop_cast checks it",
    **{op: "made by the quantize pass from layernorm / gelu / mhsa before quantized layers; prop_quantize checks it "
           "against the float network and prop_quantize_tvm against TVM" for op in ("qlayernorm", "qgelu", "qattention")},
    "packed_attention": "made by the quantize pass, which splits mhsa into linear -> packed_attention -> linear; "
                        "drawn as mhsa",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    kind: str
    shape: Shape


@dataclass
class Program:
    text: str  # the program (decorated)
    twin: str  # the same function, spelled differently; parameters in the same order
    inputs: list[Tensor]
    outputs: list[Tensor]  # the kinds and shapes the generator expects
    ops: set[str] = field(default_factory=set)
    network: str = "net"

    def __str__(self) -> str:
        return self.text


def input_shape(d: Draw, kind: str) -> Shape:
    if kind == "img":
        c, h = d.pick([3, 4, 8, 1, 6]), d.pick([8, 4, 6, 5, 1, 12])
        return ("N", c, h, h if d.flag(70) else d.pick([8, 4, 7, 2]))
    if kind == "seq":
        return ("N", d.pick([4, 2, 8, 3]), d.pick([8, 4, 16, 5, 1, 32]))
    if kind == "tok":
        return ("N", d.pick([4, 6, 1, 9]), d.pick([8, 4, 6, 12]))
    if kind == "vec":
        return ("N", d.pick([8, 4, 2, 16, 6]))
    if kind == "nhwc":
        h = d.pick([4, 6, 3])
        return ("N", h, h if d.flag(70) else d.pick([4, 5]), d.pick([4, 6, 8]))
    return ("N", d.pick([2, 3]), d.pick([4, 3, 2]), d.pick([4, 3, 5]), d.pick([4, 2]))


def type_text(shape: Shape) -> str:
    return "f32[" + ", ".join(str(s) for s in shape) + "]"


# ---- blocks -------------------------------------------------------------------------
@dataclass
class Block:
    name: str
    kind: str  # the input kind it accepts
    style: str
    text: str
    nd: int = 0


def define_block(d: Draw, name: str, kind: str) -> Block:
    """A block definition for inputs of ``kind``; its body works for any size of that kind."""
    if kind == "tok":
        if d.flag(70):
            text = (f"block {name}(heads, hidden=16, act=gelu)(x) {{\n"
                    f"    x = x + (x | layernorm | mhsa(heads))\n"
                    f"    return x + (x | layernorm | linear(hidden) | act | linear(dim(x, 2)))\n}}\n")
            return Block(name, kind, "transformer", text)
        text = f"block {name}(c, act=gelu) = layernorm | linear(c) | act\n"
        return Block(name, kind, "seq_tok", text)
    nd = SPATIAL[kind]
    conv = f"conv{nd}d"
    style = d.pick(["residual", "pipeline", "ssm", "recursive", "two_out"] if nd == 1
                   else ["residual", "pipeline", "recursive", "two_out"])
    if style == "pipeline":
        norm = d.pick(["batchnorm", "identity", f"instancenorm{nd}d(affine=true)"])
        return Block(name, kind, style, f"block {name}(c, act=relu) = {conv}(c, 1) | {norm} | act\n", nd)
    if style == "ssm":
        mixer = d.pick(["s4d(state=state)", "selective_scan(state=state, d_conv=2)", "fft_conv()"])
        text = (f"block {name}(state=4, act=silu)(x) {{\n"
                f"    y = x | {mixer} | act\n"
                f"    return x + y\n}}\n")
        return Block(name, kind, style, text, nd)
    if style == "recursive":
        text = (f"block {name}(c, depth)(x) {{\n"
                f"    y = x | {conv}(c, 1)\n"
                f"    if depth == 0 {{\n        return y\n    }}\n"
                f"    return y + (y | relu | {name}(c, depth - 1))\n}}\n")
        return Block(name, kind, style, text, nd)
    if style == "two_out":
        text = (f"block {name}(c)(x) {{\n"
                f"    a = x | {conv}(c, 1)\n"
                f"    return a | relu, a | sigmoid\n}}\n")
        return Block(name, kind, style, text, nd)
    norm = d.pick(["batchnorm", "layernorm2d" if nd == 2 else "batchnorm", "groupnorm(1)"])
    body = [f"    y = x | {conv}(c, k, pad=k // 2) | {norm} | act"]
    if d.flag(40):
        body.append(f"    y = y | {conv}(groups=depthwise, k=k, pad=same) | act")
    if d.flag(40):
        body.append(f"    y = y * (y | global_avgpool | {conv}(max(1, c // 2), 1) | relu | {conv}(c, 1) | sigmoid)")
    body.append("    return x + y if channels(x) == c else y")
    text = f"block {name}(c, k=3, act=relu)(x) {{\n" + "\n".join(body) + "\n}\n"
    return Block(name, kind, style, text, nd)


ACT_ARGS = ["relu", "gelu", "silu", "identity", "leaky_relu(slope=0.2)", "tanh"]


def block_call(d: Draw, b: Block, shape: Shape) -> Optional[tuple[str, list[Shape], bool]]:
    """(call text, output shapes, whether it maps shape to itself when called so) or None."""
    if b.kind == "tok":
        c = shape[2]
        if b.style == "transformer":
            heads = d.pick(divisors(c))
            hidden = d.pick([None, 8, 4])
            act = d.pick([None, *ACT_ARGS])
            return _args(b.name, heads, hidden=hidden, act=act), [shape], True
        out = d.pick([c, *WIDTHS])
        return _args(b.name, out, act=d.pick([None, *ACT_ARGS])), [(*shape[:2], out)], out == c
    c = shape[1]
    if "instancenorm" in b.text and math.prod(shape[2:]) == 1:
        return None  # the op table refuses instance norm over one spatial element
    if b.style == "ssm":
        return _args(b.name, state=d.pick([None, 2, 8]), act=d.pick([None, *ACT_ARGS])), [shape], True
    out = d.pick([c, *WIDTHS])
    o_shape = (shape[0], out, *shape[2:])
    if not fits(o_shape):
        return None
    if b.style == "recursive":
        return _args(b.name, out, d.int(0, 2)), [o_shape], out == c
    if b.style == "two_out":
        return _args(b.name, out), [o_shape, o_shape], False
    if b.style == "pipeline":
        return _args(b.name, out, act=d.pick([None, *ACT_ARGS])), [o_shape], out == c
    k = d.pick([None, 1, 5])
    return _args(b.name, out, k=k, act=d.pick([None, *ACT_ARGS])), [o_shape], out == c


def _args(name: str, *pos, **kw) -> str:
    parts = [lit(p) for p in pos] + [f"{k}={v if isinstance(v, str) else lit(v)}" for k, v in kw.items()
                                     if v is not None]
    return f"{name}({', '.join(parts)})"


# ---- the builder --------------------------------------------------------------------
class Builder:
    def __init__(self, d: Draw, max_statements: int = 8, focus: Optional[Sequence[str]] = None,
                 kinds: Sequence[str] = KINDS) -> None:
        self.d = d
        self.kinds = list(kinds)
        self.max_statements = max_statements
        self.focus = tuple(focus or ())
        self.menu = [s for s in STEPS if s[0] in self.focus] if focus else STEPS
        self.pool: list[Tensor] = []
        self.lines: list[str] = []
        self.twin: list[str] = []
        self.blocks: list[Block] = []
        self.ops: set[str] = set()
        self.n = 0
        self.labels = 0
        self.uses_consts = False

    # -- helpers ------------------------------------------------------------------
    def fresh(self) -> str:
        self.n += 1
        return f"t{self.n}"

    def label(self) -> str:
        self.labels += 1
        # every third label is quoted with the characters state_dict keys use (block1-0, fc:0); by
        # count, not drawn, so the programs hypothesis draws stay the ones they were
        if self.labels % 3 == 0:
            return f'"p{self.labels}{["-0", ":1", "-a.b-2"][self.labels // 3 % 3]}"'
        return f"p{self.labels}"

    def pick_tensor(self, pred=lambda t: True) -> Optional[Tensor]:
        cands = [t for t in reversed(self.pool) if pred(t)]  # the newest first: shrinks to chains
        return self.d.pick(cands) if cands else None

    def add(self, name: str, kind: str, shape: Shape) -> Tensor:
        t = Tensor(name, kind, shape)
        self.pool.append(t)
        return t

    def emit(self, main: str, alt: Optional[str] = None) -> None:
        self.lines.append(main)
        self.twin.append(alt if alt is not None else main)

    # -- statements ----------------------------------------------------------------
    def pipe(self, src: Tensor) -> None:
        kind, shape = src.kind, src.shape
        stages, alts = [], []
        for i in range(self.d.int(1, 3)):
            step = draw_step(self.d, kind, shape, self.menu)
            text = self._consts(step.text)
            if " | " not in step.text and "(" in step.text and self.d.flag(15):
                lbl = self.label()
                text += f" as {lbl}"
                alt = None if step.alt is None else step.alt + f" as {lbl}"
                if alt is not None and " | " in step.alt:
                    alt = None  # the label belongs to one op; keep the twin equal here
                stages.append(text)
                alts.append(alt or text)
            else:
                stages.append(text)
                alts.append(step.alt or step.text)
            self.ops.update(step.ops)
            kind, shape = step.kind, step.shape
        out = self.fresh()
        self.emit(f"{out} = {src.name} | " + " | ".join(stages), f"{out} = {src.name} | " + " | ".join(alts))
        self.add(out, kind, shape)

    def _consts(self, text: str) -> str:
        """Sometimes spell a width through the constant W or the function half()."""
        m = re.match(r"(conv[123]d|linear)\((\d+)", text)
        if not m or not self.d.flag(10):
            return text
        v = int(m.group(2))
        self.uses_consts = True
        spelled = "W" if v == 8 else f"half({2 * v})"
        return text[:m.start(2)] + spelled + text[m.end(2):]

    def branch(self, src: Tensor) -> Tensor:
        """A tensor of src's shape computed from src (a residual branch)."""
        for _ in range(3):
            step = draw_step(self.d, src.kind, src.shape, self.menu)
            if step.shape == src.shape and step.kind == src.kind:
                break
        else:
            step = activation(self.d, src.kind, src.shape)
        out = self.fresh()
        self.ops.update(step.ops)
        self.emit(f"{out} = {src.name} | {step.text}", f"{out} = {src.name} | {step.alt or step.text}")
        return self.add(out, src.kind, src.shape)

    def binary(self, a: Tensor) -> None:
        partners = [t for t in self.pool if t.shape == a.shape and t.kind == a.kind]
        b = self.d.pick(partners) if len(partners) > 1 and self.d.flag(60) else self.branch(a)
        out = self.fresh()
        i = self.d.int(0, 4)
        if i == 0:
            self.emit(f"{out} = {a.name} + {b.name}", f"{out} = ({a.name}, {b.name}) | add")
            self.ops.add("add")
        elif i == 1:
            self.emit(f"{out} = {a.name} - {b.name}", f"{out} = {a.name} + -{b.name}")
            self.ops.add("sub")
        elif i == 2:
            self.emit(f"{out} = {a.name} * {b.name}", f"{out} = mul({a.name}, {b.name})")
            self.ops.add("mul")
        elif i == 3:
            self.emit(f"{out} = {a.name} / (sigmoid({b.name}) + 0.5)",
                      f"{out} = div({a.name}, {b.name} | sigmoid | affine(shift=0.5))")
            self.ops.update({"div", "sigmoid", "affine"})
        else:  # three-way sum
            self.emit(f"{out} = ({a.name}, {b.name}, {a.name}) | add", f"{out} = {a.name} + {b.name} + {a.name}")
            self.ops.add("add")
        self.add(out, a.kind, a.shape)

    def affine(self, a: Tensor) -> None:
        out = self.fresh()
        s, b = self.d.pick([(0.5, 1.0), (2, 0), (-1.5, 0.25), (1, -3)])
        main = f"{a.name} * {lit(s)}" + (f" + {lit(b)}" if b else "")
        self.emit(f"{out} = {main}", f"{out} = affine({a.name}, scale={lit(float(s))}, shift={lit(float(b))})")
        self.ops.add("affine")
        self.add(out, a.kind, a.shape)

    def concat(self, a: Tensor) -> None:
        dim = 1 if a.kind in SPATIAL else len(a.shape) - 1
        rank = len(a.shape)
        same = [t for t in self.pool if t.kind == a.kind and len(t.shape) == rank and t is not a
                and all(x == y for i, (x, y) in enumerate(zip(t.shape, a.shape)) if i != dim)]
        if same and self.d.flag(60):
            b = self.d.pick(same)
        else:
            w = self.d.pick(WIDTHS)
            op = f"conv{SPATIAL[a.kind]}d({w}, 1)" if a.kind in SPATIAL else f"linear({w})"
            shape = list(a.shape)
            shape[dim] = w
            if not fits(tuple(shape)):
                return self.pipe(a)
            name = self.fresh()
            self.emit(f"{name} = {a.name} | {op}")
            self.ops.add(op.split("(")[0])
            b = self.add(name, a.kind, tuple(shape))
        shape = list(a.shape)
        shape[dim] = a.shape[dim] + b.shape[dim]
        if not fits(tuple(shape)):
            return self.pipe(a)
        out = self.fresh()
        self.emit(f"{out} = ({a.name}, {b.name}) | concat(dim={dim})",
                  f"{out} = concat({a.name}, {b.name}, dim={dim - rank})")
        self.ops.add("concat")
        self.add(out, a.kind, tuple(shape))

    def split(self, a: Tensor) -> None:
        dim = 1 if a.kind in SPATIAL else len(a.shape) - 1
        n = a.shape[dim]
        if n < 2:
            return self.pipe(a)
        x, y = self.fresh(), self.fresh()
        if n % 2 == 0 and self.d.flag():
            sizes = [n // 2, n // 2]
            self.emit(f"{x}, {y} = {a.name} | split(chunks=2, dim={dim})",
                      f"{x}, {y} = {a.name} | split({lit(sizes)}, dim={dim})")
        else:
            first = self.d.int(1, n - 1)
            sizes = [first, n - first]
            self.emit(f"{x}, {y} = {a.name} | split({lit(sizes)}, dim={dim})")
        self.ops.add("split")
        for name, s in zip((x, y), sizes):
            shape = list(a.shape)
            shape[dim] = s
            self.add(name, a.kind, tuple(shape))

    def gate(self, a: Tensor) -> None:
        out = self.fresh()
        if a.kind in SPATIAL and a.kind != "vol":
            nd, c = SPATIAL[a.kind], a.shape[1]
            r = max(1, c // 2)
            if self.d.flag():
                self.emit(f"{out} = {a.name} * ({a.name} | global_avgpool | conv{nd}d({r}, 1) | relu "
                          f"| conv{nd}d({c}, 1) | sigmoid)")
                self.ops.update({"global_avgpool", f"conv{nd}d", "mul", "sigmoid"})
            else:
                ones = ", ".join(["1"] * nd)
                self.emit(f"{out} = {a.name} + ({a.name} | parameter([{c}, {ones}], init=uniform, scale=1.0))")
                self.ops.update({"parameter", "add"})
        else:
            self.emit(f"{out} = {a.name} * sigmoid({a.name})", f"{out} = {a.name} | silu")
            self.ops.update({"mul", "sigmoid"})
        self.add(out, a.kind, a.shape)

    def attention_by_hand(self, q: Tensor) -> None:
        n, L, c = q.shape
        keys = [t for t in self.pool if t.kind == "tok" and t.shape[2] == c]
        k = self.d.pick(keys)
        s, o = self.fresh(), self.fresh()
        scale = lit(1 / math.sqrt(c))
        self.emit(f"{s} = softmax(({q.name} @ transpose({k.name}, 1, 2)) * {scale}, dim=-1)",
                  f"{s} = (({q.name}, {k.name} | permute([0, 2, 1])) | matmul) * {scale} | softmax")
        self.emit(f"{o} = {s} @ {k.name}")
        self.ops.update({"matmul", "transpose", "softmax", "affine"})
        self.add(s, "tok", (n, L, k.shape[1]))
        self.add(o, "tok", (n, L, c))

    def cross_attention(self, q: Tensor) -> None:
        ctx = self.pick_tensor(lambda t: t.kind == "tok")
        n, L, c = q.shape
        dim = self.d.pick([None, 8, 4])
        heads = self.d.pick(divisors(dim or c))
        out = self.fresh()
        kw = f", dim={dim}" if dim else ""
        self.emit(f"{out} = ({q.name}, {ctx.name}) | cross_attention({heads}{kw})")
        self.ops.add("cross_attention")
        self.add(out, "tok", (n, L, dim or c))

    def dynamic_filter(self, a: Tensor) -> None:
        n, c, h, w = a.shape
        k = self.d.pick([3, 1, 5])
        g = self.d.pick(divisors(c))
        kern, out = self.fresh(), self.fresh()
        if not fits((n, g * k * k, h, w)):
            return self.pipe(a)
        dil = self.d.pick([None, 2])
        self.emit(f"{kern} = {a.name} | conv2d({g * k * k}, 1)")
        self.emit(f"{out} = ({a.name}, {kern}) | dynamic_filter({k}" + (f", dilation={dil})" if dil else ")"))
        self.ops.update({"conv2d", "dynamic_filter"})
        self.add(kern, "img", (n, g * k * k, h, w))
        self.add(out, "img", a.shape)

    def call_block(self, a: Tensor) -> None:
        if a.kind not in ("img", "seq", "tok"):
            return self.pipe(a)
        mine = [b for b in self.blocks if b.kind == a.kind]
        if mine and self.d.flag(40):
            b = self.d.pick(mine)
        else:
            b = define_block(self.d, f"b{len(self.blocks)}", a.kind)
            self.blocks.append(b)
        made = block_call(self.d, b, a.shape)
        if made is None:
            return self.pipe(a)
        text, shapes, keeps = made
        self.ops.add(f"block:{b.style}")
        form = self.d.int(0, 4)
        if len(shapes) == 2:
            x, y = self.fresh(), self.fresh()
            self.emit(f"{x}, {y} = {a.name} | {text}")
            self.add(x, a.kind, shapes[0])
            self.add(y, a.kind, shapes[1])
            return
        out = self.fresh()
        if form == 1:
            self.emit(f'{out} = {a.name} | {text} as "s{out}"')
        elif form == 2:
            name, rest = text.split("(", 1)
            self.emit(f"{out} = {name}({a.name}, {rest}" if rest != ")" else f"{out} = {name}({a.name})")
        elif form == 3 and keeps:
            self.emit(f"{out} = {a.name} | {text}")
            self.emit(f"repeat {self.d.int(1, 2)} {{\n        {out} = {out} | {text}\n    }}")
        elif form == 4 and b.style in ("residual", "pipeline") and a.kind != "tok":
            widths = [self.d.pick(WIDTHS) for _ in range(self.d.int(1, 2))]
            name = text.split("(", 1)[0]
            self.emit(f"{out} = {a.name}")
            self.emit(f"for i, c in enumerate({lit(widths)}) {{\n"
                      f'        {out} = {out} | {name}(c) as "{out}_{{i}}"\n    }}')
            shapes = [(a.shape[0], widths[-1], *a.shape[2:])]
        else:
            self.emit(f"{out} = {a.name} | {text}")
        self.add(out, a.kind, shapes[0])

    def _statement(self, d: Draw, first: bool) -> bool:
        if not d.flag(85) and not first:
            return False
        outer, self.d = self.d, d
        try:
            self.statement()
        finally:
            self.d = outer
        return True

    def statement(self) -> None:
        d = self.d
        a = self.pick_tensor()
        if self.focus:  # aimed at some op families: pipes and residual branches only
            return self.pipe(a) if d.int(0, 1) == 0 else self.binary(a)
        action = d.int(0, 8)
        if action == 0:
            return self.pipe(a)
        if action == 1:
            return self.binary(a)
        if action == 2:
            return self.call_block(a)
        if action == 3:
            return self.concat(a)
        if action == 4:
            return self.split(a)
        if action == 5:
            return self.affine(a)
        if action == 6:
            return self.gate(a)
        if action == 7 and a.kind == "tok":
            return self.attention_by_hand(a) if d.flag() else self.cross_attention(a)
        if action == 8 and a.kind == "img":
            return self.dynamic_filter(a)
        if action == 8:
            return self.twice(a)
        return self.pipe(a)

    def twice(self, a: Tensor) -> None:
        """The same parameter-free stage twice on one tensor, then combined: what cse merges."""
        from convdsl.verify.steps import flip_rot, pool, reduce

        fn = self.d.pick([activation, pool, reduce, flip_rot])
        step = fn(self.d, a.kind, a.shape) or activation(self.d, a.kind, a.shape)
        if "prelu" in step.text or not fits(step.shape):  # prelu has a weight: two different nodes
            return self.pipe(a)
        x, y, out = self.fresh(), self.fresh(), self.fresh()
        if self.n % 2 == 0:  # one tuple assignment, no parentheses (by count, not drawn: as label())
            self.emit(f"{x}, {y} = {a.name} | {step.text}, {a.name} | {step.text}")
        else:
            self.emit(f"{x} = {a.name} | {step.text}")
            self.emit(f"{y} = {a.name} | {step.text}")
        self.ops.update(step.ops)
        self.add(x, step.kind, step.shape)
        self.add(y, step.kind, step.shape)
        wide = (step.shape[0], 2 * step.shape[1], *step.shape[2:])
        if self.d.flag() and fits(wide):
            self.emit(f"{out} = ({x}, {y}) | concat(dim=1)")
            self.add(out, step.kind, wide)
        else:
            self.emit(f"{out} = {x} + {y}")
            self.add(out, step.kind, step.shape)

    # -- the program ------------------------------------------------------------------
    def build(self) -> Program:
        d = self.d
        inputs = []
        for i in range(1 + d.flag(25)):
            kind = d.pick(self.kinds)
            inputs.append(self.add(f"x{i}", kind, input_shape(d, kind)))
        # one group per statement, each starting with its "one more?" flag (ignored for the first),
        # so that every group has the same layout and the shrinker can delete any of them
        for count in range(self.max_statements):
            if not d.group(lambda g, first=count == 0: self._statement(g, first)):
                break
        made = [t for t in self.pool if t not in inputs] or inputs
        outs = [made[-1]]
        if len(made) > 1 and d.flag(25):
            other = d.pick(made[:-1])
            outs.append(other)
        return self.render(inputs, outs)

    def render(self, inputs: list[Tensor], outs: list[Tensor]) -> Program:
        head = []
        if self.uses_consts:
            head.append("W = 8\ndef half(v) = max(1, v // 2)\n")
        head += [b.text for b in self.blocks]
        sig = ", ".join(f"{t.name}: {type_text(t.shape)}" for t in inputs)
        ret = f"    return {', '.join(t.name for t in outs)}\n}}\n"

        def program(lines: list[str], decorate: bool) -> str:
            body = [self._decorate(line) if decorate else line for line in lines]
            return "\n".join(head + [f"network net({sig}) {{\n" + "".join(f"    {l}\n" for l in body) + ret])

        ops = set(self.ops)
        return Program(program(self.lines, True), program(self.twin, False), inputs, outs, ops)

    def _decorate(self, line: str) -> str:
        d = self.d
        if "\n" not in line and line.count(" | ") >= 2 and d.flag(20):  # a pipe broken over lines
            head, *stages = line.split(" | ")
            line = head + "".join(f"\n        | {s}" for s in stages)
        if "\n" not in line and " as " in line and len(line) % 4 == 0:  # a label on a continuation line
            line = line.replace(" as ", "\n        as ", 1)  # (chosen by length, not drawn: as above)
        if d.flag(10):
            line += "  # " + d.pick(["note", "a comment", "TODO: widen"])
        if d.flag(5):
            line = "# the next statement\n    " + line
        return line


def single_layer(d: Draw) -> Program:
    """``x | conv*d(...)`` or ``x | linear(...)``, then maybe relu: what one quantized layer is."""
    from convdsl.verify.steps import conv, linear

    kind = d.pick(["img", "seq", "vec", "tok", "vol"])
    shape = input_shape(d, kind)
    step = None
    for _ in range(5):
        step = (conv if kind in SPATIAL else linear)(d, kind, shape)
        if step is not None:
            break
    if step is None:
        nd = SPATIAL[kind]
        step = conv(_Fixed(), kind, shape) or Step(f"conv{nd}d(4, 1)", kind, (shape[0], 4, *shape[2:]))
    relu = " | relu" if d.flag(40) else ""
    x = Tensor("x0", kind, shape)
    text = f"network net(x0: {type_text(shape)}) {{\n    t1 = x0 | {step.text}{relu}\n    return t1\n}}\n"
    return Program(text, text, [x], [Tensor("t1", step.kind, step.shape)], set(step.ops))


class _Fixed:
    """Always the first option: the simplest layer."""

    def int(self, lo: int, hi: int) -> int:
        return lo

    def pick(self, options):
        return options[0]

    def flag(self, percent: int = 50) -> bool:
        return False

    def group(self, fn):
        return fn(self)


def generate(d: Draw, max_statements: int = 8, focus: Optional[Sequence[str]] = None,
             kinds: Sequence[str] = KINDS) -> Program:
    """One random program; ``focus`` limits pipe stages to those families of ``steps.STEPS``
    and ``kinds`` the kinds of network inputs."""
    return Builder(d, max_statements, focus, kinds).build()
