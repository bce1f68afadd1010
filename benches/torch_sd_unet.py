#!/usr/bin/env python3
"""Peer benchmark for `benches/sd_unet_speed.rs`: one diffusers UNet2DConditionModel call with Stable
Diffusion 2.1's real shapes (865 M parameters, random weights), CPU, f32, fixed thread count.

  python benches/torch_sd_unet.py --make /tmp/sd21_unet      # writes the random UNet folder once
  python benches/torch_sd_unet.py --unet /tmp/sd21_unet --latent 32,64 --batch 1 --threads 2

Prints one JSON line per latent size: median ms per call over --reps calls (after one warm-up)
and the process's peak resident memory (VmHWM) after the calls.
"""
import argparse
import json
import time

import torch

# stabilityai/stable-diffusion-2-1-base unet/config.json (the 768-v model differs only in
# sample_size 96 and upcast_attention true).
SD21 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    norm_num_groups=32,
)


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make")
    ap.add_argument("--unet")
    ap.add_argument("--latent", default="32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from diffusers import UNet2DConditionModel

    if a.make:
        torch.manual_seed(0)
        m = UNet2DConditionModel(**SD21)
        print("parameters", sum(p.numel() for p in m.parameters()))
        m.save_pretrained(a.make, safe_serialization=True, max_shard_size="100GB")
        return
    m = UNet2DConditionModel.from_pretrained(a.unet).eval()
    for s in [int(x) for x in a.latent.split(",")]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(a.batch, 4, s, s, generator=g)
        text = torch.randn(a.batch, 77, m.config.cross_attention_dim, generator=g)
        t = torch.tensor([(i * 37 + 500) % 1000 for i in range(a.batch)])
        times = []
        with torch.inference_mode():
            m(x, t, encoder_hidden_states=text)
            for _ in range(a.reps):
                t0 = time.perf_counter()
                m(x, t, encoder_hidden_states=text)
                times.append(time.perf_counter() - t0)
        times.sort()
        print(json.dumps({"impl": "diffusers", "latent": s, "batch": a.batch, "threads": a.threads,
                          "ms_per_call": round(1000 * times[len(times) // 2], 1),
                          "peak_rss_mb": round(peak_rss_mb())}), flush=True)


if __name__ == "__main__":
    main()
