"""Import coverage, readability, speed and pruning over real model zoos, in one run.

For every torchvision classification model (torchvision.models.list_models(module=torchvision.models)),
torchvision's segmentation models and a set of timm models across families (pretrained=False: no
downloads), both routes:

- torch.export: convdsl.import_model(model, (x,))
- ONNX: torch.onnx.export (TorchScript exporter, BN kept) -> convdsl import of the .onnx file

each with: imported ok / outputs within 1e-5 of the source (relative to the output's scale) /
seconds / lines of CDL.  Then `convdsl prune --ratio 0.5` on the imported program next to
Torch-Pruning's MetaPruner (default dependency graph, 50% channel sparsity) on the same model:
prunes without error and keeps the output shape.

The run is long (a few minutes per large model on 2 cores), so each model's result is cached as JSON
in --cache; a rerun skips cached models (--fresh recomputes).  Failures are listed with their
error message (a located ConvDSLError for convdsl).

    python benchmarks/interop.py --set torchvision --limit 10
    python benchmarks/interop.py --set timm
    python benchmarks/interop.py --report          # table from the cache only
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
import torch

TIMM = ["resnet18", "resnet50d", "resnext26ts", "regnetx_002", "regnety_002", "efficientnet_b0", "mobilenetv3_small_100",
        "mobilenetv2_050", "convnext_atto", "convnextv2_atto", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
        "swin_tiny_patch4_window7_224", "mixer_s16_224", "resmlp_12_224", "poolformer_s12", "convmixer_768_32",
        "mobilevit_xxs", "densenet121", "dla34", "ghostnet_100", "hrnet_w18_small", "inception_v3", "vgg11",
        "efficientformer_l1", "levit_128s", "coat_lite_tiny", "cspresnet50", "dpn68", "rexnet_100"]
SEGMENTATION = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]


def _model(family: str, name: str):
    if family == "timm":
        import timm

        return _no_zero_tensors(timm.create_model(name, pretrained=False).eval())
    import torchvision

    if family == "segmentation":
        return _no_zero_tensors(torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                                             aux_loss=None).eval())
    return _no_zero_tensors(torchvision.models.get_model(name, weights=None).eval())


def _no_zero_tensors(model):
    """Parameters initialized to zeros (torchvision ViT's classifier head, class token and biases) are
    drawn from N(0, 0.02) instead, and BN statistics from around their defaults: a zero head would make
    every output 0 and any import "match"."""
    if any(p.is_meta for p in model.parameters()):
        return model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.abs().max():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(1 + torch.rand(m.running_var.shape, generator=gen) * 0.2)
    return model


def _size(name: str) -> int:
    return 299 if "inception" in name else 224


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _first(out):
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0] if isinstance(out, (tuple, list)) else out


def _err(e: Exception) -> str:
    from convdsl.errors import ConvDSLError

    if isinstance(e, MemoryError) or "can't allocate memory" in str(e) or "Cannot allocate memory" in str(e):
        return f"out of memory under the benchmark's address-space cap (--max-memory): {type(e).__name__} (not a ConvDSLError)"

    if isinstance(e, ConvDSLError):
        return e.render().splitlines()[0][:300]
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:250] if str(e).strip() else ''} (not a ConvDSLError)"


def code_lines(text: str) -> int:
    """Lines that are neither blank nor comments."""
    return sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))


HAND_WRITTEN = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "vgg16", "convnext_tiny", "vit_b_16",
                "swin_t", "efficientnet_b0"]


def hand_written_lines(name: str) -> int:
    """Code lines of examples/<name>.cdl and every block file it imports (transitively)."""
    import re

    root = Path(__file__).resolve().parents[1] / "examples"
    seen, todo, total = set(), [root / f"{name}.cdl"], 0
    while todo:
        f = todo.pop().resolve()
        if f in seen:
            continue
        seen.add(f)
        text = f.read_text()
        total += code_lines(text)
        todo += [f.parent / m for m in re.findall(r'^import "([^"]+)"', text, re.M)]
    return total


def readability(rows: list[dict]) -> str:
    """Must-show 2: the imported program (torch.export route) against the hand-written example."""
    lines = ["| model | imported: code lines / blocks / loops | hand-written (+ block files): code lines | ratio |",
             "|---|---|---|---|"]
    for r in rows:
        e = r.get("export", {})
        if r["family"] != "torchvision" or r["model"] not in HAND_WRITTEN or not e.get("ok") or "code_lines" not in e:
            continue
        hand = hand_written_lines(r["model"])
        lines.append(f"| {r['model']} | {e['code_lines']} / {e['blocks']} / {e['loops']} | {hand} | "
                     f"{e['code_lines'] / hand:.2f} |")
    return "\n".join(lines)


PARTS = {"export": ("export", "prune_convdsl"), "onnx": ("onnx",), "tp": ("prune_tp",)}
STAGES = {"export": ["torch.export", "import", "structure", "fmt", "check", "build+compare", "prune"],
          "onnx": ["torch.onnx.export", "import", "structure", "fmt", "check", "build+compare"],
          "tp": ["Torch-Pruning"]}
OWN = ("import", "structure", "fmt", "check")  # convdsl's own import time: source graph -> checked CDL program


class Stages:
    """Per-stage wall-clock seconds of one part, announced in a marker file so that the parent can say
    in which stage a child ran out of time or memory."""

    def __init__(self, marker: Path | None, part: str) -> None:
        self.marker, self.part, self.seconds = marker, part, {}
        self._t = None
        self._name = None

    def enter(self, name: str) -> None:
        now = time.perf_counter()
        if self._name is not None:
            self.seconds[self._name] = round(self.seconds.get(self._name, 0) + now - self._t, 3)
        self._name, self._t = name, now
        if self.marker is not None and name is not None:
            self.marker.write_text(json.dumps({"part": self.part, "stage": name}))

    def skip(self) -> None:
        """Drop the running stage's time (a callee measured its parts)."""
        self._name = None

    def done(self) -> dict:
        self.enter(None)
        return dict(self.seconds)

    def add(self, seconds: dict) -> None:
        for k, v in seconds.items():
            self.seconds[k] = round(self.seconds.get(k, 0) + v, 3)


def _summary(r, err: float) -> dict:
    return {"ok": True, "match": err <= 1e-5, "rel_err": err,
            "lines": r.text.count("\n"), "code_lines": code_lines(r.text), "blocks": r.text.count("\nblock "),
            "loops": r.text.count(" for ")}


_BUILT: dict = {}


def run_part(family: str, name: str, part: str, marker: Path | None = None, save=None) -> dict:
    """One part of one model's row: "export" (torch.export route, then convdsl prune on its program),
    "onnx" (the ONNX route) or "tp" (Torch-Pruning).  Returns {result key: result}.  ``save`` (if given)
    receives the import's result before pruning starts, so that a prune that runs out of time or memory
    does not take the finished import down with it."""
    from convdsl.backends.torch import build_module
    from convdsl.importer.api import parse_back

    st = Stages(marker, part)
    st.enter("model")
    if (family, name) not in _BUILT:  # the parts of one child share the model (Torch-Pruning prunes a copy)
        torch.manual_seed(0)
        model = _model(family, name)
        s = _size(name)
        x = torch.randn(2, 3, s, s)
        with torch.no_grad():
            ref = _first(model(x)).numpy()
        _BUILT.clear()
        _BUILT[(family, name)] = model, x, ref
    model, x, ref = _BUILT[(family, name)]
    out: dict = {}
    if part == "tp":
        st.enter("Torch-Pruning")
        r = _prune_tp(model, x, ref.shape)
        r["stages"] = st.done()
        return {"prune_tp": r}
    imported = None
    try:
        if part == "export":
            from convdsl.importer.torch_export import _snake, export_program, import_exported

            st.enter("torch.export")
            ep, dynamic = export_program(model, (x,), True)
            st.enter("import")
            imp = import_exported(ep, model, _snake(type(model).__name__), dynamic)
            imp.source = imp.source or type(model).__name__
        else:
            from convdsl.importer.onnx_import import import_file

            with tempfile.TemporaryDirectory() as d:
                f = Path(d) / "m.onnx"
                st.enter("torch.onnx.export")
                torch.onnx.export(model, (x[:1],), str(f), dynamo=False, do_constant_folding=False,
                                  training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"],
                                  dynamic_axes={"x": {0: "N"}})
                st.enter("import")
                imp = import_file(f)
        st.enter("structure+fmt+check")
        inner: dict = {}
        r = parse_back(imp, stages=inner)
        st.skip()  # parse_back measured its three stages itself
        st.add(inner)
        st.enter("build+compare")
        mod = build_module(r.graph)
        with torch.no_grad():
            got = _first(mod(x)).numpy()
        out[part] = _summary(r, _rel(got, ref))
        imported = r
    except MemoryError:
        out[part] = {"ok": False, "error": f"out of memory (the benchmark's --max-memory cap) in stage {st._name}"}
    except Exception as e:  # every failure is reported, never hidden
        out[part] = {"ok": False, "error": _err(e), "stage": st._name}
    if part == "export":
        if save is not None:
            done = dict(out[part], stages={k: v for k, v in st.seconds.items()})
            if done.get("ok"):
                done["seconds"] = round(sum(done["stages"].get(k, 0) for k in OWN), 2)
            save({part: done})
        st.enter("prune")
        out["prune_convdsl"] = _prune_convdsl(imported, x, ref.shape) if imported is not None else \
            {"ok": False, "error": "not imported"}
    seconds = st.done()
    if out[part].get("ok"):
        out[part]["seconds"] = round(sum(seconds.get(k, 0) for k in OWN), 2)
    out[part]["stages"] = {k: v for k, v in seconds.items() if k != "prune"}
    if part == "export":
        out["prune_convdsl"]["stages"] = {"prune": seconds.get("prune", 0)}
    return out


def _prune_convdsl(r, x, want: tuple) -> dict:
    """convdsl prune --ratio 0.5 on the imported program; ``want`` is the imported program's output
    shape (it matched the source's, so the source's shape)."""
    from convdsl.backends.torch import build_module
    from convdsl.passes.prune import prune

    try:
        g = prune(r.graph, 0.5)
        with torch.no_grad():
            out = _first(build_module(g)(x))
        before, after = r.graph.params.count(), g.params.count()
        if tuple(out.shape) != tuple(want):
            return {"ok": False, "error": f"output shape {tuple(out.shape)}, expected {want}", "params": [before, after]}
        return {"ok": True, "params": [before, after]}
    except Exception as e:
        return {"ok": False, "error": _err(e)}


def _prune_tp(model, x, shape) -> dict:
    """Torch-Pruning's documented recipe: MetaPruner, L1 magnitude, the classifier (the layers whose
    outputs are the model's output channels) in ignored_layers, as convdsl keeps its outputs."""
    try:
        import torch_pruning as tp

        m = __import__("copy").deepcopy(model)
        before = sum(p.numel() for p in m.parameters())
        heads = [mod for mod in m.modules()
                 if (isinstance(mod, torch.nn.Linear) and mod.out_features == shape[1])
                 or (isinstance(mod, torch.nn.modules.conv._ConvNd) and mod.out_channels == shape[1])]
        imp = tp.importance.MagnitudeImportance(p=1)
        pruner = tp.pruner.MetaPruner(m, x[:1], importance=imp, pruning_ratio=0.5, ignored_layers=heads)
        pruner.step()
        with torch.no_grad():
            out = _first(m(x))
        after = sum(p.numel() for p in m.parameters())
        if tuple(out.shape) != tuple(shape):
            return {"ok": False, "error": f"output shape {tuple(out.shape)}, expected {tuple(shape)}", "params": [before, after]}
        return {"ok": True, "params": [before, after]}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).strip()[:200]}"}


