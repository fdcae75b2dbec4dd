"""Check and time tvm-cuda artifacts against PyTorch on the GPU.

Two steps, on two machines:

    # 1. on any machine with nvcc (no GPU needed): cross-compile the artifacts
    python benchmarks/gpu_check.py --build gpu_artifacts/ [--arch sm_90] [--nets resnet18,resnet50] \
        [--pipelines default,f16] [--levels 4]

    # 2. on the machine with the GPU: load each artifact, compare with torch on CUDA, time both
    python benchmarks/gpu_check.py gpu_artifacts/ [--json results.json] [--compile-budget 170]

Step 2 without a visible GPU prints "no GPU found" and exits 0 (``--cpu-smoke`` runs the same
steps on tvm-llvm artifacts built with ``--build DIR --cpu-smoke``, torch on the CPU: a check of
this script, not a measurement).  The reference is the torch backend's module built from the
artifact's own network.cdl and weights.safetensors, run on CUDA with TF32 off (so both sides
compute in float32); inputs are seeded random arrays of the shapes the artifact was compiled for
(batch 1 and 32 by default).

Each artifact is timed (median of ``--repeat`` synchronized calls) against torch CUDA eager,
against ``torch.compile(model)`` (default mode; the compile, i.e. its first call, is timed apart
and not in its median; once the compiles took ``--compile-budget`` seconds in all, later networks
get no torch.compile column), and f16 artifacts also against torch eager on ``model.half()``
with f16 inputs (the fair peer of 16-bit compute).  The header prints the GPU, torch, CUDA,
cuDNN, TVM and tvm-ffi versions.

Pipelines (``--pipelines``, one artifact each, ``<net>-b<batch>-<pipeline>``): ``default`` is
``convdsl compile --backend tvm-cuda`` (``gpu_passes``: convs as im2col + GEMM, depthwise as a
spatial kernel) in f32; ``f16`` / ``bf16`` the same with ``--precision f16`` / ``bf16`` (recorded
in the manifest as tvm.precision; checked with a looser tolerance); ``implicit`` /
``implicit-f16`` keep DLight's implicit-GEMM convs ($CONVDSL_GPU_CONV=implicit).  The names of
earlier runs (``gpu``, ``gpu-f16``, ...) are aliases.  Weights are constants inside ``lib.so``;
``--levels K`` rounds every float weight to K levels per tensor (the reference uses the same
rounded weights), which lets xz shrink a folder of artifacts several-fold for the trip to the
GPU machine (b1 and b32 of a network hold the same constants: packed together with a large
dictionary, ``xz --lzma2=preset=6,dict=192MiB``, the second costs almost nothing).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _use_checkout() -> None:
    """Import convdsl from this checkout when it is not installed (a GPU machine that got a copy
    of the tree): the wheel maps convdsl.backends to backends/ and convdsl.grammar to grammar/."""
    import importlib.util

    if importlib.util.find_spec("convdsl") is None:
        sys.path.insert(0, str(ROOT))
    try:
        import convdsl.backends  # noqa: F401
        return
    except ImportError:
        pass
    for name, folder in (("convdsl.backends", "backends"), ("convdsl.grammar", "grammar")):
        init = ROOT / folder / "__init__.py"
        spec = importlib.util.spec_from_file_location(name, init if init.exists() else None,
                                                      submodule_search_locations=[str(ROOT / folder)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        if init.exists():
            spec.loader.exec_module(mod)


_use_checkout()
# name -> (file, --set overrides)
NETS = {
    "digits_cnn": ("examples/digits_cnn.cdl", {}),
    "resnet18": ("examples/resnet18.cdl", {}),
    "resnet50": ("examples/resnet50.cdl", {}),
    "mobilenet_v2": ("examples/mobilenet_v2.cdl", {}),
    "vit_s16": ("examples/vit_b_16.cdl", {"hidden": 384, "heads": 6, "mlp_dim": 1536}),  # ViT-S/16 sizes
    "gfnet": ("examples/papers/gfnet.cdl", {}),
    "hyena_block": ("examples/papers/hyena_block.cdl", {}),
    "s4d_classifier": ("examples/papers/s4d_classifier.cdl", {}),
    "serpent": ("examples/papers/serpent.cdl", {}),
}
DEFAULT_NETS = "resnet18,resnet50,mobilenet_v2,vit_s16"
SOURCE = "gpu_source.json"
TOL = 1e-3  # GPU float32 reductions differ in order from cuDNN's; relative to the output's scale
TOLS = {"f32": TOL, "f16": 3e-2, "bf16": 1e-1}  # 16-bit compute: float16/bfloat16 rounding of every GEMM input
# pipeline -> (precision, conv lowering): the precision is the backend's (--precision, recorded in the
# manifest as tvm.precision); the conv lowering is $CONVDSL_GPU_CONV while the artifact is built
PIPELINES = {"default": ("f32", "im2col"), "f16": ("f16", "im2col"), "bf16": ("bf16", "im2col"),
             "implicit": ("f32", "implicit"), "implicit-f16": ("f16", "implicit")}
ALIASES = {"gpu": "default", "gpu-f16": "f16", "gpu-bf16": "bf16", "gpu-implicit": "implicit",
           "gpu-implicit-f16": "implicit-f16"}  # the names of earlier runs (before --precision)


def round_weights(graph, levels: int) -> None:
    """Every float weight to ``levels`` evenly spaced values per tensor (in place)."""
    import numpy as np

    half = max(levels // 2, 1)
    for name, arr in list(graph.params.items()):
        a = np.asarray(arr)
        if a.dtype.kind != "f" or a.size == 0:
            continue
        step = float(np.abs(a).max()) / half
        if step > 0:
            graph.params[name] = (np.round(a / step) * step).astype(a.dtype)


@contextlib.contextmanager
def conv_lowering(conv: str):
    """$CONVDSL_GPU_CONV set to ``conv`` while an artifact is built."""
    from convdsl.backends.tvm.schedules.gpu import CONV_ENV

    old = os.environ.get(CONV_ENV)
    os.environ[CONV_ENV] = conv
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(CONV_ENV, None)
        else:
            os.environ[CONV_ENV] = old


def build(out: Path, nets: list[str], batches: list[int], arch: str, pipelines: list[str] = ("default",),
          levels: int = 0, cpu_smoke: bool = False) -> None:
    """Cross-compile tvm-cuda artifacts: out/<net>-b<batch>-<pipeline>/ (``cpu_smoke``: tvm-llvm f32
    ones, for ``--cpu-smoke``)."""
    from convdsl.api import load_graph
    from convdsl.artifact import write_artifact
    from convdsl.backends.tvm import backend

    for name in nets:
        path, sets = NETS[name]
        for b in batches:
            for pipeline in pipelines:
                g = load_graph(ROOT / path, overrides=sets, bind={"N": b, "L": 1024, "H": 224, "W": 224})
                if levels:
                    round_weights(g, levels)
                t0 = time.perf_counter()
                pipeline = ALIASES.get(pipeline, pipeline)
                precision, conv = PIPELINES[pipeline]
                folder = out / f"{name}-b{b}-{pipeline}"
                if cpu_smoke:
                    be = backend("tvm-llvm", use_db=False, progress=False, dynamic_batch=False)
                    if precision != "f32":
                        print(f"skipped {folder}: --cpu-smoke builds f32 tvm-llvm artifacts", flush=True)
                        continue
                else:
                    be = backend("tvm-cuda", arch=arch, use_db=False, precision=precision)
                try:
                    with conv_lowering(conv):
                        write_artifact(g, folder, be)
                except Exception as e:  # noqa: BLE001 - report and build the rest
                    print(f"FAILED {folder}: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
                    continue
                # how to rebuild the same weights (seeded initialization) where weights.safetensors is left behind
                (folder / SOURCE).write_text(json.dumps({"file": path, "sets": sets, "bind": dict(g.symbols),
                                                        "levels": levels, "pipeline": pipeline, "precision": precision,
                                                        "weights_sha256": weights_digest(g)}) + "\n")
                size = (folder / "lib.so").stat().st_size / 2**20
                record_digest(out, folder)
                print(f"built {folder} in {time.perf_counter() - t0:.1f} s ({size:.1f} MiB)", flush=True)


DIGESTS = "digests.json"  # beside the artifact folders: the pins step 2 runs them with (docs/artifacts.md)


def record_digest(out: Path, folder: Path) -> None:
    from convdsl.artifact import MANIFEST, file_hash

    path = out / DIGESTS
    digests = json.loads(path.read_text()) if path.exists() else {}
    digests[folder.name] = file_hash(folder / MANIFEST)
    path.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")


def weights_digest(graph) -> str:
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for name, arr in sorted(graph.params.items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def reference_graph(folder: Path):
    """The artifact's network with its weights: network.cdl + weights.safetensors, or, when the
    weights file was left behind (to move less data), the seeded source, checked by digest."""
    from convdsl.api import load_graph
    from convdsl.artifact import load_artifact_graph

    from convdsl.ir.weights import save_weights

    if not (folder / "weights.safetensors").exists():
        src = json.loads((folder / SOURCE).read_text())
        g = load_graph(ROOT / src["file"], overrides=src["sets"], bind=src["bind"])
        if src.get("levels"):
            round_weights(g, src["levels"])
        if weights_digest(g) != src["weights_sha256"]:
            raise RuntimeError("the regenerated weights differ from the compiled ones")
        save_weights(g, folder / "weights.safetensors")  # the same bytes: the manifest's SHA-256 checks it
    return load_artifact_graph(folder)


def _median_ms(fn, sync, repeat: int, warmup: int = 3) -> float:
    import numpy as np

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


# where torch runs: CUDA; --cpu-smoke runs the same steps on tvm-llvm artifacts and torch on the CPU
# (a check of this script on a machine without a GPU: its timings mean nothing)
DEVICE = {"torch": "cuda", "sync": lambda: __import__("torch").cuda.synchronize()}
_REFS: dict = {}  # (weights digest, batch) -> torch modules, shared by the f32 and f16 artifacts of a network


def _peers(graph, folder: Path, batch: int, compile_budget: float, spent: dict):
    """The torch modules an artifact is timed against: eager f32, torch.compile of it (None when the
    compile budget is spent or the compile fails; its compile time is measured, not counted in the
    timings), eager f16 (``model.half()``) made on demand."""
    import copy

    import torch

    from convdsl.backends.torch import build_module

    src = json.loads((folder / SOURCE).read_text()) if (folder / SOURCE).exists() else {}
    key = (src.get("weights_sha256") or folder.name, batch)
    if key in _REFS:
        return _REFS[key]
    model = build_module(graph).eval().to(DEVICE["torch"])
    ref = {"eager": model, "compiled": None, "compile_s": None, "compile_note": "", "half": None}
    if spent["compile"] >= compile_budget:
        ref["compile_note"] = "compile budget spent"
    else:
        t0 = time.perf_counter()
        try:
            ref["compiled"] = torch.compile(model)
            ref["compile_pending"] = t0  # finished by the first (warm-up) call
        except Exception as e:  # noqa: BLE001 - torch.compile can fail on a network; the row says so
            ref["compile_note"] = f"torch.compile failed: {type(e).__name__}"
    ref["make_half"] = lambda: copy.deepcopy(model).half()
    _REFS[key] = ref
    return ref


def check(folder: Path, repeat: int, compile_budget: float = 600.0, spent: dict | None = None) -> dict:
    import numpy as np
    import torch

    from convdsl.backends.tvm import load

    spent = spent if spent is not None else {"compile": 0.0}
    graph, manifest = reference_graph(folder)
    src = json.loads((folder / SOURCE).read_text()) if (folder / SOURCE).exists() else {}
    precision = manifest["tvm"].get("precision") or src.get("precision", "f32")
    tol = TOLS[precision]
    pins = folder.parent / DIGESTS
    pin = json.loads(pins.read_text()).get(folder.name) if pins.exists() else None
    run = load(folder, expect_sha256=pin)  # pinned (or signed with this user's key), hashes, target, TVM version
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(i["shape"]).astype(i["dtype"]) for i in manifest["tvm"]["inputs"]]
    batch = manifest["tvm"]["inputs"][0]["shape"][0]
    peers = _peers(graph, folder, batch, compile_budget, spent)
    model = peers["eager"]
    xt = [torch.from_numpy(x).to(DEVICE["torch"]) for x in xs]
    with torch.inference_mode():
        ref = model(*xt)
    refs = ref if isinstance(ref, tuple) else (ref,)
    outs = run(xt)  # torch CUDA tensors in, out (DLPack, no copy)
    errs = []
    for o, r in zip(outs, refs):
        scale = max(1.0, float(r.abs().max()))
        errs.append(float((o.float() - r.float()).abs().max()) / scale)
    args = run.prepare(xt)

    def tvm_call():
        run._main(*args)

    def torch_call(m, inputs):
        def call():
            with torch.inference_mode():
                m(*inputs)
        return call

    tvm_ms = _median_ms(tvm_call, run.device.sync, repeat)
    torch_ms = _median_ms(torch_call(model, xt), DEVICE["sync"], repeat)
    row = {"artifact": folder.name, "network": manifest["network"], "batch": batch, "precision": precision,
           "pipeline": src.get("pipeline", "default"), "target": manifest["tvm"]["target"],
           "max_rel_err": max(errs), "tol": tol, "ok": max(errs) <= tol,
           "tvm_ms": round(tvm_ms, 4), "torch_ms": round(torch_ms, 4), "speedup_vs_torch": round(torch_ms / tvm_ms, 3),
           "compile_ms": None, "compile_s": None, "speedup_vs_compile": None, "note": peers["compile_note"]}
    if peers["compiled"] is not None:
        try:
            if "compile_pending" in peers:  # the first call compiles: timed apart, not in the median
                torch_call(peers["compiled"], xt)()
                DEVICE["sync"]()
                peers["compile_s"] = time.perf_counter() - peers.pop("compile_pending")
                spent["compile"] += peers["compile_s"]
            compile_ms = _median_ms(torch_call(peers["compiled"], xt), DEVICE["sync"], repeat)
            row.update(compile_ms=round(compile_ms, 4), compile_s=round(peers["compile_s"], 1),
                       speedup_vs_compile=round(compile_ms / tvm_ms, 3))
        except Exception as e:  # noqa: BLE001 - the row says so; the other columns stand
            peers["compiled"] = None
            peers["compile_note"] = row["note"] = f"torch.compile failed: {type(e).__name__}: {str(e)[:120]}"
    if precision == "f16":  # the fair peer of 16-bit compute: torch eager on model.half()
        if peers["half"] is None:
            peers["half"] = peers["make_half"]()
        xh = [x.half() for x in xt]
        half_ms = _median_ms(torch_call(peers["half"], xh), DEVICE["sync"], repeat)
        row.update(torch_f16_ms=round(half_ms, 4), speedup_vs_torch_f16=round(half_ms / tvm_ms, 3))
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", nargs="?", default="gpu_artifacts", help="folder of tvm-cuda artifacts")
    p.add_argument("--build", metavar="OUT", help="cross-compile the artifacts into OUT instead of checking")
    p.add_argument("--nets", default=DEFAULT_NETS, help=f"comma-separated, from: {', '.join(NETS)}")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--pipelines", default="default", help=f"comma-separated, from: {', '.join(PIPELINES)}")
    p.add_argument("--levels", type=int, default=0, help="round weights to this many levels (0: exact)")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--compile-budget", type=float, default=600.0, metavar="S",
                   help="stop starting torch.compile of new networks once their compiles took S seconds in all")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="check this script without a GPU: tvm-llvm artifacts against torch on the CPU")
    a = p.parse_args()
    if a.build:
        build(Path(a.build), a.nets.split(","), [int(b) for b in a.batches.split(",")], a.arch,
              a.pipelines.split(","), a.levels, a.cpu_smoke)
        return 0

    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if a.cpu_smoke:
        DEVICE.update(torch="cpu", sync=lambda: None)
    elif not gpu:
        print("no GPU found: nothing to check (run this on a machine with an NVIDIA GPU)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    order = a.nets.split(",")  # the networks in --nets order (what matters most first), then the rest

    def rank(f: Path) -> tuple:
        net = next((n for n in order if f.name.startswith(n + "-b")), None)
        return (order.index(net) if net else len(order), f.name)

    folders = sorted((f for f in Path(a.artifacts).iterdir() if (f / "manifest.json").exists()), key=rank)
    if not folders:
        print(f"no artifacts in {a.artifacts}; build them with --build")
        return 1
    from convdsl.backends.tvm.backend import tvm_versions

    if a.cpu_smoke:
        gpu_name = "none (--cpu-smoke: tvm-llvm artifacts, torch on the CPU; the timings mean nothing)"
    else:
        props = torch.cuda.get_device_properties(0)
        gpu_name = f"{torch.cuda.get_device_name(0)} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs)"
    print(f"GPU: {gpu_name}; torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
          f"{torch.backends.cudnn.version()}); " + ", ".join(f"{k} {v}" for k, v in tvm_versions().items()))
    print(f"median of {a.repeat} synchronized calls each; TF32 off; torch.compile: default mode, its compile time "
          "(the first call) is not in its ms and is shown in 'compile s'; f16 rows also against torch eager on "
          "model.half() with f16 inputs; speedup = peer ms / tvm ms", flush=True)
    head = (f"{'artifact':28} {'prec':>4} {'batch':>5} {'max rel err':>11} {'tvm ms':>8} {'eager ms':>8} {'x eager':>7} "
            f"{'compile ms':>10} {'x compile':>9} {'compile s':>9} {'eager f16':>9} {'x f16':>6}")
    print(head)
    rows, bad, spent = [], 0, {"compile": 0.0}
    for f in folders:
        try:
            r = check(f, a.repeat, a.compile_budget, spent)
        except Exception as e:  # noqa: BLE001 - report and go on with the next artifact
            import traceback

            traceback.print_exc(limit=8)
            r = {"artifact": f.name, "error": f"{type(e).__name__}: {e}"}
            print(f"{f.name:28} ERROR {r['error'][:200]}", flush=True)
            bad += 1
            rows.append(r)
            if a.json:
                Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
            continue
        bad += not r["ok"]

        def num(v, fmt):
            return "-" if v is None else format(v, fmt)

        print(f"{r['artifact']:28} {r['precision']:>4} {r['batch']:>5} {r['max_rel_err']:>11.2e} {r['tvm_ms']:>8.3f} "
              f"{r['torch_ms']:>8.3f} {r['speedup_vs_torch']:>6.2f}x {num(r['compile_ms'], '10.3f'):>10} "
              f"{num(r['speedup_vs_compile'], '8.2f'):>8}x {num(r['compile_s'], '9.1f'):>9} "
              f"{num(r.get('torch_f16_ms'), '9.3f'):>9} {num(r.get('speedup_vs_torch_f16'), '5.2f'):>5}x"
              f"{'' if r['ok'] else '  MISMATCH'}{'  (' + r['note'] + ')' if r['note'] else ''}", flush=True)
        rows.append(r)
        if a.json:  # after every row: a run cut short keeps what it measured
            Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
