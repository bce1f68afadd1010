#!/usr/bin/env python3
"""Independent diffusers reconstruction of exposed members, as the privacy tab's gallery shows
them (src/audit/gallery.rs, `MemberGallery::reconstruction` on a Stable Diffusion pipeline):
img2img from the member itself, written here with diffusers / transformers / numpy only.

    python tools/sd/gallery_reference.py tests/data/sd/pipeline_tiny \
        --out tests/data/sd/pipeline_tiny/gallery_reference.json

Per member i (metadata.jsonl order, resized like train_text_to_image.py):
  z     = vae.encode(x).latent_dist.mean * scaling_factor
  x_t0  = sqrt(a_t0) z + sqrt(1 - a_t0) eps,  eps = gaussian_noise(z.shape, seed, 100000)
  for t in round(t0 * (steps - k) / steps), k = 0..steps-1 (DDIM, eta = 0, caption-conditioned):
        e = eps_theta(x, t, caption); x0_hat = (x - sqrt(1 - a_t) e) / sqrt(a_t); x = DDIM move to
        the next t (alpha = 1 after the last)
  image = vae.decode(x0_hat_last / scaling_factor).sample, then the mean over its RGB channels
The seeded noise and the pipeline helpers come from audit_reference.py (same tools folder).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from audit_reference import Pipeline, gaussian_noise, load_set  # noqa: E402


@torch.no_grad()
def reconstruct(p, x, caption, t0, steps, seed):
    z = p.latents(x[None], 1)
    noise = gaussian_noise(tuple(z.shape), seed, 100000)
    text = p.text([caption])
    ts = [int(round(t0 * (steps - k) / steps)) for k in range(steps)]
    xt = p.add_noise(z, noise, t0)
    x0 = None
    for k, t in enumerate(ts):
        e = p.eps(xt, t, text, 1)
        a = p.acp[t]
        x0 = ((xt.double() - (1 - a).sqrt() * e.double()) / a.sqrt()).float()
        nxt = ts[k + 1] if k + 1 < len(ts) else -1
        xt = p.ddim_move(xt, e, t, nxt)
    img = p.vae.decode(x0 / p.vae.config.scaling_factor).sample[0]
    return img.mean(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pipeline")
    ap.add_argument("--members", default=None, help="default: PIPELINE/members")
    ap.add_argument("--indices", default="0,2")
    ap.add_argument("--t0", type=int, default=300)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    p = Pipeline(a.pipeline)
    x, captions = load_set(a.members or os.path.join(a.pipeline, "members"), p.resolution)
    out = {"t0": a.t0, "steps": a.steps, "seed": a.seed, "resolution": p.resolution, "members": {}}
    for i in [int(v) for v in a.indices.split(",")]:
        grey = reconstruct(p, x[i], captions[i], a.t0, a.steps, a.seed)
        out["members"][str(i)] = {"caption": captions[i], "grey": [round(float(v), 7) for v in grey.flatten()]}
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
