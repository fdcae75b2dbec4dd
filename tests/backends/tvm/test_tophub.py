"""Template knobs by workload (backends/tvm/schedules/tophub.py, template_tuner.py, `convdsl tune`):
stable keys, lookup order user > shipped > analytic, a recorded setting reaches the scheduled
TIR and still computes the torch function, the tuner writes records, bad records are ignored."""
from __future__ import annotations

import json
import re

import pytest

from .conftest import assert_close, graph_of, one_op, random_inputs, torch_outputs

CONV = one_op("conv2d", [[1, 16, 14, 14]], 32, k=3, pad=1)  # NCHW16c: 2 output blocks, ow 14


@pytest.fixture(autouse=True)
def direct_convs(monkeypatch):
    """The direct conv's template (conv2d_nchwc) is what these tests tune: no 3x3 stride-1 conv
    taken by Winograd (schedules/winograd.py; tested in test_winograd.py)."""
    from convdsl.backends.tvm.schedules import winograd

    monkeypatch.setattr(winograd, "choose_m", lambda *a: None)


@pytest.fixture()
def dbs(tmp_path, monkeypatch):
    """An empty user database root and an empty shipped folder, for this test only."""
    from convdsl.backends.tvm.schedules import tophub

    user = tmp_path / "user"
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setenv("CONVDSL_TUNING_DB", str(user))
    monkeypatch.delenv(tophub.ENV, raising=False)
    monkeypatch.setattr(tophub, "SHIPPED_DIR", shipped)
    from convdsl.backends.tvm.targets import cpu_family

    return tophub.user_db_path(), shipped / f"{cpu_family()}.json"  # the file of this machine's family


def _spec():
    from convdsl.backends.tvm.targets import make_target

    return make_target("tvm-llvm")


def _kernels(text: str):
    from convdsl.backends.tvm.schedules import template_tuner as tt

    spec = _spec()
    return tt.kernels(tt.optimized_module(graph_of(text), spec), spec.tvm_target())


def _conv(text: str = CONV):
    (k,) = [k for k in _kernels(text).values() if k.workload.kind == "conv2d_nchwc"]
    return k


def _write(path, records: dict) -> None:
    from convdsl.backends.tvm.schedules import tophub

    tophub.write_db(path, records, {"note": "test"})


def test_keys_are_stable_and_name_the_shape():
    a, b = _conv(), _conv()
    assert a.workload.key == b.workload.key and a.workload.key.startswith("conv2d_nchwc:float32:")
    assert "s1x1d1x1" in a.workload.key and "fused" not in a.workload.key  # not the function name
    other = [_conv(one_op("conv2d", [[1, 16, 14, 14]], 32, k=3, pad=1, stride=2)),
             _conv(one_op("conv2d", [[1, 16, 16, 16]], 32, k=3, pad=1)),
             _conv(one_op("conv2d", [[1, 16, 14, 14]], 32, k=3, pad=2, dilation=2))]
    keys = {a.workload.key} | {k.workload.key for k in other}
    assert len(keys) == 4, keys
    # the same conv with another fused epilogue is the same workload
    relu = _conv("network t(x: f32[1, 16, 14, 14]) {\n    return x | conv2d(32, 3, pad=1) | relu\n}\n")
    assert relu.workload.key == a.workload.key


def test_lookup_order_user_then_shipped_then_analytic(dbs, monkeypatch):
    from convdsl.backends.tvm.schedules import tophub

    user, shipped = dbs
    k = _conv()
    wl = k.workload
    assert tophub.lookup(wl) is None  # nothing recorded: the model decides
    others = [c for c in tophub.space(wl) if c != k.analytic]
    ship_knobs, user_knobs = others[0], others[1]
    _write(shipped, {wl.key: {"knobs": dict(zip(tophub.KNOBS[wl.kind], ship_knobs))}})
    assert tophub.lookup(wl) == (ship_knobs, "shipped")
    _write(user, {wl.key: {"knobs": dict(zip(tophub.KNOBS[wl.kind], user_knobs))}})
    assert tophub.lookup(wl) == (user_knobs, "user")
    monkeypatch.setenv(tophub.ENV, "off")
    assert tophub.lookup(wl) is None


