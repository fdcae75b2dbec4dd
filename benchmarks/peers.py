"""convdsl against the runtimes people deploy with: OpenVINO, ONNX Runtime, torch.compile (and torch eager).

    pip install -e '.[bench]'        # onnxruntime, openvino, onnx, onnxscript: benchmark-only dependencies
    python benchmarks/peers.py [--nets resnet18,...] [--threads 2] [--rounds 5] [--launches 3] [--agreement 1000] [--doc]
    python benchmarks/peers.py --nets unet,regnet_y_400mf   # transposed / grouped convs (not in the default run)

Per network, every backend runs in its own process (thread pools spin against each other in one
process), built once and then timed in alternating rounds: in each round the processes take
turns (the others wait on a pipe, idle), each timing a block of calls.  That is one launch;
``--launches`` starts every backend's process afresh that many times, since a process's speed varies
from launch to launch (most likely with where its memory lands), which alternating rounds within one
launch cannot cancel: on the 2-vCPU Zen 3 one ResNet-18 int8 process ran 21.7 ms while the process it
alternated with (the same network, another source tree) ran 13.6, and in the next launch the two ran
11.0 and 11.2.  The table shows the median of the launches' medians, each launch's median, and the
ratio to the best peer of the same precision (> 1: convdsl is faster) with its range over the launches.

Rows:
- f32: torch eager, torch.compile, ONNX Runtime (CPU EP, ORT_ENABLE_ALL, N intra-op threads,
  spinning off), OpenVINO with INFERENCE_PRECISION_HINT=f32 (LATENCY hint, N threads), convdsl
  tvm-llvm f32;
- lower precision: OpenVINO with its default precision (what it picks for this CPU: printed),
  OpenVINO bf16 (where the CPU has AVX512_BF16), ONNX Runtime int8 (static QDQ quantization of the f32
  export, calibrated on the same inputs as convdsl's), OpenVINO on that QDQ model, convdsl tvm-llvm
  bf16 and int8 (the program quantized by convdsl's own pass on the same calibration inputs), and
  ``convdsl int8 (QDQ file)``: the very file the ONNX Runtime and OpenVINO int8 rows run, imported
  (``convdsl import``, convdsl/importer/onnx_quant.py) and built by tvm-llvm, its scales and integers
  unchanged.  On an AVX2 CPU without AVX-512 VNNI the QDQ file has 7-bit weights (``reduce_range=True``, what ONNX
  Runtime's documentation recommends there: its u8 x s8 kernels' int16 pair sums saturate with 8-bit
  weights, and convdsl's exact AVX2 kernel, ``vpmaddubsw``, needs them too);
- ``convdsl int8`` is the VNNI build (``amx=False``, ``--no-amx``), ``convdsl int8 (AMX)`` the same
  program with its convs and linears on AMX tiles (``tdpbusd``, backends/tvm/schedules/amx.py);
  ``convdsl bf16`` runs ``vdpbf16ps``, ``convdsl bf16 (AMX)`` its convs on tiles (``tdpbf16ps``); on a
  CPU without AMX-INT8 / AMX-BF16 the AMX rows are refused with the reason.

What is timed: one call per sample on an input already in the form the backend takes (torch
tensor, ONNX Runtime / OpenVINO feeds of the NumPy array, convdsl's ``Runner.timed_call``: the
module on an input put on the device once, synchronized, the call `convdsl bench` times), the
output fetched as each runtime returns it.  The note column says how many cores each row kept busy
over its timed calls (``cores_busy``: the CPU time of all of the process's threads / wall time; about
N for N threads running at once) and, for convdsl, TVM's thread pool as it ran (``pool``).

Accuracy next to the times: bf16 as the max relative error against f32 (torch, same weights and
input); int8 as the max difference from convdsl's torch int8 simulation in output steps (the
simulation's output range / 255: the step of an 8-bit quantization of the output), with the share of
inputs within one step next to the simulation's own spread when every input moves by one ulp (the floor
a backend whose float ops round differently can reach), and top-1 agreement of int8 and bf16 with f32 over ``--agreement`` inputs of the calibration
distribution.  The networks carry convdsl's seeded initial weights (no trained ImageNet weights
here) with every batchnorm's running statistics taken from the calibration batch (``bn_from_calibration``:
what a trained network's are, the statistics of its inputs; with the initial ones, mean 0 and variance 1,
the activations of a deep untrained network vanish, to ~1e-4 at MobileNet-V2's output, and int8 measures
nothing), and the calibration distribution is N(0, 1) images (seed 1); agreement on random weights
says less than it would on a trained network.

The peers run an ONNX export of the network (``onnx_export``).  The four standard networks: torch.onnx.export
of convdsl's generated torch module (the TorchScript exporter), the file a user deploying a torch model would
make.  The seed-paper networks (GFNet's FFT mixing, Serpent's selective scans): convdsl's own ONNX export
(``convdsl compile --backend onnx``: FFTs and scans written as ONNX ops from convdsl's IR), which torch's
exporters handle badly (TorchScript: no rfft2; dynamo: a complex Mul OpenVINO cannot convert, and minutes in
onnxscript's optimizer for Serpent's scans).  ``--exporter torch|convdsl`` uses one exporter for all.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Peers"
NETS = {
    "resnet18": ("examples/resnet18.cdl", ()),
    "resnet50": ("examples/resnet50.cdl", ()),
    "mobilenet_v2": ("examples/mobilenet_v2.cdl", ()),
    "vit_s16": ("examples/vit_b_16.cdl", ("hidden=384", "heads=6", "mlp_dim=1536")),
    "gfnet": ("examples/papers/gfnet.cdl", ()),  # FFT mixing (GFNet)
    "serpent": ("examples/papers/serpent.cdl", ()),  # selective-scan SSM blocks (Serpent)
}
# accepted by --nets, not run by default: networks whose convs issue 16's f32 work took off TVM's generic
# schedule (transposed convs: U-Net's up-convs, DCGAN's padded ones; grouped convs: RegNet's, group width 8)
MORE_NETS = {
    "unet": ("examples/unet.cdl", ()),
    "regnet_y_400mf": ("examples/regnet_y_400mf.cdl", ()),
    "dcgan": ("examples/dcgan.cdl", ()),  # an image out: its top-1 agreement means nothing (--agreement 0)
}
ALL_NETS = {**NETS, **MORE_NETS}
CONVDSL_EXPORT = {"gfnet", "serpent"}  # the peers run convdsl's ONNX export of these (``onnx_export``)
# row -> (precision group, what it compares against)
ROWS = {
    "torch": "f32", "torch.compile": "f32", "onnxruntime": "f32", "openvino f32": "f32", "convdsl f32": "f32",
    "openvino default": "low", "openvino bf16": "low", "onnxruntime int8 (QDQ)": "int8", "openvino int8 (QDQ)": "int8",
    "convdsl bf16": "low", "convdsl int8": "int8", "convdsl bf16 (AMX)": "low", "convdsl int8 (AMX)": "int8",
    "convdsl int8 (QDQ file)": "int8",
}
PEERS_F32 = ("torch.compile", "onnxruntime", "openvino f32")
PEERS_INT8 = ("onnxruntime int8 (QDQ)", "openvino int8 (QDQ)", "openvino default")
CALIB_SAMPLES = 32


# ---- the network in every form the backends take -------------------------------------------------------
def load_graph(name: str):
    from convdsl.cli.common import program_graph

    path, sets = ALL_NETS[name]
    return program_graph(str(ROOT / path), None, sets, (), (), None, 0)


def input_shape(graph) -> list[int]:
    return [d if isinstance(d, int) else 1 for d in graph.input_types()[0].shape]


def calibration_inputs(graph, count: int, seed: int = 1) -> np.ndarray:
    """The calibration distribution: N(0, 1) inputs of the network's shape (batch 1 each)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *input_shape(graph))).astype(np.float32)


