"""Check and time tvm-cuda artifacts against PyTorch on the GPU.

Two steps, on two machines:

    # 1. on any machine with nvcc (no GPU needed): cross-compile the artifacts
    python benchmarks/gpu_check.py --build gpu_artifacts/ [--arch sm_90] [--nets resnet18,mobilenet_v2] \
        [--pipelines default,gpu,gpu-f16] [--levels 256]

    # 2. on the machine with the GPU: load each artifact, compare with torch on CUDA, time both
    python benchmarks/gpu_check.py gpu_artifacts/ [--json results.json]

Step 2 without a visible GPU prints "no GPU found" and exits 0.  The reference is
the torch backend's module built from the artifact's own network.cdl and
weights.safetensors, run on CUDA with TF32 off (so both sides compute in
float32); inputs are seeded random arrays of the shapes the artifact was
compiled for (batch 1 and 32 by default).

Pipelines (``--pipelines``, one artifact each, ``<net>-b<batch>-<pipeline>``):
``default`` is what ``build.py`` does (since 2026-11-26 that includes ``gpu_passes`` with
the $CONVDSL_GPU_PRECISION / $CONVDSL_GPU_CONV defaults, f32 and im2col; before, DLight's
default rules alone); ``gpu`` is ``schedules.gpu.gpu_passes`` (convs as im2col + GEMM,
depthwise as a spatial kernel) in float32 explicitly, ``gpu-f16`` / ``gpu-bf16`` the same in 16-bit compute
(checked with a looser tolerance), ``gpu-implicit`` keeps DLight's implicit-GEMM
convs.  Weights are constants inside ``lib.so``; ``--levels K`` rounds every float
weight to K levels per tensor (the reference uses the same rounded weights), which
lets xz shrink a folder of artifacts several-fold for the trip to the GPU machine.
"""
from __future__ import annotations

import argparse
import json
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
    "mobilenet_v2": ("examples/mobilenet_v2.cdl", {}),
    "vit_s16": ("examples/vit_b_16.cdl", {"hidden": 384, "heads": 6, "mlp_dim": 1536}),  # ViT-S/16 sizes
    "gfnet": ("examples/papers/gfnet.cdl", {}),
    "hyena_block": ("examples/papers/hyena_block.cdl", {}),
    "s4d_classifier": ("examples/papers/s4d_classifier.cdl", {}),
    "serpent": ("examples/papers/serpent.cdl", {}),
}
DEFAULT_NETS = "digits_cnn,resnet18,mobilenet_v2,vit_s16,gfnet,s4d_classifier"
SOURCE = "gpu_source.json"
TOL = 1e-3  # GPU float32 reductions differ in order from cuDNN's; relative to the output's scale
TOLS = {"f32": TOL, "f16": 3e-2, "bf16": 1e-1}  # 16-bit compute: float16/bfloat16 rounding of every GEMM input
PIPELINES = {"default": None, "gpu": ("f32", "im2col"), "gpu-f16": ("f16", "im2col"),
             "gpu-bf16": ("bf16", "im2col"), "gpu-implicit": ("f32", "implicit"),
             "gpu-implicit-f16": ("f16", "implicit")}


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


def use_pipeline(pipeline: str):
    """Make ``build.py`` run ``gpu_passes`` with this pipeline's options before legalization
    (a no-op for ``default``); returns a function that undoes it."""
    from convdsl.backends.tvm import build as bmod
    from convdsl.backends.tvm.schedules.gpu import gpu_passes

    options = PIPELINES[pipeline]
    orig = bmod.optimize_passes
    if options is None:
        return lambda: None

    def optimize_passes(spec):
        rest = [p for p in orig(spec) if not str(getattr(getattr(p, "info", None), "name", "")).startswith("convdsl.gpu.")]
        return gpu_passes(spec, *options) + rest

    bmod.optimize_passes = optimize_passes

    def undo():
        bmod.optimize_passes = orig

    return undo


def build(out: Path, nets: list[str], batches: list[int], arch: str, pipelines: list[str] = ("default",),
          levels: int = 0) -> None:
    """Cross-compile tvm-cuda artifacts: out/<net>-b<batch>-<pipeline>/."""
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
                folder = out / f"{name}-b{b}-{pipeline}"
                undo = use_pipeline(pipeline)
                try:
                    write_artifact(g, folder, backend("tvm-cuda", arch=arch, use_db=False))
                except Exception as e:  # noqa: BLE001 - report and build the rest
                    print(f"FAILED {folder}: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
                    continue
                finally:
                    undo()
                precision = (PIPELINES[pipeline] or ("f32",))[0]
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


def check(folder: Path, repeat: int) -> dict:
    import numpy as np
    import torch

    from convdsl.backends.torch import build_module
    from convdsl.backends.tvm import load

    graph, manifest = reference_graph(folder)
    src = json.loads((folder / SOURCE).read_text()) if (folder / SOURCE).exists() else {}
    tol = TOLS[src.get("precision", "f32")]
    pins = folder.parent / DIGESTS
    pin = json.loads(pins.read_text()).get(folder.name) if pins.exists() else None
    run = load(folder, expect_sha256=pin)  # pinned (or signed with this user's key), hashes, target, TVM version
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(i["shape"]).astype(i["dtype"]) for i in manifest["tvm"]["inputs"]]
    model = build_module(graph).eval().cuda()
    xt = [torch.from_numpy(x).cuda() for x in xs]
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

    def torch_call():
        with torch.inference_mode():
            model(*xt)

    tvm_ms = _median_ms(tvm_call, run.device.sync, repeat)
    torch_ms = _median_ms(torch_call, torch.cuda.synchronize, repeat)
    batch = manifest["tvm"]["inputs"][0]["shape"][0]
    return {"artifact": folder.name, "network": manifest["network"], "batch": batch,
            "pipeline": src.get("pipeline", "default"), "target": manifest["tvm"]["target"],
            "max_rel_err": max(errs), "tol": tol, "ok": max(errs) <= tol,
            "tvm_ms": round(tvm_ms, 4), "torch_ms": round(torch_ms, 4), "speedup_vs_torch": round(torch_ms / tvm_ms, 3)}


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
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    a = p.parse_args()
    if a.build:
        build(Path(a.build), a.nets.split(","), [int(b) for b in a.batches.split(",")], a.arch,
              a.pipelines.split(","), a.levels)
        return 0

    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        print("no GPU found: nothing to check (run this on a machine with an NVIDIA GPU)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    folders = sorted(f for f in Path(a.artifacts).iterdir() if (f / "manifest.json").exists())
    if not folders:
        print(f"no artifacts in {a.artifacts}; build them with --build")
        return 1
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    print(f"{'artifact':32} {'batch':>5} {'max rel err':>11} {'torch ms':>9} {'tvm ms':>9} {'speedup':>8}")
    rows, bad = [], 0
    for f in folders:
        try:
            r = check(f, a.repeat)
        except Exception as e:  # noqa: BLE001 - report and go on with the next artifact
            import traceback

            traceback.print_exc(limit=8)
            r = {"artifact": f.name, "error": f"{type(e).__name__}: {e}"}
            print(f"{f.name:32} ERROR {r['error'][:200]}", flush=True)
            bad += 1
            rows.append(r)
            continue
        bad += not r["ok"]
        print(f"{r['artifact']:32} {r['batch']:>5} {r['max_rel_err']:>11.2e} {r['torch_ms']:>9.3f} {r['tvm_ms']:>9.3f} "
              f"{r['speedup_vs_torch']:>7.2f}x{'' if r['ok'] else '  MISMATCH'}", flush=True)
        rows.append(r)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