def _scheduled_conv_script(text: str) -> str:
    import tvm

    from convdsl.backends.tvm.schedules import schedule_module
    from convdsl.backends.tvm.schedules import template_tuner as tt

    spec = _spec()
    target = spec.tvm_target()
    mod = tt.optimized_module(graph_of(text), spec)
    with target:
        mod = schedule_module(mod, target)
    (f,) = [f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and "conv2d_nchwc" in gv.name_hint]
    return f.script()


def _unrolled(script: str) -> list[int]:
    """Extents of the unrolled loops (the register tile's)."""
    return [int(n) for n in re.findall(r"T\.unroll\((?:T\.int64\()?(\d+)", script)]


def test_recorded_knobs_shape_the_build_and_match_torch(dbs):
    from convdsl.backends.tvm import backend
    from convdsl.backends.tvm.schedules import tophub

    user, _ = dbs
    k = _conv()
    rn0, ov0 = k.analytic
    knobs = (7, 1) if (rn0, ov0) != (7, 1) else (2, 2)
    assert tophub.fits(k.workload, knobs)
    _write(user, {k.workload.key: {"knobs": {"rn": knobs[0], "ov": knobs[1]}}})
    text = _scheduled_conv_script(CONV)
    # the register tile: the output columns and channel blocks loops of the tile are unrolled
    unrolled = _unrolled(text)
    assert knobs[0] in unrolled, unrolled
    if knobs[0] != rn0:
        assert rn0 not in unrolled or rn0 in (1, 2, knobs[1]), unrolled
    g = graph_of(CONV)
    xs = random_inputs(g)
    with tophub.recording() as seen:
        run = backend("tvm-llvm").runner(g)
    assert [chosen for wl, _, chosen, _ in seen if wl.key == k.workload.key] == [knobs]  # the build used the record
    assert_close(run(xs), torch_outputs(g, xs))


def test_an_untuned_build_ignores_the_template_databases(dbs):
    """use_db=False (`compile --no-db`, bench's untuned tvm-llvm row): the analytic model alone."""
    from convdsl.backends.tvm import backend
    from convdsl.backends.tvm.schedules import tophub

    user, _ = dbs
    k = _conv()
    knobs = (7, 1) if k.analytic != (7, 1) else (2, 2)
    _write(user, {k.workload.key: {"knobs": {"rn": knobs[0], "ov": knobs[1]}}})
    g = graph_of(CONV)
    with tophub.recording() as seen:
        run = backend("tvm-llvm", use_db=False).runner(g)
    assert [chosen for wl, _, chosen, _ in seen if wl.key == k.workload.key] == [tuple(k.analytic)]
    xs = random_inputs(g)
    assert_close(run(xs), torch_outputs(g, xs))


def test_tuner_writes_a_record(dbs, tmp_path):
    from click.testing import CliRunner

    from convdsl.backends.tvm.schedules import tophub
    from convdsl.cli import main

    user, _ = dbs
    src = tmp_path / "conv.cdl"
    src.write_text(CONV)
    r = CliRunner().invoke(main, ["tune", str(src), "--trials", "3", "--rounds", "2"])
    assert r.exit_code == 0, r.output
    records = tophub.read_db(user)["records"]
    k = _conv()
    rec = records[k.workload.key]
    best = tuple(rec["knobs"][n] for n in tophub.KNOBS["conv2d_nchwc"])
    assert tophub.fits(k.workload, best) and rec["ms"] > 0 and rec["analytic_ms"] >= rec["ms"] * 0.999
    assert tuple(rec["analytic"][n] for n in tophub.KNOBS["conv2d_nchwc"]) == k.analytic and rec["trials"] == 3
    assert tophub.lookup(k.workload) == (best, "user")
    again = CliRunner().invoke(main, ["tune", str(src), "--trials", "3"])  # a second run tunes nothing
    assert again.exit_code == 0 and "nothing to tune" in again.output, again.output


