"""Template knobs by workload: the user's tuned records, then the shipped ones, then the model.

convdsl's CPU templates (``cpu.py``, ``int8.py``) take a few integer parameters (knobs) that an
analytic model picks from the shape: the register tile of a conv (``rn`` output columns x ``ov``
channel blocks), of a depthwise conv (``rn``), of a GEMM (``rm`` rows x ``nv`` vectors) and of
the int8 VNNI conv (``ow_t`` x ``ob_t``).  At the point where a template asks its model,
it asks ``choose`` first, which answers, in this order:

1. an override set by the tuner while it measures candidates (``forcing``);
2. the user's database ``<tuning root>/templates.json`` (``$CONVDSL_TUNING_DB`` or
   ``~/.cache/convdsl/tuning``, next to MetaSchedule's folders), written by ``convdsl tune``;
3. the database shipped with convdsl for this CPU's family (``tophub/<family>.json`` beside this
   file: ``avx512``, ``avx512-amx``; only on the vendor's cores it was tuned on), as TVM's TopHub
   shipped tuned logs;
4. the analytic model's choice (the ``default`` argument).

``CONVDSL_TOPHUB=off`` skips 2 and 3 (the analytic model alone).  A record whose knobs do not
fit the workload (wrong names, not a divisor, too many registers), or an unreadable file, is
ignored with a warning; scheduling never fails because of a database.

A workload key names the kernel, not the function: the template, the iteration domain, the
access strides (stride, dilation, operand layout), the dtypes and the vector ISA, e.g.
``conv2d_nchwc:float32:1x4x56x56x16/4x3x3x16:s1x1d1x1:a3f09c2e1:avx512``; a grouped conv's access
ends in its groups (``s1x1d1x1g13``: each output block reduces over its group's input blocks only,
so it is not the dense conv of the same extents).  Two functions with the same conv and different
fused epilogues share a key.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

FORMAT = "convdsl-tophub/1"
SHIPPED_DIR = Path(__file__).with_name("tophub")
USER_FILE = "templates.json"
ENV = "CONVDSL_TOPHUB"  # "off": analytic model only

# template -> its knobs, in the order the template unpacks them
KNOBS: dict[str, tuple[str, ...]] = {
    "conv2d_nchwc": ("rn", "ov"),
    "dwconv_nchwc": ("rn",),
    "gemm": ("rm", "nv"),
    "int8_conv": ("ow_t", "ob_t"),
}
GROUPS_ATTR = "convdsl.groups"  # kernels.GROUPS_ATTR (a grouped conv2d_nchwc's groups)
INT8_MAX_ACCUMULATORS = 15  # int8.MAX_ACCUMULATORS (the alloca limit), repeated to keep this module light


class TophubWarning(UserWarning):
    """A database file or record that was ignored."""


@dataclass(frozen=True)
class Workload:
    """One scheduled kernel, as the template sees it."""

    kind: str  # a key of KNOBS
    dtype: str  # the dtypes of the block's operands and result
    spatial: tuple[int, ...]  # extents of the block's spatial iterators
    reduce: tuple[int, ...]  # extents of its reduction iterators
    access: str  # stride/dilation ("s2x2d1x1") for convs, "" otherwise
    pattern: str  # short hash of every read's index coefficients (the operand layouts)
    isa: str  # "avx512", "v8r16" (f32: lanes, registers); "avx512vnni", "avx2-vpmaddubsw", ... (int8)
    lanes: int = 0  # gemm: the width of a column vector
    registers: int = 32

    @property
    def key(self) -> str:
        dims = "x".join(map(str, self.spatial)) + "/" + "x".join(map(str, self.reduce))
        extra = [self.access] if self.access else []
        extra += [f"l{self.lanes}"] if self.kind == "gemm" else []
        return ":".join([self.kind, self.dtype, dims, *extra, self.pattern, self.isa])


# ---- workloads from a schedule block ------------------------------------------------------------
INT8_INSTRUCTION_ATTR = "convdsl.int8_instruction"  # schedules/int8.py's INSTRUCTION_ATTR: the conv block's layout
# an int8 conv's tag: the instruction its layout was packed for (VNNI's two layouts share one: their keys differ
# in the pattern); a block without the annotation is a VNNI one, as every int8 conv was before AVX2's layouts
INT8_ISA = {"vpdpbusd": "avx512vnni", "vpdpbusd-ymm": "avx512vnni", "vpmaddubsw": "avx2-vpmaddubsw",
            "vpmaddwd": "avx2-vpmaddwd"}


def _isa(hw, kind: str, block=None) -> str:
    if kind == "int8_conv":
        instruction = block.annotations.get(INT8_INSTRUCTION_ATTR) if block is not None else None
        return "avx512vnni" if instruction is None else INT8_ISA.get(str(instruction), str(instruction))
    return "avx512" if (hw.lanes, hw.registers) == (16, 32) else f"v{hw.lanes}r{hw.registers}"


def workload_of(kind: str, sch, block, hw=None, lanes: int = 0, isa: str | None = None) -> Workload:
    """The workload of ``block`` (the template's main block) for template ``kind``; ``isa`` overrides the tag
    (the instruction set the knobs were measured on) that the block and ``hw`` imply."""
    from tvm.sym.pattern import detect_linear_equation

    b = sch.get(block)
    ivs = list(b.iter_vars)
    spatial = tuple(_key_extent(iv.dom.extent) for iv in ivs if int(iv.iter_type) == 0)
    reduce = tuple(_key_extent(iv.dom.extent) for iv in ivs if int(iv.iter_type) == 2)
    variables = [iv.var for iv in ivs]
    coeffs = []
    for region in b.reads:
        for r in region.region:
            c = detect_linear_equation(r.min, variables)
            coeffs.append(",".join(str(int(v)) for v in c) if len(c) else "?")
    pattern = hashlib.sha256(";".join(coeffs).encode()).hexdigest()[:8]
    access = ""
    if kind in ("conv2d_nchwc", "dwconv_nchwc", "int8_conv"):
        access = _conv_access(b, variables, detect_linear_equation)
    if GROUPS_ATTR in b.annotations:  # a grouped conv: the same extents as a dense one, another reduction
        access += f"g{int(b.annotations[GROUPS_ATTR])}"
    dtypes = sorted({str(r.source.dtype) for r in b.reads} | {str(w.source.dtype) for w in b.writes})
    return Workload(kind, "-".join(dtypes), spatial, reduce, access, pattern, isa or _isa(hw, kind, b),
                    lanes, hw.registers if hw else 32)


def _key_extent(extent) -> int:
    """An iterator's extent in a key; a symbolic one (the batch of a dynamic-batch build) counts as
    1: the knobs tile one image (or row), so a dynamic kernel takes those recorded for a batch of 1."""
    from tvm import tirx

    return int(extent) if isinstance(extent, tirx.IntImm) else 1


def _conv_access(b, variables, detect) -> str:
    """``s{sh}x{sw}d{dh}x{dw}`` from the data read ``x[..., y*sh + ry*dh, x*sw + rx*dw, ...]``."""
    y, x = variables[2], variables[3]  # (n, c, y, x, ...) in every conv template
    red = [v for v, iv in zip(variables, b.iter_vars) if int(iv.iter_type) == 2]
    ry, rx = (red[1], red[2]) if len(red) >= 4 else (red[0], red[1])  # (ic, kh, kw, ic[, pair]) or (kh, kw)
    for region in b.reads:
        mins = [r.min for r in region.region]
        if len(mins) < 4:
            continue
        cy, cx = detect(mins[2], [y, ry]), detect(mins[3], [x, rx])
        if len(cy) == 3 and len(cx) == 3 and int(cy[0]) > 0 and int(cx[0]) > 0:
            return f"s{int(cy[0])}x{int(cx[0])}d{int(cy[1])}x{int(cx[1])}"
    return "s?"


# ---- which knobs fit a workload -------------------------------------------------------------------
def fits(wl: Workload, knobs: tuple[int, ...]) -> bool:
    """Whether ``knobs`` are a valid setting of ``wl``'s template (what the template can apply)."""
    if len(knobs) != len(KNOBS[wl.kind]) or any(not isinstance(k, int) or k < 1 for k in knobs):
        return False
    if wl.kind == "conv2d_nchwc":  # spatial (n, ocb, oh, ow, ob)
        rn, ov = knobs
        # 16 registers (AVX2): a row's last tile may be a guarded partial one (cpu._conv_tile_16's choice)
        columns = rn <= wl.spatial[3] if wl.registers < 32 else wl.spatial[3] % rn == 0
        return columns and wl.spatial[1] % ov == 0 and rn * ov <= wl.registers
    if wl.kind == "dwconv_nchwc":
        return wl.spatial[3] % knobs[0] == 0 and knobs[0] <= wl.registers
    if wl.kind == "gemm":  # spatial (..., m, n); rm need not divide m
        rm, nv = knobs
        m = wl.spatial[-2] if len(wl.spatial) > 1 else 1
        nvecs = wl.spatial[-1] // wl.lanes if wl.lanes else 0
        return rm <= m and nvecs > 0 and nvecs % nv == 0 and rm * nv <= wl.registers
    if wl.kind == "int8_conv":  # spatial (n, ob, oh, ow, 16)
        ow_t, ob_t = knobs
        return wl.spatial[3] % ow_t == 0 and wl.spatial[1] % ob_t == 0 and ow_t * ob_t <= INT8_MAX_ACCUMULATORS
    return False


def space(wl: Workload) -> list[tuple[int, ...]]:
    """Every valid knob setting of ``wl`` (the tuner's candidates)."""
    from convdsl.backends.tvm.schedules.kernels import divisors

    s = wl.spatial
    if wl.kind == "conv2d_nchwc":
        columns = range(1, s[3] + 1) if wl.registers < 32 else divisors(s[3])
        cands = [(rn, ov) for ov in divisors(s[1]) if ov <= 8 for rn in columns]
    elif wl.kind == "dwconv_nchwc":
        cands = [(rn,) for rn in divisors(s[3])]
    elif wl.kind == "gemm":
        m = s[-2] if len(s) > 1 else 1
        cands = [(rm, nv) for nv in (1, 2, 3, 4, 6, 8) for rm in range(1, min(m, wl.registers) + 1)]
    else:
        cands = [(ow, ob) for ob in divisors(s[1]) for ow in divisors(s[3])]
    return [c for c in cands if fits(wl, c)]


# ---- databases --------------------------------------------------------------------------------------
def user_db_path(root: str | os.PathLike | None = None) -> Path:
    from convdsl.backends.tvm.tuning import db_root

    return db_root(root) / USER_FILE


def shipped_paths(family: str | None = None) -> list[Path]:
    """The shipped database of a CPU family (``tophub/<family>.json``; default: this machine's, from its
    CPU flags: ``avx512`` for AVX-512 without AMX, ``avx512-amx`` with AMX, see ``targets.cpu_family``).
    This machine's file is used only where its header's ``vendor`` is this CPU's (or unset): the knobs are
    register tiles measured on one vendor's cores (``avx512.json`` on Zen 4, whose 512-bit instructions run
    as two halves, took tiles a quarter of the analytic model's for depthwise convs), so an Ice Lake does
    not take Zen 4's; it keeps the analytic model until a file tuned on its own cores ships."""
    from convdsl.backends.tvm.targets import cpu_family, cpu_vendor

    path = SHIPPED_DIR / f"{family or cpu_family()}.json"
    if not path.is_file():
        return []
    vendor = (read_db(path).get("header") or {}).get("vendor")
    if family is None and vendor and vendor != cpu_vendor():
        return []
    return [path]


_cache: dict[Path, tuple[float, dict]] = {}
_warned: set[str] = set()


def _warn(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, TophubWarning, stacklevel=3)


def read_db(path: Path) -> dict[str, Any]:
    """``{"format", "header", "records"}`` of a database file; an empty one when it is missing or
    unreadable (with a warning)."""
    empty = {"format": FORMAT, "header": {}, "records": {}}
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return empty
    hit = _cache.get(path)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("records"), dict):
            raise ValueError(f"not a {FORMAT} file")
    except (OSError, ValueError) as e:
        _warn(f"ignoring the template database {path}: {e}")
        data = empty
    _cache[path] = (mtime, data)
    return data


