#!/usr/bin/env python3
"""Peer benchmark for `melo audit --bench-batch B`: diffusers UNet2DModel forward on the same
target, same batch, same inputs shape, on the CPU with a fixed thread count.

Usage: python benches/torch_unet.py [--target assets/demo_ddpm] [--batch 1,16,100] [--threads 2]
Prints one JSON line per batch size (ms per call and per image), like the Rust command.
"""
import argparse
import json
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--target", default="assets/demo_ddpm")
ap.add_argument("--batch", default="1,16,100")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)

from diffusers import UNet2DModel  # noqa: E402

model = UNet2DModel.from_pretrained(args.target).eval()
s = model.config.sample_size or 32
for batch in [int(b) for b in args.batch.split(",")]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, model.config.in_channels, s, s, generator=g)
    t = torch.tensor([(i * 37) % 1000 for i in range(batch)])
    reps = max(3, min(50, 2000 // batch))
    with torch.inference_mode():
        model(x, t)  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x, t)
        per_call = (time.perf_counter() - t0) / reps
    print(json.dumps(dict(target=args.target, batch=batch, repeats=reps, ms_per_call=per_call * 1e3,
                          ms_per_image=per_call * 1e3 / batch, threads=args.threads, torch=torch.__version__)))