def test_bad_databases_are_ignored_with_a_warning(dbs):
    from convdsl.backends.tvm.schedules import tophub

    user, shipped = dbs
    k = _conv()
    wl = k.workload
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text("{not json")
    _write(shipped, {wl.key: {"knobs": {"rn": 5, "ov": 3}},  # 5 does not divide 14
                     "conv2d_nchwc:float32:unknown": {"knobs": {"rn": 1, "ov": 1}}})
    with pytest.warns(tophub.TophubWarning) as caught:
        assert tophub.lookup(wl) is None
    text = " ".join(str(w.message) for w in caught)
    assert "templates.json" in text and "does not fit" in text
    # the build goes on with the model's choice (each bad record warns once per process)
    script = _scheduled_conv_script(CONV)
    assert k.analytic[0] in _unrolled(script)
    shipped.write_text(json.dumps({"format": tophub.FORMAT, "records": {wl.key: {"rn": 2}}}))
    with pytest.warns(tophub.TophubWarning, match="ignoring the record"):
        assert tophub.lookup(wl) is None


def test_tuner_covers_the_int8_vnni_conv(dbs, tmp_path):
    from convdsl.backends.tvm.schedules import template_tuner as tt, tophub
    from convdsl.backends.tvm.targets import cpu_flags

    if "avx512_vnni" not in cpu_flags():
        pytest.skip("no AVX-512 VNNI here")
    src = one_op("quantize(0.05, 125) | qconv2d", [[1, 16, 14, 14]], 64, 3, pad=1, in_scale=0.05, in_zp=125,
                 out_dtype="u8", out_scale=0.2, out_zp=7, relu=True)
    g = graph_of(src)
    db = tmp_path / "int8.json"
    results = tt.tune_network(g, _spec(), 3, db_file=db, rounds=2, progress=False)
    (r,) = [r for r in results if r.kind == "int8_conv"]
    assert r.key.endswith(":avx512vnni") and r.rejected == 0 and r.best_ms > 0
    rec = tophub.read_db(db)["records"][r.key]
    assert tuple(rec["knobs"][n] for n in tophub.KNOBS["int8_conv"]) == r.best


@pytest.mark.parametrize("mcpu, bits, tag", [("haswell", 7, "avx2-vpmaddubsw"), ("haswell", 8, "avx2-vpmaddwd"),
                                              ("icelake-server", 8, "avx512vnni")])
def test_an_int8_conv_key_names_the_instruction_its_layout_was_packed_for(mcpu, bits, tag):
    """Knobs measured on one int8 instruction are no answer for another's kernel: the int8 conv's key ends with
    the instruction its weights were packed for (AVX2 takes vpmaddubsw for 7-bit weights, vpmaddwd for 8-bit
    ones; VNNI vpdpbusd for either), so a record made on an AVX2 CPU never reads as a VNNI one."""
    import numpy as np

    from convdsl.api import load_graph
    from convdsl.backends.torch import build_module
    from convdsl.backends.tvm.schedules import template_tuner as tt
    from convdsl.backends.tvm.targets import make_target
    from convdsl.passes.quantize import quantize

    src = one_op("conv2d", [[1, 16, 8, 8]], 32, k=3, pad=1)  # 16 Winograd tiles: direct on AVX2 too
    rng = np.random.default_rng(0)
    q = quantize(load_graph(src, seed=0), [rng.standard_normal((4, 16, 8, 8)).astype(np.float32)],
                 build=build_module, weight_bits=bits)
    spec = make_target("tvm-llvm", target_json={"kind": "llvm", "mcpu": mcpu}, precision="int8")
    ks = [k for k in tt.kernels(tt.optimized_module(q, spec, precision="int8"), spec.tvm_target()).values()
          if k.workload.kind == "int8_conv"]
    assert [k.workload.key.rsplit(":", 1)[1] for k in ks] == [tag]


