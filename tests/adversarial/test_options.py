"""Hostile option values on every command: each must be a usage error (exit code 2) that names
what the option takes, never a traceback, a hang or a silent default, and change no file.

The shared parsers live in convdsl/cli/common.py (``--set``, ``--choose``, ``--bind``,
``--max-memory``, ``--seed``; ``Count`` and ``Number`` for the numeric options of prune,
quantize, tune, verify and bench).  One fresh process runs the corpus (tests/adversarial/batch.py).
"""
from __future__ import annotations

import pytest

from tests.adversarial.batch import Case, run_cli_batch
from tests.adversarial.harness import assert_no_crash, assert_only_changed, assert_refused, tree_state

NET = """network n(x: f32[N, 3, 8, 8], width=4, sizes=[4]) {
    return x | conv2d(width, 3, pad=1) | relu
}
"""

DIGITS_5000 = "9" * 5000
DEEP_LIST = "[" * 40_000 + "]" * 40_000  # 80,000 characters: under the length limit, past the depth limit

# (name, arguments after the command and file, what the message must mention)
PROGRAM_OPTIONS = [
    ("bind-word", ["--bind", "N=abc"], "SYM=SIZE"),
    ("bind-float-overflow", ["--bind", "N=1e400"], "SYM=SIZE"),
    ("bind-negative", ["--bind", "N=-1"], "SYM=SIZE"),
    ("bind-zero", ["--bind", "N=0"], "SYM=SIZE"),
    ("bind-over-2**62", ["--bind", "N=" + "9" * 25], "SYM=SIZE"),
    ("bind-5000-digits", ["--bind", "N=" + DIGITS_5000], "SYM=SIZE"),
    ("bind-no-equals", ["--bind", "N"], "SYM=SIZE"),
    ("bind-bad-name", ["--bind", "1N=4"], "SYM=SIZE"),
    ("bind-unknown-symbol", ["--bind", "M=4"], "no symbolic dimension 'M'"),
    ("set-5000-digits", ["--set", "width=" + DIGITS_5000], "digits"),
    ("set-nan", ["--set", "width=nan"], "finite"),
    ("set-inf", ["--set", "width=-inf"], "finite"),
    ("set-1e400", ["--set", "width=1e400"], "finite"),
    ("set-list-nan", ["--set", "sizes=[1, NaN]"], "finite"),
    ("set-list-1e400", ["--set", "sizes=[1e400]"], "finite"),
    ("set-list-5000-digits", ["--set", f"sizes=[{DIGITS_5000}]"], "digits"),
    ("set-list-40000-deep", ["--set", "sizes=" + DEEP_LIST], "nested"),
    ("set-list-object", ["--set", 'sizes=[{"a": 1}]'], "object"),
    ("set-list-broken", ["--set", "sizes=[1, 2"], "as JSON"),
    ("set-200000-characters", ["--set", "width=" + "a" * 200_000], "characters"),
    ("set-no-equals", ["--set", "width"], "NAME=VALUE"),
    ("set-unknown-parameter", ["--set", "depth=3"], "no parameter 'depth'"),
    ("choose-40000-deep", ["--choose", "k=" + DEEP_LIST], "nested"),
    ("max-memory-400-digits", ["--max-memory", "9" * 400], "memory size"),
    ("max-memory-zero", ["--max-memory", "0"], "0 bytes"),
    ("max-memory-zero-GiB", ["--max-memory", "0GiB"], "0 bytes"),
    ("max-memory-negative", ["--max-memory", "-1GiB"], "memory size"),
    ("max-memory-word", ["--max-memory", "lots"], "memory size"),
    ("max-memory-nan", ["--max-memory", "nanGiB"], "memory size"),
    ("max-memory-over-2**62", ["--max-memory", "9999999PiB"], "2**62"),
    ("max-memory-bad-unit", ["--max-memory", "4XiB"], "memory size"),
    ("seed-negative", ["--seed", "-1"], "--seed"),
    ("seed-5000-digits", ["--seed", DIGITS_5000], "--seed"),
]