def _param_count(family: str, name: str) -> int:
    """Parameter count without allocating (a meta-device instance); for --order size."""
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in _model(family, name).parameters())
    except Exception:  # RegNet's init does not run on meta: its name says its FLOPs (~ parameters / 10^6 per GF)
        import re

        m = re.search(r"_(\d+(?:_\d+)?)(mf|gf)$", name)
        return int(float(m[1].replace("_", ".")) * (1e4 if m[2] == "mf" else 1e7)) if m else 1 << 62


def models(which: str) -> list[tuple[str, str]]:
    import torchvision

    out = []
    if which == "hand-written":
        out += [("torchvision", n) for n in HAND_WRITTEN]
    if which in ("all", "torchvision"):
        out += [("torchvision", n) for n in torchvision.models.list_models(module=torchvision.models)]
    if which in ("all", "segmentation"):
        out += [("segmentation", n) for n in SEGMENTATION]
    if which in ("all", "timm"):
        out += [("timm", n) for n in TIMM]
    return out


KEYS = ("export", "onnx", "prune_convdsl", "prune_tp")
STAGE_COLUMNS = ["model", "torch.export", "torch.onnx.export", "import", "structure", "fmt", "check", "build+compare",
                 "prune", "Torch-Pruning"]


def report(rows: list[dict], todo: list[tuple[str, str]] | None = None) -> str:
    """The coverage table (a part not run yet reads "-"), per-set counts over every listed model,
    the stage breakdown and every failure with its message."""
    lines = ["| set | model | export: ok / match / convdsl s (+ torch.export s) / lines | "
             "onnx: ok / match / convdsl s / lines | prune convdsl: params kept | prune Torch-Pruning: params kept |",
             "|---|---|---|---|---|---|"]

    def cell(r, route):
        if r is None:
            return "-"
        if not r.get("ok"):
            return "FAIL"
        st = r.get("stages")
        sec = f"{r['seconds']}" if st else f"{r['seconds']}\u2020"
        if route == "export" and st:
            sec += f" (+ {st.get('torch.export', 0):.1f})"
        return f"yes / {'yes' if r['match'] else 'NO'} / {sec} / {r['lines']}"

    def pcell(r):
        if r is None:
            return "-"
        if not r.get("ok"):
            return "FAIL"
        p = r.get("params")
        return f"yes ({100 * p[1] / p[0]:.0f}%)" if p and p[0] else "yes"

    for r in rows:
        lines.append(f"| {r['family']} | {r['model']} | {cell(r.get('export'), 'export')} | {cell(r.get('onnx'), 'onnx')} | "
                     f"{pcell(r.get('prune_convdsl'))} | {pcell(r.get('prune_tp'))} |")
    lines.append("")
    lines.append("\u2020 cached by the earlier in-process benchmark: no stage breakdown; its export seconds include "
                 "torch.export.")
    lines.append("")
    listed = todo or [(r["family"], r["model"]) for r in rows]
    by = {(r["family"], r["model"]): r for r in rows}
    for fam in sorted({f for f, _ in listed}):
        names = [n for f, n in listed if f == fam]
        sub = [by[(fam, n)] for n in names if (fam, n) in by]
        n = len(names)
        for key, what in (("export", "torch.export route: import and match"), ("onnx", "ONNX route: import and match"),
                          ("prune_convdsl", "convdsl prune 0.5: output shape intact"),
                          ("prune_tp", "Torch-Pruning 0.5: output shape intact")):
            ran = [r for r in sub if key in r]
            ok = sum(1 for r in ran if r[key].get("ok") and r[key].get("match", True))
            extra = ""
            if key == "prune_convdsl":  # convdsl prunes programs: its goal is every imported model
                imported = [r for r in ran if (r.get("export") or {}).get("ok")]
                extra = f" ({sum(1 for r in imported if r[key].get('ok'))}/{len(imported)} of those imported)"
            lines.append(f"- {fam}, {what}: **{ok}/{len(ran)} run** ({100 * ok / max(len(ran), 1):.0f}%){extra}; "
                         f"{n - len(ran)} of the {n} listed not run")
    lines.append("")
    lines.append("Seconds per stage, summed over the models above that ran the stage (where the benchmark's time goes):")
    lines.append("")
    totals: dict[str, list[float]] = {}
    for r in rows:
        for key in KEYS:
            for k, v in (r.get(key) or {}).get("stages", {}).items():
                totals.setdefault(k, []).append(v)
    lines.append("| " + " | ".join(k for k in STAGE_COLUMNS if k in totals) + " |")
    lines.append("|" + "---:|" * sum(1 for k in STAGE_COLUMNS if k in totals))
    lines.append("| " + " | ".join(f"{sum(totals[k]):.0f}" for k in STAGE_COLUMNS if k in totals) + " |")
    lines.append("")
    lines.append("Failures:")
    for r in rows:
        for key in KEYS:
            if key in r and not r[key].get("ok"):
                lines.append(f"- {r['model']} [{key}]: {r[key].get('error')}")
    return "\n".join(lines)