@pytest.mark.parametrize("family", ["avx512", "avx512-amx", "avx2"])
def test_the_shipped_databases_are_well_formed(family):
    """Each family's shipped file (what a build on such a CPU reads): its header says where and how it
    was tuned, every record names one of the templates with all its knobs, and a tuned record is no
    slower than the analytic model's kernel it was measured against."""
    from convdsl.backends.tvm.schedules import tophub

    path = tophub.SHIPPED_DIR / f"{family}.json"
    db = tophub.read_db(path)
    head, records = db["header"], db["records"]
    assert head["family"] == family and head["cpu"] and head["tuning_seconds"] > 0 and head["networks"]
    assert head["vendor"] in ("GenuineIntel", "AuthenticAMD")
    assert len(records) > 50
    for key, rec in records.items():
        kind = key.split(":")[0]
        assert set(rec["knobs"]) == set(tophub.KNOBS[kind]), key
        assert all(isinstance(v, int) and v >= 1 for v in rec["knobs"].values()), key
        assert rec["ms"] <= rec["analytic_ms"] * 1.0001, key
        # the int8 template's tag names the instruction its records were measured on (AVX2: vpmaddubsw, 7-bit
        # weights); the f32 templates' the vector width and registers they were tiled for
        int8_tag = ":avx2-vpmaddubsw" if family == "avx2" else ":avx512vnni"
        assert key.endswith(int8_tag if kind == "int8_conv" else (":v8r16" if family == "avx2" else ":avx512")), key


def test_a_shipped_database_is_used_only_on_its_vendors_cores(dbs, monkeypatch):
    """The family's file tuned on another vendor's cores (Zen 4's knobs on an Ice Lake) is not read: the
    analytic model decides there; a file without a vendor, or this CPU's, is."""
    from convdsl.backends.tvm import targets
    from convdsl.backends.tvm.schedules import tophub

    _, shipped = dbs
    k = _conv()
    wl = k.workload
    ship_knobs = next(c for c in tophub.space(wl) if c != k.analytic)
    _write(shipped, {wl.key: {"knobs": dict(zip(tophub.KNOBS[wl.kind], ship_knobs))}})
    assert tophub.lookup(wl) == (ship_knobs, "shipped")  # no vendor in the header
    monkeypatch.setattr(targets, "cpu_vendor", lambda: "GenuineIntel")
    tophub.write_db(shipped, {}, {"vendor": "AuthenticAMD"})
    assert tophub.shipped_paths() == [] and tophub.lookup(wl) is None
    assert tophub.shipped_paths(targets.cpu_family()) == [shipped]  # asked for by name: read
    monkeypatch.setattr(targets, "cpu_vendor", lambda: "AuthenticAMD")
    assert tophub.lookup(wl) == (ship_knobs, "shipped")


def test_tune_precision_bf16_records_the_vdpbf16ps_conv(dbs, tmp_path):
    """``convdsl tune --precision bf16`` tunes the bf16 build's conv (bf16 weight bits: a
    ``float32-uint16`` workload, beside the f32 one), and the bf16 build takes its record."""
    from click.testing import CliRunner

    from convdsl.backends.tvm.schedules import tophub
    from convdsl.backends.tvm.targets import cpu_flags
    from convdsl.cli import main

    if "avx512_bf16" not in cpu_flags():
        pytest.skip("no AVX512_BF16 here")
    user, _ = dbs
    src = tmp_path / "conv.cdl"
    src.write_text(CONV)
    r = CliRunner().invoke(main, ["tune", str(src), "--precision", "bf16", "--no-amx", "--trials", "3", "--rounds", "2"])
    assert r.exit_code == 0, r.output
    records = tophub.read_db(user)["records"]
    (key,) = [k for k in records if k.startswith("conv2d_nchwc:float32-uint16:")]
    assert not any(k.startswith("conv2d_nchwc:float32:") for k in records)  # the f32 conv is not in a bf16 build
    rec = records[key]
    assert rec["ms"] > 0 and rec["trials"] == 3 and rec["analytic_ms"] >= rec["ms"] * 0.999


def test_tune_precision_int8_refuses_a_float_program(tmp_path):
    from click.testing import CliRunner

    from convdsl.cli import main

    src = tmp_path / "conv.cdl"
    src.write_text(CONV)
    r = CliRunner().invoke(main, ["tune", str(src), "--precision", "int8"])
    assert r.exit_code != 0 and "no quantized convs or linears" in r.output and "convdsl quantize" in r.output
    assert "Traceback" not in r.output


