#!/usr/bin/env python3
"""PyTorch peer of `melo bench`: the same DINOv2 ViT-S/14 backbone in timm, LoRA adapters
through HF PEFT (`load_adapter` / `set_adapter`).

    python3 benches/torch_vit.py [--threads 2] [--runs 20] [--switches 1000] [--adapters 10] [--json]

Measured in one process, in this order, like `melo bench`:
  1. RSS at start (torch, timm, peft imported);
  2. backbone: timm VisionTransformer (224 px, LayerScale, CLS, 4-class head) with the weights
     of assets/backbone/dinov2_vits14.safetensors (f16 -> f32; pos_embed resized once to 16x16,
     bicubic, as the Rust engine caches it) -> RSS;
  3. N PEFT adapters (LoRA r=4, alpha=4 on timm's fused `qkv`, head in modules_to_save), made
     and saved beforehand by a child process, loaded with PeftModel.from_pretrained +
     load_adapter -> RSS and per-adapter load time;
  4. 1000 `set_adapter` calls in a pseudo-random order among them, each timed;
  5. forward at 224 px, batch 1 with the adapter active (unmerged LoRA, as PEFT runs it) and
     with the adapter disabled (plain backbone), and batch 8 (backbone): median of --runs.

PEFT cannot put separate LoRAs on q and v of timm's fused qkv (MeLo's layout); its usual timm
recipe targets the whole qkv, which costs the same per block (B is [3*dim, r] instead of two
[dim, r]).
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

REPO = Path(__file__).resolve().parents[1]
BACKBONE = REPO / "assets" / "backbone"


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def rss_mib(key: str = "VmRSS:") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--switches", type=int, default=1000)
    ap.add_argument("--adapters", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--make-adapters", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args()


args = parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

torch.set_num_threads(args.threads)
torch.set_num_interop_threads(1)
NUM_CLASSES = 4


def build_backbone() -> torch.nn.Module:
    cfg = json.loads((BACKBONE / "config.json").read_text())
    model = VisionTransformer(
        img_size=cfg["image_size"],
        patch_size=cfg["patch_size"],
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=True,
        init_values=1.0,  # LayerScale; values come from the checkpoint
        num_classes=NUM_CLASSES,
        global_pool="token",
    ).eval()
    w = load_file(str(BACKBONE / cfg["weights"]))
    sd = {k: torch.from_numpy(v.astype(np.float32)) for k, v in w.items()}
    g, grid = cfg["pos_embed_grid"], cfg["image_size"] // cfg["patch_size"]
    pos = sd["pos_embed"]
    patches = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False)
    sd["pos_embed"] = torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)
    sd["head.weight"] = torch.zeros(NUM_CLASSES, cfg["embed_dim"])
    sd["head.bias"] = torch.zeros(NUM_CLASSES)
    model.load_state_dict(sd, strict=True)
    return model


def make_adapters(folder: Path, n: int) -> None:
    """Child process: N random PEFT adapters saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_backbone(), LoraConfig(r=4, lora_alpha=4, target_modules=["qkv"], modules_to_save=["head"]))
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(0.02 * torch.randn(p.shape, generator=g))
        model.save_pretrained(str(folder / f"task_{i:02d}"), safe_serialization=True)


def median(xs):
    return float(np.median(xs))


def p99(xs):
    s = sorted(xs)
    return float(s[max(0, int(np.ceil(0.99 * len(s))) - 1)])


def time_forward(model, x, runs):
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        samples = []
        cpu0 = time.process_time()
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            samples.append((time.perf_counter() - t0) * 1e3)
        cpu_ms = (time.process_time() - cpu0) * 1e3 / runs
    return {"runs": runs, "median_ms": median(samples), "mean_ms": float(np.mean(samples)), "min_ms": float(min(samples)),
            "cpu_ms": cpu_ms}


def test_input(batch: int, size: int = 224) -> torch.Tensor:
    """The same smooth image-like input as `melo bench`."""
    y, x = np.meshgrid(np.arange(size) / size, np.arange(size) / size, indexing="ij")
    data = np.stack(
        [np.stack([(np.sin(x * 6 + c) + np.cos(y * 4 + b)) * 0.9 for c in range(3)]) for b in range(batch)]
    )
    return torch.from_numpy(data.astype(np.float32))


