#!/usr/bin/env python3
"""Peer benchmark for `benches/sd_unet_speed.rs` (issue 13 point 7): one call of each Stable
Diffusion 2.1-base component with its real shapes and random weights, CPU, f32, fixed threads:
the UNet (865 M, as in `benches/torch_sd_unet.py`), the AutoencoderKL encoder (posterior mean)
and decoder, and the OpenCLIP-H CLIPTextModel (77 tokens).

  python benches/torch_sd_scale.py --make /tmp/sd21_random          # once: unet/ vae/ text_encoder/
  python benches/torch_sd_scale.py --pipeline /tmp/sd21_random --component unet --px 256 --threads 2

One component and one resolution per process, so that the printed peak resident memory
(VmHWM) is that of loading the component plus its calls and nothing else. Prints one JSON line:
median ms per call over --reps calls after one warm-up, load seconds and VmHWM.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_sd_unet import SD21, peak_rss_mb  # noqa: E402  (the UNet config and VmHWM reader of the UNet-only peer)

# stabilityai/stable-diffusion-2-1-base vae/config.json
SD21_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)

# stabilityai/stable-diffusion-2-1-base text_encoder/config.json (OpenCLIP ViT-H/14 text tower,
# penultimate layer: 23 of its 24 layers)
SD21_TEXT = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    projection_dim=512,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_factor=1.0,
    initializer_range=0.02,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


def make(root):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    for sub, build in [
        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**SD21_TEXT))),
        ("vae", lambda: AutoencoderKL(**SD21_VAE)),
        ("unet", lambda: UNet2DConditionModel(**SD21)),
    ]:
        m = build()
        print(sub, "parameters", sum(p.numel() for p in m.parameters()), flush=True)
        m.save_pretrained(os.path.join(root, sub), safe_serialization=True, max_shard_size="100GB")
        del m


def bench(a):
    root, comp, px = a.pipeline, a.component, a.px
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    if comp == "unet":
        from diffusers import UNet2DConditionModel

        m = UNet2DConditionModel.from_pretrained(os.path.join(root, "unet")).eval()
        s = px // 8
        x = torch.randn(a.batch, 4, s, s, generator=g)
        text = torch.randn(a.batch, 77, m.config.cross_attention_dim, generator=g)
        t = torch.tensor([(i * 37 + 500) % 1000 for i in range(a.batch)])

        def call():
            return m(x, t, encoder_hidden_states=text).sample
    elif comp == "vae":
        from diffusers import AutoencoderKL

        m = AutoencoderKL.from_pretrained(os.path.join(root, "vae")).eval()
        x = torch.rand(a.batch, 3, px, px, generator=g) * 2 - 1

        def call():
            return m.encode(x).latent_dist.mean
    elif comp == "decode":
        from diffusers import AutoencoderKL

        m = AutoencoderKL.from_pretrained(os.path.join(root, "vae")).eval()
        s = px // 8
        z = torch.randn(a.batch, m.config.latent_channels, s, s, generator=g)

        def call():
            return m.decode(z).sample
    elif comp == "text":
        from transformers import CLIPTextModel

        m = CLIPTextModel.from_pretrained(os.path.join(root, "text_encoder")).eval()
        ids = torch.randint(0, m.config.vocab_size, (a.batch, 77), generator=g)

        def call():
            return m(ids).last_hidden_state
    else:
        raise SystemExit(f"unknown component {comp}")
    load_s = time.perf_counter() - t0
    times = []
    with torch.inference_mode():
        call()
        for _ in range(a.reps):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"impl": "diffusers", "component": comp, "px": px, "batch": a.batch,
                      "threads": torch.get_num_threads(), "reps": a.reps,
                      "ms_per_call": round(1000 * times[len(times) // 2], 1),
                      "ms_all": [round(1000 * x, 1) for x in times],
                      "load_s": round(load_s, 1), "peak_rss_mb": round(peak_rss_mb())}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make")
    ap.add_argument("--pipeline")
    ap.add_argument("--component", choices=["unet", "vae", "decode", "text"])
    ap.add_argument("--px", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.make:
        make(a.make)
    else:
        bench(a)


if __name__ == "__main__":
    main()
