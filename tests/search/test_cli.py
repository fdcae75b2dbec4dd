"""`convdsl search` end to end on a tiny space: kill -9 and resume, outputs, determinism."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convdsl.search import Store
from convdsl.search.evaluate import evaluate_candidate
from convdsl.search.space import SearchSpace

from .spaces import TINY

BUDGET = 5
ARGS = ["--budget", str(BUDGET), "--epochs", "1", "--workers", "1", "--objective", "accuracy,params",
        "--population", "3", "--tournament", "2", "--no-progress"]


def _convdsl(*args: str) -> list[str]:
    return [sys.executable, "-m", "convdsl", *args]


def _done(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM candidates WHERE status = 'done'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A search killed with SIGKILL after two evaluations, then resumed to the end."""
    tmp = tmp_path_factory.mktemp("search")
    (tmp / "tiny.cdl").write_text(TINY)
    out = tmp / "out"
    proc = subprocess.Popen(_convdsl("search", "tiny.cdl", "--out", "out", *ARGS), cwd=tmp,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 400
    while _done(out / "search.sqlite") < 2:
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"search ended or stalled before two evaluations: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the search and its worker, mid-flight
    proc.wait()
    store = Store(out)
    before = {r.id: r for r in store.rows("status = 'done'")}
    running = [r.id for r in store.rows("status = 'running'")]
    store.close()
    res = subprocess.run(_convdsl("search", "--resume", "out", "--no-progress"), cwd=tmp,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return out, before, running, res.stdout + res.stderr


def test_kill_9_loses_and_repeats_nothing(killed_and_resumed):
    out, before, running, _ = killed_and_resumed
    store = Store(out)
    assert store.integrity() == "ok"
    rows = store.rows("kind = 'search'")
    assert [r.id for r in rows] == list(range(BUDGET)) and all(r.status == "done" for r in rows)
    assert len({r.hash for r in rows}) == BUDGET  # no program evaluated twice
    for r in rows:
        if r.id in before:  # finished before the kill: kept as it was, evaluated once
            b = before[r.id]
            assert (r.hash, r.val_acc, r.finished, r.attempts) == (b.hash, b.val_acc, b.finished, 1)
        assert (out / "weights" / f"{r.id}.safetensors").exists()
    resumes = [e for e in store.events() if e["what"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["detail"]["requeued"] == running
    for cid in running:  # the evaluation cut by the kill ran again, from the start
        assert store.row(cid).attempts == 2
    store.close()


def test_outputs_are_plain_programs_with_their_weights(killed_and_resumed):
    from convdsl.api import load_graph
    from convdsl.backends.torch import build_module
    from convdsl.train import evaluate, load_dataset

    out, _, _, log = killed_and_resumed
    assert "Pareto front" in log
    files = sorted((out / "pareto").glob("*.cdl"))
    assert files and (out / "pareto.png").stat().st_size > 0 and (out / "pareto.svg").exists()
    assert "## Pareto front" in (out / "summary.md").read_text()
    store = Store(out)
    for f in files:
        assert "choice(" not in f.read_text()
        cid = int(f.stem.split("_c")[1])
        g = load_graph(f, weights=f.with_suffix(".safetensors"))
        acc = evaluate(g, load_dataset("digits"), build=build_module)["accuracy"]
        assert acc == pytest.approx(store.row(cid).val_acc, abs=1e-9)  # the weights the search measured
    store.close()


def test_resume_needs_a_search_folder(tmp_path):
    res = subprocess.run(_convdsl("search", "--resume", str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "holds no search" in res.stderr


def test_an_evaluation_is_deterministic(tmp_path):
    space = SearchSpace(TINY, str(tmp_path / "tiny.cdl"))
    c = space.check(space.initial())
    task = {"text": c.text, "file": space.file, "network": None, "sources": {}, "data": "digits",
            "split_seed": 0, "val_fraction": 0.2, "epochs": 1, "batch_size": 64, "seed": 3, "threads": 1}
    a, b = evaluate_candidate(task), evaluate_candidate(task)
    assert a["status"] == "done", a.get("error")
    assert a["val_acc"] == b["val_acc"] and a["weights"] == b["weights"] and a["params"] == c.params
    bad = evaluate_candidate({**task, "text": "network n(x: f32[N, 3, 8, 8]) {\n    return x\n}\n"})
    assert bad["status"] == "failed" and "data error" in bad["error"]


def test_several_training_seeds_average_the_accuracy(tmp_path):
    space = SearchSpace(TINY, str(tmp_path / "tiny.cdl"))
    c = space.check(space.initial())
    task = {"text": c.text, "file": space.file, "network": None, "sources": {}, "data": "digits",
            "split_seed": 0, "val_fraction": 0.2, "epochs": 1, "batch_size": 64, "seed": 3, "threads": 1}
    one, two = evaluate_candidate(task), evaluate_candidate({**task, "seed": 4})
    both = evaluate_candidate({**task, "seeds": 2})
    assert both["status"] == "done", both.get("error")
    assert both["val_acc_seeds"] == [one["val_acc"], two["val_acc"]]
    assert both["val_acc"] == pytest.approx((one["val_acc"] + two["val_acc"]) / 2)
    assert both["weights"] == one["weights"]  # the first seed's network is the one kept