def stages_of(row: dict) -> str:
    """One model's stage breakdown (must-show 3 for resnet50)."""
    out = []
    for key in ("export", "onnx"):
        st = (row.get(key) or {}).get("stages")
        if st:
            out.append(f"- {row['model']}, {key}: " + ", ".join(f"{k} {v:.2f} s" for k, v in st.items())
                       + f"; convdsl's own (import + structure + fmt + check): {row[key].get('seconds')} s")
    return "\n".join(out)


def _limit_memory(gb: float):
    def apply() -> None:
        import resource

        cap = int(gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return apply


def run_isolated(family: str, name: str, parts: list[str], cache: Path, timeout: float, memory_gb: float) -> dict:
    """Run the parts of one model in child processes, each part under a wall-clock limit and the whole
    child under an RLIMIT_AS cap; a part that runs out of time or memory (or crashes the interpreter) is
    a listed failure naming its stage, and the child is started again for the parts after it."""
    f = cache / f"{family}-{name}.json"
    marker = cache / f"{family}-{name}.stage"
    todo = list(parts)
    while todo:
        marker.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--child", f"{family}:{name}", "--parts", ",".join(todo), "--cache", str(cache)]
        with tempfile.TemporaryFile() as errf:
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, preexec_fn=_limit_memory(memory_gb),
                                 env={**os.environ, "INTEROP_RUN_ID": RUN_ID})
            seen, since = None, time.monotonic()
            killed = False
            while p.poll() is None:
                time.sleep(0.5)
                cur = _read_json(marker).get("part")
                if cur != seen:
                    seen, since = cur, time.monotonic()
                if time.monotonic() - since > timeout:
                    p.kill()
                    p.wait()
                    killed = True
            errf.seek(0)
            tail = errf.read().decode(errors="replace").strip().splitlines()
        row = _read_json(f)
        done = [t for t in todo if all(k in row and row[k].get("run") == RUN_ID for k in PARTS[t])]
        todo = [t for t in todo if t not in done]
        if not todo:
            break
        where = _read_json(marker)
        part = where.get("part", todo[0])
        part = part if part in todo else todo[0]
        stage = where.get("stage", "start")
        if killed:
            why = f"timed out after {timeout:.0f} s in stage {stage} (benchmark limit, not a ConvDSLError)"
        elif p.returncode < 0 or p.returncode in (137, 139):
            why = f"child killed by signal {-p.returncode if p.returncode < 0 else p.returncode - 128} in stage {stage} " \
                  f"(memory cap {memory_gb:g} GB?; not a ConvDSLError)"
        else:
            last = next((line for line in reversed(tail) if line.strip()), "")
            why = f"child exited {p.returncode} in stage {stage}: {last[:200]} (not a ConvDSLError)"
        for k in PARTS[part]:
            if row.get(k, {}).get("run") != RUN_ID:  # a result the part saved before it died stands
                row[k] = {"ok": False, "error": why, "stage": stage, "run": RUN_ID}
        row.update(family=family, model=name)
        f.write_text(json.dumps(row, indent=1))
        todo.remove(part)
    marker.unlink(missing_ok=True)
    return _read_json(f)