def test_a_dynamic_batch_build_takes_the_knobs_recorded_for_a_batch_of_one(dbs):
    """Issue 14 item 12: `compile --dynamic-batch` keeps N symbolic; the template knobs tile one
    image, so its conv kernels key as batch 1 and take what `convdsl tune` recorded there."""
    from convdsl.artifact import make_inputs
    from convdsl.backends.tvm import backend
    from convdsl.backends.tvm.schedules import tophub

    user, _ = dbs
    k = _conv()
    knobs = (7, 1) if k.analytic != (7, 1) else (2, 2)
    _write(user, {k.workload.key: {"knobs": {"rn": knobs[0], "ov": knobs[1]}}})
    dynamic = CONV.replace("f32[1, 16, 14, 14]", "f32[N, 16, 14, 14]")
    assert dynamic != CONV
    g = graph_of(dynamic)
    with tophub.recording() as seen:
        run = backend("tvm-llvm", dynamic_batch=True).runner(g)
    assert [(chosen, source) for wl, _, chosen, source in seen if wl.key == k.workload.key] == [(knobs, "user")]
    for n in (1, 3):
        xs = make_inputs(g, n, seed=n)
        assert_close(run(xs), torch_outputs(g, xs))


def test_the_tuners_output_check_counts_a_nan_as_a_difference():
    """A candidate whose output has a NaN or infinity where the reference has a number (or another non-finite
    value) differs; before, |o - r| was NaN there and 'NaN > tolerance' let it pass.  The bf16 templates' inputs
    (uint16 bit patterns) are drawn as N(0, 1) values rounded to bf16, not as integers whose bit patterns are
    huge or infinite bf16 numbers (which made their reference outputs inf and NaN)."""
    import numpy as np
    from tvm import te

    from convdsl.backends.tvm.schedules import bf16, template_tuner as tt

    a = np.array([1.0, -2.0, 3.0], np.float32)
    assert tt._same([a + 1e-6], [a])
    assert not tt._same([np.array([1.0, np.nan, 3.0], np.float32)], [a])
    assert not tt._same([np.array([1.0, np.inf, 3.0], np.float32)], [np.array([1.0, -np.inf, 3.0], np.float32)])
    assert tt._same([np.array([np.nan, 2.0], np.float32)], [np.array([np.nan, 2.0], np.float32)])
    assert not tt._same([a + 1.0], [a])
    x = te.placeholder((64, 32), "uint16", name="x")
    f = te.create_prim_func([x, te.compute((64, 32), lambda i, j: x[i, j], name="y")])
    bits = tt.random_args(f)[0]
    values = bf16.bf16_to_f32(bits)
    assert np.isfinite(values).all() and 0.5 < float(values.std()) < 2.0


def test_avx2_conv_tiles_may_end_a_row_with_a_partial_tile():
    """With 16 registers (AVX2) the conv template's last tile of a row may be a guarded partial one
    (cpu._conv_tile_16: on a 7-wide row the model takes 4 columns): such knobs fit and are among the tuner's
    candidates, so the model's own choice, which the tuner records where nothing beats it, is not refused at
    build time ('does not fit', a warning on every build of ResNet-50 on Zen 3 before).  AVX-512's tiles
    divide the row."""
    import dataclasses

    from convdsl.backends.tvm.schedules import template_tuner as tt, tophub
    from convdsl.backends.tvm.targets import make_target

    spec = make_target("tvm-llvm", target_json={"kind": "llvm", "mcpu": "znver3"})
    text = one_op("conv2d", [[1, 64, 7, 7]], 64, k=3, pad=1)
    (k,) = [k for k in tt.kernels(tt.optimized_module(graph_of(text), spec), spec.tvm_target()).values()
            if k.workload.kind == "conv2d_nchwc"]
    assert k.workload.registers == 16 and k.workload.spatial[3] == 7
    assert 7 % k.analytic[0] != 0  # the model's tile does not divide the row
    assert tophub.fits(k.workload, k.analytic) and k.analytic in tophub.space(k.workload)
    assert not tophub.fits(k.workload, (8, 1))  # past the row
    wide = dataclasses.replace(k.workload, registers=32, isa="avx512")
    assert not tophub.fits(wide, (4, 1)) and tophub.fits(wide, (7, 1))
    assert all(7 % rn == 0 for rn, _ in tophub.space(wide))