def write_db(path: Path, records: dict[str, Any], header: dict[str, Any] | None = None) -> None:
    """Merge ``records`` into the database at ``path`` (atomically; keys sorted, one record a line)."""
    old = read_db(path)
    merged = {**old["records"], **records}
    head = {**old.get("header", {}), **(header or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(merged[k], sort_keys=True)}" for k in sorted(merged))
    text = (f'{{"format": {json.dumps(FORMAT)},\n "header": {json.dumps(head, sort_keys=True)},\n'
            f' "records": {{\n{lines}\n }}\n}}\n')
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    _cache.pop(path, None)


def _knobs_of(wl: Workload, record: Any, where: Path) -> tuple[int, ...] | None:
    names = KNOBS[wl.kind]
    try:
        knobs = tuple(record["knobs"][n] for n in names)
        if not fits(wl, knobs):
            raise ValueError(f"{dict(zip(names, knobs))} does not fit")
    except (KeyError, TypeError, ValueError) as e:
        _warn(f"ignoring the record for {wl.key} in {where}: {e}")
        return None
    return knobs


def lookup(wl: Workload) -> tuple[tuple[int, ...], str] | None:
    """(knobs, source) from the user's database, else the shipped ones; None when neither has it."""
    if os.environ.get(ENV, "").lower() in ("off", "0", "no", "false"):
        return None
    for path, source in [(user_db_path(), "user")] + [(p, "shipped") for p in shipped_paths()]:
        record = read_db(path)["records"].get(wl.key)
        if record is not None:
            knobs = _knobs_of(wl, record, path)
            if knobs is not None:
                return knobs, source
    return None


# ---- the hook the templates call ---------------------------------------------------------------------
_forced: contextvars.ContextVar[dict | None] = contextvars.ContextVar("convdsl_tophub_forced", default=None)
_seen: contextvars.ContextVar[list | None] = contextvars.ContextVar("convdsl_tophub_seen", default=None)
ANALYTIC = "analytic"  # forcing(ANALYTIC): every workload gets the model's choice


@contextlib.contextmanager
def forcing(knobs: dict[str, tuple[int, ...]] | str) -> Iterator[None]:
    """Within the block, ``choose`` answers ``knobs[key]`` (or the model's choice for the other
    keys, and for every key when ``knobs`` is ``ANALYTIC``), without reading any database."""
    token = _forced.set({} if knobs == ANALYTIC else dict(knobs))
    try:
        yield
    finally:
        _forced.reset(token)


@contextlib.contextmanager
def recording() -> Iterator[list]:
    """Collect ``(workload, model's knobs, chosen knobs, source)`` of every ``choose`` call in the block
    (source: "user" or "shipped" database, "forced", or "analytic").
    Blocks nest: an enclosing recording also gets what an inner one saw."""
    seen: list = []
    outer = _seen.get()
    token = _seen.set(seen)
    try:
        yield seen
    finally:
        _seen.reset(token)
        if outer is not None:
            outer.extend(seen)


def choose(kind: str, sch, block, hw, default: tuple[int, ...], lanes: int = 0, isa: str | None = None) -> tuple[int, ...]:
    """The knobs of template ``kind`` for ``block``: forced, user, shipped, else ``default``."""
    default = tuple(int(v) for v in default)
    try:
        wl = workload_of(kind, sch, block, hw, lanes, isa)
    except Exception as e:  # noqa: BLE001 - a key we cannot compute: the model decides
        _warn(f"no workload key for a {kind} block ({type(e).__name__}: {e}); using the analytic choice")
        return default
    forced = _forced.get()
    if forced is not None:
        chosen, source = forced.get(wl.key, default), "forced"
    else:
        chosen, source = lookup(wl) or (default, ANALYTIC)
    seen = _seen.get()
    if seen is not None:
        seen.append((wl, default, chosen, source))
    return chosen