def _read_json(f: Path) -> dict:
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return {}


RUN_ID = os.environ.get("INTEROP_RUN_ID") or f"{os.getpid()}-{int(time.time())}"


def child(spec: str, parts: list[str], cache: Path) -> None:
    family, name = spec.split(":", 1)
    torch.set_num_threads(2)
    f = cache / f"{family}-{name}.json"
    marker = cache / f"{family}-{name}.stage"
    def save(got: dict) -> None:
        row = _read_json(f)
        row.update(family=family, model=name)
        for k, v in got.items():
            row[k] = dict(v, run=RUN_ID)
        f.write_text(json.dumps(row, indent=1))

    for part in parts:
        try:
            got = run_part(family, name, part, marker, save)
        except MemoryError:
            stage = _read_json(marker).get("stage", "?")
            got = {k: {"ok": False, "error": f"out of memory (the benchmark's memory cap) in stage {stage}"} for k in PARTS[part]}
        except Exception as e:  # building the model itself failed
            got = {k: {"ok": False, "error": _err(e), "stage": "model"} for k in PARTS[part]}
        row = _read_json(f)
        row.update(family=family, model=name)
        for k, v in got.items():
            v["run"] = RUN_ID
            row[k] = v
        f.write_text(json.dumps(row, indent=1))


