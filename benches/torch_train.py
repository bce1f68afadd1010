#!/usr/bin/env python3
"""PyTorch peer of `melo train`'s training throughput: the same DINOv2 ViT-S/14 weights in timm,
LoRA through HF PEFT (r=4, alpha=4), or full fine-tuning, on the same input size and batch.

    python3 benches/torch_train.py [--method lora|full] [--size 56] [--batch 32] [--steps 12] [--threads 2] [--json]

One training step = forward, cross-entropy with label smoothing 0.1, backward, AdamW update,
exactly what `melo train` does per batch. Inputs are random normal pixels (throughput does not
depend on the values); the first 2 steps are warm-up and not timed. Reports the median
images/second over the timed steps.

PEFT cannot put separate LoRAs on q and v of timm's fused qkv (MeLo's layout); its usual timm
recipe targets the whole qkv (B is [3*dim, r] instead of two [dim, r]: the same cost per block).
The head reads the CLS token here and CLS || mean-patch in `melo train` (a 768- instead of a
384-wide input to a 2-class head: negligible).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKBONE = REPO / "assets" / "backbone"

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--method", choices=["lora", "full"], default="lora")
ap.add_argument("--size", type=int, default=56)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--classes", type=int, default=2)
ap.add_argument("--steps", type=int, default=12)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--json", action="store_true")
args = ap.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

torch.set_num_threads(args.threads)
torch.set_num_interop_threads(1)
torch.manual_seed(0)


def build_backbone(size: int, classes: int) -> torch.nn.Module:
    cfg = json.loads((BACKBONE / "config.json").read_text())
    model = VisionTransformer(
        img_size=size,
        patch_size=cfg["patch_size"],
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=True,
        init_values=1.0,
        num_classes=classes,
        global_pool="token",
    )
    w = load_file(str(BACKBONE / cfg["weights"]))
    sd = {k: torch.from_numpy(v.astype(np.float32)) for k, v in w.items()}
    g, grid = cfg["pos_embed_grid"], size // cfg["patch_size"]
    pos = sd["pos_embed"]
    patches = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False)
    sd["pos_embed"] = torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)
    bound = 1.0 / cfg["embed_dim"] ** 0.5
    sd["head.weight"] = torch.empty(classes, cfg["embed_dim"]).uniform_(-bound, bound)
    sd["head.bias"] = torch.empty(classes).uniform_(-bound, bound)
    model.load_state_dict(sd, strict=True)
    return model


model = build_backbone(args.size, args.classes)
if args.method == "lora":
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=4, target_modules=["qkv"], modules_to_save=["head"]))
    # MeLo's recipe also freezes the position embedding and everything but LoRA + head.
model.train()
params = [p for p in model.parameters() if p.requires_grad]
trainable = sum(p.numel() for p in params)
opt = torch.optim.AdamW(params, lr=1e-3 if args.method == "lora" else 5e-5, weight_decay=1e-4)

x = torch.randn(args.batch, 3, args.size, args.size)
y = torch.randint(0, args.classes, (args.batch,))
times = []
for step in range(args.steps + 2):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
    loss.backward()
    opt.step()
    if step >= 2:
        times.append(time.perf_counter() - t0)

step_s = statistics.median(times)
result = {
    "peer": f"torch {torch.__version__} + timm" + (" + peft" if args.method == "lora" else ""),
    "method": args.method,
    "size": args.size,
    "batch": args.batch,
    "threads": args.threads,
    "trainable_parameters": trainable,
    "step_seconds_median": step_s,
    "images_per_second": args.batch / step_s,
    "load_average": float(Path("/proc/loadavg").read_text().split()[0]),
}
if args.json:
    print(json.dumps(result))
else:
    print(
        f"{result['peer']}: {args.method} {args.size}px batch {args.batch}, {args.threads} threads: "
        f"{result['images_per_second']:.1f} img/s (median step {step_s * 1000:.0f} ms, {trainable} trainable, load {result['load_average']:.1f})"
    )