# numeric options of other commands: (name, command and options before FILE, options after)
COMMAND_OPTIONS = [
    ("prune-ratio-nan", ["prune"], ["--ratio", "nan", "-o", "out"], "--ratio"),
    ("prune-ratio-over-1", ["prune"], ["--ratio", "1.5", "-o", "out"], "--ratio"),
    ("prune-round-to-0", ["prune"], ["--round-to", "0", "-o", "out"], "--round-to"),
    ("prune-tolerance-0", ["prune"], ["--tolerance", "0", "-o", "out"], "--tolerance"),
    ("prune-lr-inf", ["prune"], ["--lr", "inf", "-o", "out"], "--lr"),
    ("prune-batch-size-0", ["prune"], ["--batch-size", "0", "-o", "out"], "--batch-size"),
    ("prune-finetune-epochs-negative", ["prune"], ["--finetune-epochs", "-3", "-o", "out"], "--finetune-epochs"),
    ("quantize-percentile-nan", ["quantize"], ["--percentile", "nan", "--calib", "digits", "-o", "out"], "--percentile"),
    ("quantize-weight-bits-1", ["quantize"], ["--weight-bits", "1", "--calib", "digits", "-o", "out"], "--weight-bits"),
    ("quantize-calib-samples-0", ["quantize"], ["--calib-samples", "0", "--calib", "digits", "-o", "out"], "--calib-samples"),
    ("verify-examples-0", ["verify"], ["--examples", "0"], "--examples"),
    ("verify-batch-negative", ["verify"], ["--batch", "-2"], "--batch"),
    ("tune-trials-0", ["tune"], ["--trials", "0"], "--trials"),
    ("bench-batch-0", ["bench"], ["--batch", "0"], "--batch"),
    ("bench-batch-huge", ["bench"], ["--batch", "10000000"], "--batch"),
    ("bench-repeat-negative", ["bench"], ["--repeat", "-1"], "--repeat"),
    ("bench-threads-0", ["bench"], ["--threads", "0"], "--threads"),
    ("compile-tune-negative", ["compile"], ["-o", "out", "--backend", "tvm-llvm", "--tune", "-5"], "--tune"),
    ("compile-target-json-deep", ["compile"], ["-o", "out", "--backend", "tvm-llvm", "--target-json", DEEP_LIST],
     "--target-json"),
    ("compile-target-json-5000-digits", ["compile"], ["-o", "out", "--backend", "tvm-llvm", "--target-json",
                                                      '{"kind": "llvm", "mcpu": ' + DIGITS_5000 + "}"], "digits"),
    ("compile-arch-5000-digits", ["compile"], ["-o", "out", "--backend", "tvm-cuda", "--arch", "sm_" + DIGITS_5000],
     "--arch"),
    ("tune-target-json-nan", ["tune"], ["--target-json", '{"kind": "llvm", "x": NaN}'], "finite"),
]

COMMANDS = ["check", "stats", "print", "compile"]  # every command that elaborates takes program_options


def _cases():
    cases = {}
    for i, (name, args, words) in enumerate(PROGRAM_OPTIONS):
        cmd = COMMANDS[i % len(COMMANDS)]  # spread the corpus over the commands that share the parsers
        extra = ["-o", "out"] if cmd == "compile" else []
        cases[f"{cmd} {name}"] = (Case(cmd, "net.cdl", *extra, *args, timeout=20), words)
    for name, cmd, args, words in COMMAND_OPTIONS:
        cases[name] = (Case(*cmd, "net.cdl", *args, timeout=20), words)
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    d = tmp_path_factory.mktemp("options")
    (d / "net.cdl").write_text(NET)
    before = tree_state(d)
    names = list(CASES)
    results = run_cli_batch([CASES[n][0] for n in names] + [Case("check", "net.cdl", "--bind", "N=16",
                                                                   "--max-memory", "1.5MiB", "--seed", "7")],
                            cwd=d, mem_mb=2048)
    return dict(zip(names + ["control"], results)), before, tree_state(d)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_option_is_a_usage_error(ran, name):
    results, _, _ = ran
    r = results[name]
    assert_refused(r, exit_code=2, mentions=CASES[name][1])
    assert len(r.output) < 12_000, f"{name}: {len(r.output):,} characters of output"  # click echoes the value


def test_valid_options_still_work(ran):
    results, _, _ = ran
    r = results["control"]
    assert_no_crash(r)
    assert r.returncode == 0, r.output[-2000:]
    assert "N=16" in r.stdout


def test_no_file_changed(ran):
    _, before, after = ran
    assert_only_changed(before, after)  # no refused compile/prune/quantize wrote "out"