def main():
    if args.make_adapters:
        make_adapters(args.make_adapters, args.adapters)
        return
    import peft
    from peft import PeftModel
    import timm

    load_start = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run([sys.executable, __file__, "--make-adapters", str(folder), "--adapters", str(args.adapters),
                        "--threads", str(args.threads)], check=True)
        rss_start = rss_mib()
        t0 = time.perf_counter()
        base = build_backbone()
        load_ms = (time.perf_counter() - t0) * 1e3
        rss_backbone = rss_mib()

        names = [f"task_{i:02d}" for i in range(args.adapters)]
        load_times = []
        t = time.perf_counter()
        model = PeftModel.from_pretrained(base, str(folder / names[0]), adapter_name=names[0])
        load_times.append((time.perf_counter() - t) * 1e3)
        for name in names[1:]:
            t = time.perf_counter()
            model.load_adapter(str(folder / name), adapter_name=name)
            load_times.append((time.perf_counter() - t) * 1e3)
        model.eval()
        rss_adapters = rss_mib()

        state = 0x2545F4914F6CDD1D
        switch_us = []
        for _ in range(args.switches):
            state ^= (state << 13) & 0xFFFFFFFFFFFFFFFF
            state ^= state >> 7
            state ^= (state << 17) & 0xFFFFFFFFFFFFFFFF
            name = names[state % len(names)]
            t = time.perf_counter()
            model.set_adapter(name)
            switch_us.append((time.perf_counter() - t) * 1e6)

        x1, x8 = test_input(1), test_input(8)
        with_adapter = time_forward(model, x1, args.runs)
        with model.disable_adapter():
            b1 = time_forward(model, x1, args.runs)
            b8 = time_forward(model, x8, max(3, args.runs // 4))

    report = {
        "peer": "torch+timm+peft",
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "peft": peft.__version__},
        "threads": torch.get_num_threads(),
        "load_average": [load_start, load_average()],
        "load_ms": load_ms,
        "forward_batch1": b1,
        "forward_batch1_with_adapter": with_adapter,
        "forward_batch8": b8,
        "forward_batch8_per_image_ms": b8["median_ms"] / 8,
        "adapter_load_ms": {"first": load_times[0], "median": median(load_times), "last": load_times[-1]},
        "switch": {"switches": len(switch_us), "adapters": len(names), "median_us": median(switch_us),
                   "p99_us": p99(switch_us), "max_us": max(switch_us)},
        "memory": {"rss_start_mib": rss_start, "rss_backbone_mib": rss_backbone,
                   "rss_backbone_adapters_mib": rss_adapters, "ratio": rss_adapters / rss_backbone,
                   "peak_rss_mib": rss_mib("VmHWM:")},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    v = report["versions"]
    la = report["load_average"]
    print(f"torch {v['torch']} + timm {v['timm']} + peft {v['peft']}, {report['threads']} thread(s), 224 px, "
          f"load average {la[0]:.2f} -> {la[1]:.2f}")
    print(f"backbone build + load                    {load_ms:9.1f} ms")
    for key, label in [("forward_batch1", "forward batch 1"), ("forward_batch1_with_adapter", "forward batch 1, LoRA adapter active"),
                       ("forward_batch8", "forward batch 8")]:
        r = report[key]
        print(f"{label:<40} {r['median_ms']:9.1f} ms median ({r['mean_ms']:.1f} mean, {r['min_ms']:.1f} min, {r['runs']} runs; {r['cpu_ms']:.0f} ms CPU per run)")
    print(f"forward batch 8, per image                {report['forward_batch8_per_image_ms']:9.1f} ms")
    a = report["adapter_load_ms"]
    print(f"load_adapter                             {a['median']:9.1f} ms median (first {a['first']:.1f}, last {a['last']:.1f})")
    s = report["switch"]
    print(f"set_adapter ({s['switches']} switches, {s['adapters']} adapters) {s['median_us']:8.1f} µs median, "
          f"{s['p99_us']:.1f} µs p99, {s['max_us']:.1f} µs max")
    m = report["memory"]
    print(f"RSS at start                             {m['rss_start_mib']:9.1f} MiB")
    print(f"RSS backbone                             {m['rss_backbone_mib']:9.1f} MiB")
    print(f"RSS backbone + {s['adapters']:<2} adapters              {m['rss_backbone_adapters_mib']:9.1f} MiB  ({m['ratio']:.4f}x backbone)")
    print(f"peak RSS                                 {m['peak_rss_mib']:9.1f} MiB")


if __name__ == "__main__":
    main()
