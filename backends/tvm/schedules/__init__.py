"""convdsl's own schedules: what the TVM backend runs when nothing was tuned.

Two steps in the pipeline of ``build.py``:

- ``layout_passes`` (Relax, before legalization): convs, depthwise convs and constant-weight
  matmuls become convdsl's kernels in a blocked layout with pre-packed weights (``layout.py``,
  computes in ``kernels.py``); softmax, exp, erf, tanh and GELU become TVM's polynomial
  forms, which vectorize (``fast_math.py``).
- ``ApplySchedules`` (after the tuning database): every PrimFunc not scheduled yet gets, in
  order, the Winograd kernels' rules (``winograd.try_schedule``), the int8 helper's rule (``int8.try_schedule``, when that module exists), then the
  fp32 CPU rules (``cpu.py``); a scheduled function is marked ``tirx.is_scheduled``.

CPU targets only; GPU targets keep DLight.
"""
from __future__ import annotations

import os
import sys

import tvm

from convdsl.backends.tvm.schedules import winograd
from convdsl.backends.tvm.schedules.amx_epilogue import AmxEpilogue
from convdsl.backends.tvm.schedules.cpu import schedule_func
from convdsl.backends.tvm.schedules.fast_math import FastMath
from convdsl.backends.tvm.schedules.layout import BlockedLayout, blocked_layout, blocked_layout_pass

__all__ = ["ApplySchedules", "BlockedLayout", "blocked_layout", "layout_passes", "schedule_module", "is_scheduled"]

SCHEDULED_ATTR = "tirx.is_scheduled"


def layout_passes(spec, precision: str = "f32", winograd: bool = True) -> list:
    if spec.is_gpu:
        return []
    # a quantized program: a residual block's last AMX conv, its add and the next quantize as one kernel
    # (amx_epilogue.py; it matches nothing elsewhere)
    return [blocked_layout_pass(precision, winograd), AmxEpilogue, FastMath]


def is_scheduled(func) -> bool:
    return func.attrs is not None and bool(func.attrs.get(SCHEDULED_ATTR, False))


def _int8_rule():
    try:
        from convdsl.backends.tvm.schedules.int8 import try_schedule
    except ImportError:
        return None
    return try_schedule


def schedule_module(mod: tvm.IRModule, target) -> tvm.IRModule:
    """Schedule every unscheduled PrimFunc of ``mod`` for the CPU ``target``."""
    from tvm import s_tir

    int8 = _int8_rule()
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or is_scheduled(func):
            continue
        new = None
        try:
            new = winograd.try_schedule(func, target)
        except Exception as e:  # noqa: BLE001 - not the shape the rule expects: the generic rules
            if os.environ.get("CONVDSL_SCHEDULE_DEBUG"):
                print(f"[schedules] winograd failed: {type(e).__name__}: {e}", file=sys.stderr)
            new = None
        if new is None and int8 is not None:
            sch = s_tir.Schedule(func)
            try:
                if int8(sch, target):
                    new = sch.mod["main"]
            except Exception:  # noqa: BLE001 - the int8 rule failed: try the fp32 rules
                new = None
        if new is None:
            new = schedule_func(func, target)
        if new is not None:
            updates[gv] = new.with_attr(SCHEDULED_ATTR, True)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


@tvm.transform.module_pass(opt_level=0, name="ConvdslApplySchedules")
def ApplySchedules(mod: tvm.IRModule, ctx) -> tvm.IRModule:  # noqa: N802 - a pass, named like TVM's
    target = tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        return mod
    return schedule_module(mod, target)
