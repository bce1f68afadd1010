#!/usr/bin/env python3
"""PyTorch reference for the loss and trajectory attacks' deterministic parts, on the demo target.

    OMP_NUM_THREADS=1 python3 tools/diffusion/make_attack_ref.py

The attacks draw their noise from the Rust generator, so their scores cannot be compared with
PyTorch's sample by sample. What is compared instead, for a given noise tensor saved here:
  * loss: per-sample MSE(ε, ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)) at t = 50, 100, 200 (the loss attack's
    score is minus its mean over t and draws);
  * trajectory (Cilloni et al. 2023, as in src/audit/attacks/trajectory.rs): noise x₀ to t₀ = 100,
    run 4 deterministic DDIM steps back down (t = 100, 75, 50, 25, then ᾱ = 1), take the model's
    x̂₀ = (x_t − √(1−ᾱ_t) ε_θ)/√ᾱ_t at each step, and the features per sample: for each step MSE,
    L1 and SSIM of x̂₀ against x₀, then the least-squares slope of each over the steps
    (layout [mse₁, l1₁, ssim₁, …, mse₄, l1₄, ssim₄, slope_mse, slope_l1, slope_ssim]).
SSIM: Wang et al. 2004, 7×7 Gaussian window (σ = 1.5, normalised), K₁ = 0.01, K₂ = 0.03, data
range 2, mean over the valid positions (no padding), computed here as a 2-D convolution.

The UNet is tools/diffusion/ref_unet_functional.py (torch.nn.functional only, checked against
diffusers); ᾱ is diffusers' float32 cumprod of the linear betas; the DDIM arithmetic is float64.
Inputs: the first 3 members and first 3 non-members of assets/demo_ddpm (u8 / 127.5 − 1).

Writes tests/data/diffusion/attack_ref.safetensors: `x0` [6,1,32,32], `noise` [6,1,32,32],
`loss_mse` [3,6] (rows t = 50, 100, 200), `trajectory_features` [6,15] (all f32; the features
are computed in f64 and stored as f32 values of f64 results).
"""

import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "diffusion"))
sys.path.insert(0, os.path.join(ROOT, "tools", "vit"))
from common import save_safetensors  # noqa: E402
from ref_unet_functional import FunctionalUNet  # noqa: E402

torch.set_num_threads(1)
DEMO = os.path.join(ROOT, "assets", "demo_ddpm")
LOSS_T = [50, 100, 200]
T0, STEPS = 100, 4


def alphas_cumprod():
    cfg = json.load(open(os.path.join(DEMO, "scheduler_config.json")))
    assert cfg["beta_schedule"] == "linear"
    betas = torch.linspace(cfg["beta_start"], cfg["beta_end"], cfg["num_train_timesteps"], dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0).double()


def ssim(a, b, win=7, sigma=1.5, data_range=2.0):
    """Per-sample SSIM of [N,1,H,W] float64 tensors."""
    x = torch.arange(win, dtype=torch.float64) - win // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :])[None, None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = F.conv2d(a, k), F.conv2d(b, k)
    vx = F.conv2d(a * a, k) - mx**2
    vy = F.conv2d(b * b, k) - my**2
    cxy = F.conv2d(a * b, k) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def slope(series):
    """Least-squares slope over 0, 1, 2, … of each row of [N, S]."""
    s = series.shape[1]
    t = torch.arange(s, dtype=torch.float64)
    t = t - t.mean()
    return ((series - series.mean(dim=1, keepdim=True)) * t).sum(dim=1) / (t**2).sum()


def main():
    unet = FunctionalUNet(DEMO)
    acp = alphas_cumprod()
    images = [np.load(os.path.join(DEMO, f))["images"][:3] for f in ("members.npz", "nonmembers.npz")]
    x0 = torch.from_numpy(np.concatenate(images).astype(np.float32) / 127.5 - 1.0)[:, None]
    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2024))

    def eps_at(x, t):
        with torch.no_grad():
            return unet(x.float(), torch.full((n,), t)).double()

    x0d, nd = x0.double(), noise.double()
    loss = []
    for t in LOSS_T:
        a = acp[t]
        eps = eps_at(a.sqrt() * x0d + (1 - a).sqrt() * nd, t)
        loss.append(((eps - nd) ** 2).mean(dim=(1, 2, 3)))
    loss = torch.stack(loss)

    ts = [round(T0 * (STEPS - k) / STEPS) for k in range(STEPS)]
    x = acp[T0].sqrt() * x0d + (1 - acp[T0]).sqrt() * nd
    mse, l1, ss = [], [], []
    for k, t in enumerate(ts):
        a = acp[t]
        eps = eps_at(x, t)
        x0_hat = (x - (1 - a).sqrt() * eps) / a.sqrt()
        mse.append(((x0_hat.float().double() - x0d) ** 2).mean(dim=(1, 2, 3)))
        l1.append((x0_hat.float().double() - x0d).abs().mean(dim=(1, 2, 3)))
        ss.append(ssim(x0_hat.float().double(), x0d))
        a_next = acp[ts[k + 1]] if k + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        x = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps
    per_step = torch.stack([torch.stack(mse, 1), torch.stack(l1, 1), torch.stack(ss, 1)], 2).reshape(n, -1)
    slopes = torch.stack([slope(torch.stack(m, 1)) for m in (mse, l1, ss)], 1)
    features = torch.cat([per_step, slopes], 1)
    print("timesteps", ts)
    print("loss_mse\n", loss.numpy().round(5))
    print("features (member 0)\n", features[0].numpy().round(5))
    print("features (non-member 0)\n", features[3].numpy().round(5))

    out = os.path.join(ROOT, "tests", "data", "diffusion", "attack_ref.safetensors")
    meta = {
        "generator": "tools/diffusion/make_attack_ref.py",
        "x0": "first 3 members then first 3 non-members of assets/demo_ddpm, u8/127.5-1",
        "noise": "torch.randn, torch.Generator().manual_seed(2024)",
        "loss_mse": f"per-sample MSE(eps, eps_theta(x_t, t)), rows t = {LOSS_T}",
        "trajectory_features": f"t0 = {T0}, {STEPS} DDIM steps {ts}: per step MSE, L1, SSIM of x0_hat vs x0, then slopes",
        "torch": torch.__version__,
    }
    tensors = {
        "x0": x0.numpy(),
        "noise": noise.numpy(),
        "loss_mse": loss.float().numpy(),
        "trajectory_features": features.float().numpy(),
    }
    sha = save_safetensors(tensors, out, metadata=meta)
    print(f"wrote {out} ({os.path.getsize(out)} bytes) sha256 {sha}")


if __name__ == "__main__":
    main()