def bn_from_calibration(graph, calib: np.ndarray):
    """A copy of ``graph`` whose batchnorms hold the mean and variance of their inputs over the
    calibration batch (the batchnorms in training mode, one pass over all of ``calib``, in order),
    so that every block's activations are normalized as in a trained network."""
    import torch

    from convdsl.backends.torch import build_module

    model = build_module(graph).eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return graph
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # the plain average over the batches seen: here, the one batch
        m.train()
    with torch.no_grad():
        model(torch.from_numpy(calib.reshape(-1, *calib.shape[2:])))
    g = graph.copy()
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            g.params[key] = value.numpy().astype(np.float32)
    return g


def onnx_export(graph, path: Path, exporter: str = "torch") -> Path:
    """The f32 ONNX file the peers run.  ``exporter`` "convdsl": convdsl's own ONNX export (the file
    ``convdsl compile --backend onnx`` writes); "torch": torch.onnx.export of convdsl's generated module (the
    TorchScript exporter; the dynamo one where it lacks an op)."""
    import warnings

    import torch

    from convdsl.backends.torch import build_module

    if exporter == "convdsl":
        from convdsl.backends.onnx.artifact import export_graph

        path.write_bytes(export_graph(graph).SerializeToString())
        return path
    model = build_module(graph).eval()
    x = torch.zeros(*input_shape(graph))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=18)
        except Exception:  # noqa: BLE001 - an op the TorchScript exporter lacks: torch.export's
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18)
    return path


