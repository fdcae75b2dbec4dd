"""benchmarks/peers.py's summary over launches: each backend's process started afresh several times."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from peers import launch_range, launch_summary, ratios  # noqa: E402


def test_one_slow_process_counts_once() -> None:
    # three launches of one backend: the second process ran twice as slow throughout (where its memory landed)
    launches = [[10.0, 10.2, 9.9, 10.1], [20.0, 20.4, 19.8], [10.4, 10.3, 10.5]]
    s = launch_summary(launches)
    assert s["launch_ms"] == [float(np.median(ms)) for ms in launches] == [10.05, 20.0, 10.4]
    assert s["median_ms"] == 10.4  # the median launch (the median of all 10 calls: 10.35)
    assert s["calls"] == 10
    pooled = np.concatenate([np.asarray(ms) for ms in launches])
    assert s["p10_ms"] == float(np.percentile(pooled, 10)) and s["p90_ms"] == float(np.percentile(pooled, 90))


def test_the_median_of_launches_differs_from_the_median_of_calls() -> None:
    # a slow launch with many calls (a fast network takes more calls per block) would outvote the others
    launches = [[5.0] * 3, [9.0] * 20, [5.2] * 3]
    assert launch_summary(launches)["median_ms"] == 5.2
    assert float(np.median(np.concatenate(launches))) == 9.0


def test_ratio_range_is_taken_within_each_launch() -> None:
    peer = launch_summary([[10.0], [20.0], [12.0]])
    own = launch_summary([[8.0], [25.0], [12.0]])
    # 10/8 = 1.25, 20/25 = 0.80, 12/12 = 1.00: the slow launch of each side is compared with its partner
    assert launch_range(peer, own) == " (launches 0.80-1.25x)"
    assert launch_range(launch_summary([[10.0]]), launch_summary([[8.0]])) == ""  # one launch: no range


def test_ratios_name_the_best_peer_and_the_range() -> None:
    rows = {"onnxruntime": launch_summary([[10.0], [11.0], [12.0]]),
            "openvino f32": launch_summary([[9.0], [9.5], [30.0]]),
            "convdsl f32": launch_summary([[9.0], [10.0], [9.0]])}
    # best f32 peer by the median of launches: openvino f32 (9.5) over onnxruntime (11.0); 9.5 / 9.0
    assert ratios(rows)["convdsl f32"] == "1.06x vs openvino f32 (launches 0.95-3.33x)"


def test_the_qdq_file_row_is_compared_with_the_runtimes_running_that_file() -> None:
    rows = {"onnxruntime int8 (QDQ)": launch_summary([[12.0]]), "openvino int8 (QDQ)": launch_summary([[10.0]]),
            "convdsl int8 (QDQ file)": launch_summary([[8.0]]), "openvino default": launch_summary([[20.0]])}
    out = ratios(rows)
    assert out["convdsl int8 (QDQ file)"] == "1.25x vs openvino int8 (QDQ)"
    assert out["best precision"] == "convdsl int8 (QDQ file): 2.50x vs openvino default"