def _complete(row: dict, parts: list[str], rerun_failed: bool) -> list[str]:
    """The parts of a cached row still to run."""
    need = []
    for part in parts:
        rs = [row.get(k) for k in PARTS[part]]
        if any(r is None for r in rs):
            need.append(part)
        elif rerun_failed and any(not r.get("ok") for r in rs):
            need.append(part)
        elif part in ("export", "onnx") and rs[0].get("ok") and "code_lines" not in rs[0]:
            need.append(part)  # cached by a version of the benchmark that did not count lines yet
    return need


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="all", choices=("all", "torchvision", "segmentation", "timm", "hand-written"),
                    help="hand-written: the nine torchvision networks examples/ also writes by hand (must-show 2)")
    ap.add_argument("--cache", default="build/interop-bench", help="one JSON file per model")
    ap.add_argument("--limit", type=int, default=None, help="at most this many models (in list order)")
    ap.add_argument("--only", default=None, help="comma-separated model names")
    ap.add_argument("--skip", default=None, help="comma-separated model names to leave out")
    ap.add_argument("--order", default="list", choices=("list", "size"),
                    help="size: smallest models first (parameter counts from meta-device instances)")
    ap.add_argument("--parts", default="export,onnx,tp", help="export (+ convdsl prune), onnx, tp (Torch-Pruning)")
    ap.add_argument("--timeout", type=float, default=600, help="wall-clock seconds per part of a model")
    ap.add_argument("--max-memory", type=float, default=10, help="GB of address space per child (RLIMIT_AS)")
    ap.add_argument("--jobs", type=int, default=1, help="models run at the same time (each in its own processes)")
    ap.add_argument("--fresh", action="store_true", help="recompute cached models")
    ap.add_argument("--rerun-failed", action="store_true", help="recompute the cached parts that failed")
    ap.add_argument("--report", action="store_true", help="print the table from the cache only")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    if args.child:
        child(args.child, parts, cache)
        return
    torch.set_num_threads(2)
    todo = models(args.set)
    if args.only:
        keep = set(args.only.split(","))
        todo = [t for t in todo if t[1] in keep]
    if args.skip:
        drop = set(args.skip.split(","))
        todo = [t for t in todo if t[1] not in drop]
    if args.order == "size":
        todo.sort(key=lambda t: _param_count(*t))
    if args.limit:
        todo = todo[: args.limit]
    if args.set == "hand-written":
        parts = ["export"]  # the readability table needs the torch.export route only
    def one(t: tuple[str, str]) -> dict:
        family, name = t
        row = _read_json(cache / f"{family}-{name}.json")
        need = parts if args.fresh else _complete(row, parts, args.rerun_failed)
        if need and not args.report:
            t0 = time.monotonic()
            row = run_isolated(family, name, need, cache, args.timeout, args.max_memory)
            print(f"{family} {name} ({time.monotonic() - t0:.0f} s): " + ", ".join(
                f"{k} {'ok' if row.get(k, {}).get('ok') else 'FAIL'}"
                + ("" if not row.get(k, {}).get("ok") or "match" not in row[k] else
                   f"/{'match' if row[k]['match'] else 'MISMATCH'}") for k in ("export", "onnx", "prune_convdsl", "prune_tp")
                if k in row), flush=True)
        return row

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each model runs in child processes
        done = list(pool.map(one, todo))
    rows = [row for row in done if any(k in row for k in KEYS)]
    if args.set != "hand-written":
        print(report(rows, todo))
        print()
        for row in rows:
            if row["model"] in ("resnet50",):
                print(stages_of(row))
        print()
    print(readability(rows))


if __name__ == "__main__":
    main()