def ort_qdq(f32: Path, out: Path, calib: np.ndarray, reduce_range: bool | None = None) -> Path:
    """ONNX Runtime static quantization (QDQ, per-channel s8 weights, u8 activations, minmax); 7-bit weights
    (``reduce_range``) by default where convdsl's own int8 programs have them (``qdq_reduce_range``)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(str(f32)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {name: x}

    pre = out.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(f32), str(pre), skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - pre-processing is an optimization
        pre = f32
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=qdq_reduce_range() if reduce_range is None else reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def qdq_reduce_range() -> bool:
    """7-bit weights in the QDQ file where convdsl's own quantization takes them (``weight_bits_for_cpu``: AVX2
    without VNNI, where ONNX Runtime advises them too), so both int8 programs have the same weight range."""
    from convdsl.backends.tvm.targets import cpu_flags
    from convdsl.passes.quantize import weight_bits_for_cpu

    return weight_bits_for_cpu(cpu_flags())[0] == 7


def convdsl_int8(graph, calib: np.ndarray):
    """The program quantized by convdsl (fold_bn, then int8 with minmax ranges from ``calib``), with
    ``convdsl quantize``'s default weight bits for this CPU (7 on AVX2 without VNNI: vpmaddubsw, exact)."""
    from convdsl.backends.torch import build_module
    from convdsl.backends.tvm.targets import cpu_flags
    from convdsl.passes import run_passes
    from convdsl.passes.quantize import quantize

    folded = run_passes(graph, "fold_bn,remove_identity,dce")
    batches = calib.reshape(-1, *calib.shape[2:])  # [count, 1, ...] -> batches of 8 inputs
    return quantize(folded, [batches[i:i + 8] for i in range(0, len(batches), 8)], method="minmax",
                    build=build_module, weight_bits="auto", cpu_flags=cpu_flags())


def save_program(graph, folder: Path) -> tuple[str, str]:
    from convdsl.lang.printer import print_graph
    from convdsl.ir.weights import save_weights

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.cdl").write_text(print_graph(graph))
    save_weights(graph, folder / "weights.safetensors")
    return str(folder / "net.cdl"), str(folder / "weights.safetensors")


# ---- one backend in its own process ----------------------------------------------------------------------
def refusal(row: str) -> str | None:
    """Why this machine cannot run ``row`` (None: it can)."""
    from convdsl.backends.tvm.targets import AMX_BF16_FLAGS, AMX_INT8_FLAGS, cpu_flags

    flags = cpu_flags()
    if row == "convdsl int8 (AMX)" and not AMX_INT8_FLAGS <= flags:
        return "refused: this CPU has no AMX-INT8 (amx_tile, amx_int8)"
    if row == "convdsl bf16 (AMX)" and not AMX_BF16_FLAGS <= flags:
        return "refused: this CPU has no AMX-BF16 (amx_tile, amx_bf16)"
    if row == "convdsl bf16" and "avx512_bf16" not in flags:
        return "refused: this CPU has no AVX512_BF16"
    if row == "openvino bf16" and "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return "refused: this CPU has no native bf16 (OpenVINO would emulate it)"
    return None


def child(spec: dict) -> None:
    """Build one backend, say READY, then time a block of calls per RUN line until QUIT."""
    threads = spec["threads"]
    os.environ["TVM_NUM_THREADS"] = str(threads)
    row, x = spec["row"], np.load(spec["input"])
    info: dict = {}
    t0 = time.perf_counter()
    if row in ("torch", "torch.compile"):
        import torch

        from convdsl.cli.common import program_graph
        from convdsl.backends.torch import build_module

        torch.set_num_threads(threads)
        model = build_module(program_graph(spec["cdl"], None, (), (), (), None, 0, weights=spec["weights"])).eval()
        fn = torch.compile(model) if row == "torch.compile" else model
        xt = torch.from_numpy(x)

        def call():
            with torch.inference_mode():
                return fn(xt).numpy()
    elif row.startswith("onnxruntime"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(spec["onnx"], so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}

        def call():
            return sess.run(None, feed)[0]
    elif row.startswith("openvino"):
        import openvino as ov

        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        hint = {"openvino f32": "f32", "openvino bf16": "bf16"}.get(row)
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        compiled = core.compile_model(core.read_model(spec["onnx"]), "CPU", config)
        info["precision"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        req = compiled.create_infer_request()

        def call():
            req.infer({0: x})
            return req.get_output_tensor(0).data.copy()
    else:  # convdsl tvm-llvm
        import convdsl.backends.tvm as ctvm
        from convdsl.cli.common import program_graph

        from convdsl.backends.tvm.targets import thread_pool

        precision = row.split()[1]
        if row == "convdsl int8 (QDQ file)":  # the QDQ file the ONNX Runtime / OpenVINO int8 rows run
            from convdsl.importer import import_onnx

            g = import_onnx(spec["onnx"]).graph
        else:
            g = program_graph(spec["cdl"], None, (), (), (), None, 0, weights=spec["weights"])
        # "convdsl int8" / "convdsl bf16" are VNNI / vdpbf16ps; the "(AMX)" rows the same program on AMX tiles
        backend = ctvm.backend("tvm-llvm", precision=precision, progress=False, amx=row.endswith("(AMX)"))
        m = backend.build_module(g)
        info["kernels"] = f"{m.built.own}/{m.built.functions}"
        if precision == "int8":  # the weight range and the instruction of each quantized layer
            from convdsl.backends.tvm.lower_quant import int8_instructions

            bits = max(int(np.abs(g.params[n.params["weight"]].astype(np.int64)).max()) for n in g.nodes()
                       if n.op in ("qconv1d", "qconv2d", "qconv3d", "qlinear"))
            with backend.spec.tvm_target():
                used = int8_instructions(g)
            info["int8"] = f"weights [-{bits}, {bits}], " + " ".join(f"{k} x{v}" for k, v in sorted(used.items()))
        timed = m.runner.timed_call([x])  # what `convdsl bench` times: the module on an input already placed

        def call():
            return timed().numpy()
        call()
        info["pool"] = thread_pool()  # TVM's thread pool as it started (threads, bind, spin)
    out = call()
    info["build_s"] = round(time.perf_counter() - t0, 1)
    np.save(spec["output"], np.asarray(out, dtype=np.float32))
    t = time.perf_counter()
    call()
    one = time.perf_counter() - t
    reps = max(3, int(spec["block_ms"] / 1e3 / max(one, 1e-5)))
    print("READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "RUN":
            break
        for _ in range(2):  # untimed: caches and threads after the previous process's turn
            call()
        ms = []
        c0 = time.process_time()
        for _ in range(reps):
            t = time.perf_counter()
            call()
            ms.append((time.perf_counter() - t) * 1e3)
        # CPU time of every thread of this process over the block: / wall = cores kept busy
        print(json.dumps({"ms": ms, "cpu_ms": (time.process_time() - c0) * 1e3}), flush=True)


class Proc:
    """One backend's ``--child`` process (``env``: its environment, e.g. another source tree on PYTHONPATH)."""

    def __init__(self, row: str, spec: dict, env: dict | None = None):
        self.row, self.spec, self.ms, self.info, self.note, self.cpu_ms = row, spec, [], {}, "", 0.0
        self.p = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def ready(self) -> bool:
        for line in self.p.stdout:
            if line.startswith("READY "):
                self.info = json.loads(line[6:])
                return True
        err = self.p.stderr.read().strip().splitlines()
        self.note = "failed: " + (err[-1] if err else f"exit {self.p.wait()}")[:160]
        return False

    def run(self) -> None:
        self.p.stdin.write("RUN\n")
        self.p.stdin.flush()
        block = json.loads(self.p.stdout.readline())
        self.ms.extend(block["ms"])
        self.cpu_ms += block["cpu_ms"]

    def quit(self) -> None:
        try:
            self.p.stdin.write("QUIT\n")
            self.p.stdin.close()
        except OSError:
            pass
        self.p.wait(timeout=60)


# ---- one network --------------------------------------------------------------------------------------------
def bench_network(name: str, args, work: Path, log) -> dict:
    import torch

    from convdsl.backends.torch import build_module

    g = load_graph(name)
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    calib = calibration_inputs(g, CALIB_SAMPLES)
    g = bn_from_calibration(g, calib)
    x = calib[0]
    np.save(folder / "x.npy", x)
    f32_cdl, f32_w = save_program(g, folder / "f32")
    timed = bool(args.rounds)  # --rounds 0: accuracy only, no peer runs the ONNX files
    log(f"[{name}] {'exporting ONNX, ' if timed else ''}quantizing ...")
    exporter = args.exporter or ("convdsl" if name in CONVDSL_EXPORT else "torch")
    onnx_f32 = onnx_export(g, folder / "f32.onnx", exporter) if timed else None
    files = {"onnx": str(onnx_f32) if onnx_f32 else None, "cdl": f32_cdl, "weights": f32_w}
    q_files, qdq = None, None
    try:
        q = convdsl_int8(g, calib)
        q_cdl, q_w = save_program(q, folder / "int8")
        q_files = {"cdl": q_cdl, "weights": q_w}
    except Exception as e:  # noqa: BLE001 - reported in the row
        log(f"[{name}] convdsl int8 failed: {e}")
    try:
        qdq = ort_qdq(onnx_f32, folder / "int8.onnx", calib) if timed else None
    except Exception as e:  # noqa: BLE001
        log(f"[{name}] ONNX Runtime quantization failed: {e}")

    rows = [r for r in ROWS if (not args.rows or r in args.rows) and args.rounds]
    specs: dict[str, dict] = {}
    notes: dict[str, str] = {}
    for row in rows:
        why = refusal(row)
        spec = {"row": row, "threads": args.threads, "input": str(folder / "x.npy"), "block_ms": args.block_ms,
                "output": str(folder / f"out_{row.replace(' ', '_').replace('(', '').replace(')', '')}.npy"), **files}
        if "int8" in row:
            if row.startswith("convdsl") and row != "convdsl int8 (QDQ file)":  # convdsl's own quantization
                spec.update(q_files or {})
                why = why or (None if q_files else "failed: convdsl could not quantize it")
            else:  # ONNX Runtime's QDQ file (its peers, and convdsl importing it)
                spec["onnx"] = str(qdq) if qdq else None
                why = why or (None if qdq else "failed: ONNX Runtime could not quantize it")
        if why:
            notes[row] = why
            continue
        specs[row] = spec
    launches: dict[str, list[list[float]]] = {row: [] for row in specs}
    info: dict[str, dict] = {}
    cpu_ms: dict[str, float] = {row: 0.0 for row in specs}
    for launch in range(args.launches):
        procs: list[Proc] = []
        for row, spec in specs.items():
            if row in notes:  # refused, or failed in an earlier launch
                continue
            log(f"[{name}] building {row}{f' (launch {launch + 1} of {args.launches})' if args.launches > 1 else ''} ...")
            p = Proc(row, spec)
            if p.ready():
                procs.append(p)
            else:
                notes[row] = p.note
                p.quit()
        for r in range(args.rounds):
            order = procs[r % len(procs):] + procs[:r % len(procs)] if procs else []
            for p in order:
                p.run()
        for p in procs:
            p.quit()
            launches[p.row].append(p.ms)
            info.setdefault(p.row, p.info)
            cpu_ms[p.row] += p.cpu_ms
    with torch.inference_mode():
        ref = build_module(g).eval()(torch.from_numpy(x)).numpy()
    result = {"network": name, "rows": {}, "exporter": exporter}
    for row in rows:
        if not launches.get(row):
            result["rows"][row] = {"note": notes.get(row, "")}
            continue
        out = np.load(specs[row]["output"])
        entry = {**launch_summary(launches[row]), "cores_busy": round(cpu_ms[row] / sum(map(sum, launches[row])), 2),
                 **info[row]}
        if row in notes:
            entry["failed later"] = notes[row]
        if ROWS[row] != "f32" or row.startswith("openvino"):
            entry["max_rel_err_vs_f32"] = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))
        result["rows"][row] = entry
    if args.agreement and q_files:
        result["accuracy"] = accuracy(g, q_files, args.agreement, log, name)
    return result


def launch_summary(launches: list[list[float]]) -> dict:
    """A row's times over its launches (each launch's list of per-call ms): the median of the launches' medians
    (a slow or fast process counts once), each launch's median, and p10 / p90 over every call."""
    medians = [float(np.median(ms)) for ms in launches]
    calls = np.concatenate([np.asarray(ms, dtype=np.float64) for ms in launches])
    return {"median_ms": float(np.median(medians)), "launch_ms": medians, "p10_ms": float(np.percentile(calls, 10)),
            "p90_ms": float(np.percentile(calls, 90)), "calls": int(calls.size)}


def _torch_outputs(model, xs: np.ndarray, batch: int = 50) -> np.ndarray:
    """``model`` on every input of ``xs`` ([count, 1, ...]), ``batch`` inputs per call (one at a time
    if the module is specialized to batch 1); the same numbers as one call per input."""
    import torch

    with torch.inference_mode():
        try:
            return np.concatenate([model(torch.from_numpy(xs[i:i + batch].reshape(-1, *xs.shape[2:]))).numpy()
                                   for i in range(0, len(xs), batch)])
        except RuntimeError:
            return np.concatenate([model(torch.from_numpy(x)).numpy() for x in xs])


def _per_input(a: np.ndarray) -> np.ndarray:
    """[N, ...] -> [N, everything else]: a segmentation map's pixels are one output, as a classifier's logits."""
    return a.reshape(a.shape[0], -1)


def _steps(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per input: max |y - ref| in output steps (``ref``'s range over 255)."""
    y, ref = _per_input(y), _per_input(ref)
    return np.abs(y - ref).max(axis=1) / np.maximum(np.ptp(ref, axis=1), 1e-12) * 255


def accuracy(g, q_files: dict, count: int, log, name: str) -> dict:
    """int8: max |tvm - torch simulation| in output steps (the simulation's output range over 255, the
    step of an 8-bit quantization of the output); top-1 agreement of int8 and bf16 with f32."""
    import convdsl.backends.tvm as ctvm
    from convdsl.cli.common import program_graph
    from convdsl.backends.torch import build_module
    from convdsl.backends.tvm.targets import cpu_flags

    log(f"[{name}] accuracy over {count} inputs ...")
    xs = calibration_inputs(g, count, seed=2)
    q = program_graph(q_files["cdl"], None, (), (), (), None, 0, weights=q_files["weights"])
    ref = _torch_outputs(build_module(g).eval(), xs)
    sim = _torch_outputs(build_module(q).eval(), xs)
    tvm_q = ctvm.backend("tvm-llvm", precision="int8", progress=False).build_module(q)
    yq = np.concatenate([tvm_q(x) for x in xs])
    steps = _steps(yq, sim)
    # the simulation's own sensitivity to rounding: every input moved by one ulp.  A last-bit
    # difference in a float op between quantized layers flips a rounding at the next quantize, and a
    # residual stream normalized by a layer norm spreads that flip to every value of the next layer;
    # the transformers' layer norms, GELUs and attention are int8 ops defined to the bit
    # (qlayernorm, qgelu, qattention), so only the input's quantization is left to flip
    ulp = _torch_outputs(build_module(q).eval(), np.nextafter(xs, np.float32(np.inf)).astype(np.float32))
    floor = _steps(ulp, sim)
    out = {"inputs": count, "int8_vs_simulation_steps": float(steps.max()),
           "int8_vs_simulation_steps_median": float(np.median(steps)),
           "int8_within_one_step": float(np.mean(steps <= 1.0)),
           "simulation_ulp_steps": float(floor.max()), "simulation_ulp_steps_median": float(np.median(floor)),
           "int8_top1_agreement": float(np.mean(np.argmax(yq, 1) == np.argmax(ref, 1)))}
    if "avx512_bf16" in cpu_flags():
        tvm_b = ctvm.backend("tvm-llvm", precision="bf16", progress=False).build_module(g)
        yb = np.concatenate([tvm_b(x) for x in xs])
        out["bf16_top1_agreement"] = float(np.mean(np.argmax(yb, 1) == np.argmax(ref, 1)))
        yb, rf = _per_input(yb), _per_input(ref)
        out["bf16_max_rel_err"] = float((np.abs(yb - rf).max(axis=1) / np.abs(rf).max(axis=1)).max())
    return out


# ---- report -------------------------------------------------------------------------------------------------
def machine() -> str:
    from convdsl.backends.tvm.targets import cpu_family, cpu_flags, cpu_model

    isa = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx2", "fma", "avx_vnni")))
    return f"{cpu_model()}, {os.cpu_count()} cores, family {cpu_family()}; flags: {' '.join(isa)}"


def launch_range(peer: dict, own: dict) -> str:
    """`` (launches a-bx)``: the ratio peer / convdsl within each launch (the two processes of one launch
    alternated, so their ratio is the comparison that launch made), lowest to highest; "" for one launch."""
    pairs = list(zip(peer.get("launch_ms", []), own.get("launch_ms", [])))
    if len(pairs) < 2:
        return ""
    each = [p / o for p, o in pairs]
    return f" (launches {min(each):.2f}-{max(each):.2f}x)"


def ratios(rows: dict) -> dict[str, str]:
    """convdsl's rows against the best peer of the same precision (peer ms / convdsl ms: > 1 is faster)."""
    def ms(r):
        return rows.get(r, {}).get("median_ms")

    def best(names):
        have = [(ms(n), n) for n in names if ms(n)]
        return min(have) if have else None

    out = {}
    groups = {"convdsl f32": PEERS_F32, "convdsl bf16": ("openvino default", "openvino bf16"),
              "convdsl bf16 (AMX)": ("openvino default", "openvino bf16"),
              "convdsl int8": PEERS_INT8, "convdsl int8 (AMX)": PEERS_INT8, "convdsl int8 (QDQ file)": PEERS_INT8}
    for row, peers in groups.items():
        b = best(peers)
        if ms(row) and b:
            out[row] = f"{b[0] / ms(row):.2f}x vs {b[1]}" + launch_range(rows[b[1]], rows[row])
    # convdsl at its fastest allowed precision: f32 counts too, since on a CPU without AVX512_BF16 or VNNI
    # (AVX2) the int8 build is slower than the f32 one and OpenVINO's default is f32 as well
    best_own = [r for r in ("convdsl f32", "convdsl bf16", "convdsl int8", "convdsl bf16 (AMX)", "convdsl int8 (AMX)",
                            "convdsl int8 (QDQ file)") if ms(r)]
    if best_own and ms("openvino default"):
        fastest = min(best_own, key=ms)
        out["best precision"] = (f"{fastest}: {ms('openvino default') / ms(fastest):.2f}x vs openvino default"
                                 + launch_range(rows["openvino default"], rows[fastest]))
    return out


def render(results: list[dict], args, seconds: float, load: tuple[float, float]) -> str:
    import onnxruntime
    import openvino
    import torch
    import tvm

    nets = "" if args.nets == ",".join(NETS) else f" --nets {args.nets}"
    rows = f' --rows "{",".join(args.rows)}"' if args.rows else ""
    lines = [HEADING, "",
             f"`python benchmarks/peers.py{nets}{rows} --threads {args.threads} --rounds {args.rounds} "
             f"--launches {args.launches} --agreement {args.agreement}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}. Batch 1, {args.threads} threads for every "
             f"backend, each in its own process, {args.rounds} alternating rounds per launch, {args.launches} launch"
             f"{'es' if args.launches != 1 else ''} (fresh processes each); load average {load[0]:.1f} before, "
             f"{load[1]:.1f} after; whole run {seconds / 60:.0f} min. torch {torch.__version__}, onnxruntime "
             f"{onnxruntime.__version__}, openvino {openvino.__version__}, tvm {tvm.__version__}. Ratio = best peer of "
             "the same precision / convdsl (> 1: convdsl faster). The int8 QDQ file (ONNX Runtime's static "
             f"quantization) has {7 if qdq_reduce_range() else 8}-bit weights on this CPU.", ""]
    for res in results:
        source = {"convdsl": "convdsl's ONNX export (`convdsl compile --backend onnx`)",
                  "torch": "torch.onnx.export of convdsl's generated torch module"}.get(res.get("exporter"))
        ran = any("median_ms" in e for e in res["rows"].values())  # --rounds 0: no ONNX file was run
        lines += [f"### {res['network']}", ""] + ([f"The ONNX peers run {source}.", ""] if source and ran else []) + [
            "| backend | median ms | each launch's median ms | p10-p90 ms | max rel err vs f32 | note |",
            "|---|---:|---:|---:|---:|---|"]
        for row, e in res["rows"].items():
            if "median_ms" not in e:
                lines.append(f"| {row} | - | - | - | - | {e.get('note', '')} |")
                continue
            err = e.get("max_rel_err_vs_f32")
            note = ", ".join(f"{k} {v}" for k, v in e.items() if k in ("precision", "kernels", "int8", "pool", "cores_busy",
                                                                        "build_s", "failed later"))
            each = " / ".join(f"{m:.2f}" for m in e.get("launch_ms", []))
            lines.append(f"| {row} | {e['median_ms']:.2f} | {each} | {e['p10_ms']:.2f}-{e['p90_ms']:.2f} | "
                         f"{'-' if err is None else f'{err:.1e}'} | {note} |")
        lines.append("")
        for row, text in ratios(res["rows"]).items():
            lines.append(f"- {row}: **{text}**")
        acc = res.get("accuracy")
        if acc:
            lines.append(f"- accuracy over {acc['inputs']} N(0,1) inputs: int8 vs the torch int8 simulation: max "
                         f"{acc['int8_vs_simulation_steps']:.2f} output steps (median {acc['int8_vs_simulation_steps_median']:.2f}; "
                         f"{acc['int8_within_one_step']:.1%} of inputs within one step; step = the output's range / 255; "
                         f"the simulation itself with every input moved by one ulp: max {acc['simulation_ulp_steps']:.2f}, "
                         f"median {acc['simulation_ulp_steps_median']:.2f} steps), "
                         f"top-1 agreement with f32: int8 {acc['int8_top1_agreement']:.1%}"
                         + (f", bf16 {acc['bf16_top1_agreement']:.1%} (max rel err {acc['bf16_max_rel_err']:.1e})"
                            if "bf16_top1_agreement" in acc else ""))
        lines.append("")
    return "\n".join(lines)


def write_doc(section: str, heading: str = HEADING) -> None:
    """Replace the ``heading`` section of docs/benchmarks.md (or append it)."""
    text = DOC.read_text()
    if heading in text:
        start = text.index(heading)
        nxt = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[nxt + 1:] if nxt != -1 else "\n")
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--rows", default="", help="only these rows (comma-separated names as in the table)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds per launch (0: no timing, only --agreement)")
    ap.add_argument("--launches", type=int, default=3,
                    help="fresh processes per backend, one after another, each timed --rounds rounds")
    ap.add_argument("--block-ms", type=float, default=200.0, help="time of one process's turn")
    ap.add_argument("--agreement", type=int, default=1000, help="inputs for top-1 agreement (0: skip)")
    ap.add_argument("--exporter", choices=("torch", "convdsl"), default=None,
                    help="the ONNX file the peers run, for every network (default: convdsl's export for the "
                         "seed-paper networks, torch.onnx.export for the others)")
    ap.add_argument("--doc", action="store_true", help="write the table to docs/benchmarks.md ('Peers')")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [n for n in args.nets.split(",") if n not in ALL_NETS] + [r for r in args.rows if r not in ROWS]
    if unknown:
        print(f"unknown network or row: {', '.join(unknown)}; networks: {', '.join(ALL_NETS)}; rows: {', '.join(ROWS)}",
              file=sys.stderr)
        return 2
    log = (lambda s: print(s, file=sys.stderr, flush=True))
    log(machine())
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="convdsl-peers-") as tmp:
        for name in args.nets.split(","):
            results.append(bench_network(name, args, Path(tmp), log))
            print(render(results[-1:], args, time.perf_counter() - t0, (load0, os.getloadavg()[0])), flush=True)
    section = render(results, args, time.perf_counter() - t0, (load0, os.getloadavg()[0]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.doc:
        write_doc(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
