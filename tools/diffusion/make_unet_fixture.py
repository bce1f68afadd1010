#!/usr/bin/env python3
"""Parity fixtures for the candle UNet2DModel and the DDPM/DDIM schedulers.

Writes into tests/data/diffusion/ (all deterministic, CPU, float32):

  tiny_unet/config.json + diffusion_pytorch_model.safetensors
      a small random diffusers.UNet2DModel with the diffusers *defaults* for the
      time embedding (positional, flip_sin_to_cos=True, freq_shift=0), resnet_time_scale_shift
      "default", downsample_padding 1, attention_head_dim 8 (heads = channels / 8), a mid block
      with attention; ResNets, attention, conv down/upsampling.
  tiny_unet_variant/config.json + diffusion_pytorch_model.safetensors
      the same blocks with the *legacy google/ddpm-* options*: flip_sin_to_cos=False,
      freq_shift=1, downsample_padding=0 (asymmetric pad), attention_head_dim=null (one head of
      all channels), norm_eps=1e-6, resnet_time_scale_shift="scale_shift" (which also drops
      the GroupNorm of the mid-block attention, since attn_norm_num_groups is null).
  unet_ref.safetensors
      x [3,1,16,16], t [3] (int64, one timestep per sample: 1, 250, 999), t_f32, eps [3,1,16,16]
      for tiny_unet; variant_eps for tiny_unet_variant (same x, t); and intermediates of the
      tiny_unet forward to debug with: dbg_t_proj [3,16] (sinusoid), dbg_t_emb [3,64],
      dbg_conv_in, dbg_down_0, dbg_down_1, dbg_mid, dbg_up_0, dbg_up_1 (block outputs).
  schedulers/{ddpm,ddim}_{linear,squaredcos}/scheduler_config.json
  scheduler_ref.safetensors (metadata key "cases" documents every tensor)

Usage:  OMP_NUM_THREADS=1 python tools/diffusion/make_unet_fixture.py [--out tests/data/diffusion]
"""
import argparse
import json
import os

import numpy as np
import torch

torch.set_num_threads(1)

import diffusers  # noqa: E402
import diffusers.schedulers.scheduling_ddpm as ddpm_mod  # noqa: E402
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = dict(
    sample_size=16,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=8,
)
VARIANT = dict(
    TINY,
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    attention_head_dim=None,
    norm_eps=1e-6,
    resnet_time_scale_shift="scale_shift",
)


def redraw(model, seed):
    """Non-trivial parameters: every bias ~ N(0, 0.1^2), every norm scale ~ 1 + N(0, 0.2^2),
    weights keep the default (kaiming-uniform) init scaled up 1.5x so nothing is near zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = ("norm" in name.split(".")[-2]) if "." in name else False
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif is_norm:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.mul_(1.5)


def build(cfg, seed):
    torch.manual_seed(seed)
    m = UNet2DModel(**cfg)
    redraw(m, seed + 1)
    m.eval()
    return m


def unet_fixtures(out):
    tiny = build(TINY, 0)
    var = build(VARIANT, 0)
    tiny.save_pretrained(os.path.join(out, "tiny_unet"), safe_serialization=True)
    var.save_pretrained(os.path.join(out, "tiny_unet_variant"), safe_serialization=True)
    # reload from disk (what the Rust side reads) and check it is the same model
    tiny2 = UNet2DModel.from_pretrained(os.path.join(out, "tiny_unet")).eval()
    var2 = UNet2DModel.from_pretrained(os.path.join(out, "tiny_unet_variant")).eval()

    g = torch.Generator().manual_seed(1234)
    x = torch.randn(3, 1, 16, 16, generator=g)
    t = torch.tensor([1, 250, 999], dtype=torch.int64)

    dbg = {}
    hooks = [
        tiny2.time_proj.register_forward_hook(lambda m, i, o: dbg.__setitem__("dbg_t_proj", o)),
        tiny2.time_embedding.register_forward_hook(lambda m, i, o: dbg.__setitem__("dbg_t_emb", o)),
        tiny2.conv_in.register_forward_hook(lambda m, i, o: dbg.__setitem__("dbg_conv_in", o)),
        tiny2.mid_block.register_forward_hook(lambda m, i, o: dbg.__setitem__("dbg_mid", o)),
    ]
    for k, blk in enumerate(tiny2.down_blocks):
        hooks.append(blk.register_forward_hook(lambda m, i, o, k=k: dbg.__setitem__(f"dbg_down_{k}", o[0])))
    for k, blk in enumerate(tiny2.up_blocks):
        hooks.append(blk.register_forward_hook(lambda m, i, o, k=k: dbg.__setitem__(f"dbg_up_{k}", o)))
    with torch.no_grad():
        eps = tiny2(x, t).sample
        eps_mem = tiny(x, t).sample
        veps = var2(x, t).sample
        # one timestep per sample must equal running the samples one by one
        eps_single = torch.cat([tiny2(x[i:i + 1], t[i:i + 1]).sample for i in range(3)])
        # float timesteps give the same answer as the integer ones
        eps_f = tiny2(x, t.float()).sample
    for h in hooks:
        h.remove()
    assert torch.equal(eps, eps_mem)
    print("batch vs one-by-one max |diff|:", (eps - eps_single).abs().max().item())
    print("int vs float t max |diff|:", (eps - eps_f).abs().max().item())
    print("eps std per sample:", eps.flatten(1).std(1).tolist(), "variant:", veps.flatten(1).std(1).tolist())
    print("variant vs tiny max |diff|:", (eps - veps).abs().max().item())
    tensors = dict(x=x, t=t, t_f32=t.float(), eps=eps, variant_eps=veps)
    tensors.update({k: v.contiguous() for k, v in dbg.items()})
    meta = {
        "tiny_unet": "tests/data/diffusion/tiny_unet (eps = UNet2DModel(x, t).sample)",
        "tiny_unet_variant": "tests/data/diffusion/tiny_unet_variant (variant_eps, same x, t)",
        "dbg": "tiny_unet intermediates: time_proj, time_embedding, conv_in, down_blocks[k] hidden output, "
               "mid_block, up_blocks[k]",
        "torch": torch.__version__, "diffusers": diffusers.__version__,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "unet_ref.safetensors"),
              metadata=meta)
    return {k: tuple(v.shape) for k, v in tensors.items()}, sum(p.numel() for p in tiny.parameters()), \
        sum(p.numel() for p in var.parameters())


def scheduler_fixtures(out):
    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, prediction_type="epsilon")
    scheds = {}
    for bs, bname in (("linear", "linear"), ("squaredcos_cap_v2", "squaredcos")):
        scheds[f"ddpm_{bname}"] = DDPMScheduler(**common, beta_schedule=bs, variance_type="fixed_small",
                                                clip_sample=True, clip_sample_range=1.0)
        scheds[f"ddim_{bname}"] = DDIMScheduler(**common, beta_schedule=bs, clip_sample=False,
                                                set_alpha_to_one=True, steps_offset=0)
    for name, s in scheds.items():
        s.save_pretrained(os.path.join(out, "schedulers", name))

    g = torch.Generator().manual_seed(99)
    x_t = torch.randn(2, 1, 8, 8, generator=g)
    eps = torch.randn(2, 1, 8, 8, generator=g)
    T = {"x_t": x_t, "eps": eps}
    cases = {
        "x_t, eps": "inputs [2,1,8,8] for every step below",
        "{bname}_betas, {bname}_alphas_cumprod": "[1000] f32 from DDPMScheduler (bname: linear | squaredcos)",
    }
    # zero noise in the DDPM step: its prev_sample is then the posterior mean
    ddpm_mod.randn_tensor = lambda shape, generator=None, device=None, dtype=None, **kw: torch.zeros(shape, dtype=dtype)
    for bname in ("linear", "squaredcos"):
        dd = DDPMScheduler.from_pretrained(os.path.join(out, "schedulers", f"ddpm_{bname}"))
        di = DDIMScheduler.from_pretrained(os.path.join(out, "schedulers", f"ddim_{bname}"))
        assert torch.equal(dd.alphas_cumprod, di.alphas_cumprod)
        T[f"{bname}_betas"] = dd.betas.float()
        T[f"{bname}_alphas_cumprod"] = dd.alphas_cumprod.float()

        # ---- DDPM, full 1000-step chain: t=500 -> 499; t=0 -> final (x0 prediction)
        dd.num_inference_steps = None
        dd.custom_timesteps = False
        for t in (500, 0):
            o = dd.step(eps, t, x_t)
            T[f"ddpm_{bname}_t{t}_prev_mean"] = o.prev_sample
            T[f"ddpm_{bname}_t{t}_pred_x0"] = o.pred_original_sample
            T[f"ddpm_{bname}_t{t}_variance"] = dd._get_variance(t).reshape(1).float()
        # ---- DDPM strided, set_timesteps(50): t=500 -> 480
        dd.set_timesteps(50)
        T["ddpm_timesteps_50"] = dd.timesteps.clone()
        o = dd.step(eps, 500, x_t)
        T[f"ddpm_{bname}_s50_t500_prev_mean"] = o.prev_sample
        T[f"ddpm_{bname}_s50_t500_pred_x0"] = o.pred_original_sample
        T[f"ddpm_{bname}_s50_t500_variance"] = dd._get_variance(500).reshape(1).float()

        # ---- DDIM eta=0, set_timesteps(50) (leading spacing, ratio 20): t=500 -> 480; t=0 -> -20 (alpha=1)
        di.set_timesteps(50)
        T["ddim_timesteps_50"] = di.timesteps.clone()
        for t in (500, 0):
            o = di.step(eps, t, x_t, eta=0.0)
            T[f"ddim_{bname}_s50_t{t}_prev"] = o.prev_sample
            T[f"ddim_{bname}_s50_t{t}_pred_x0"] = o.pred_original_sample
        # ---- DDIM eta=0, set_timesteps(10): t=900 -> 800
        di.set_timesteps(10)
        T["ddim_timesteps_10"] = di.timesteps.clone()
        o = di.step(eps, 900, x_t, eta=0.0)
        T[f"ddim_{bname}_s10_t900_prev"] = o.prev_sample
        # ---- generic deterministic DDIM move t -> t_to (t_to > t is one inversion step, as in SecMI),
        # by the formula x0 = (x - sqrt(1-a_t) eps)/sqrt(a_t); x' = sqrt(a_to) x0 + sqrt(1-a_to) eps, no clip
        acp = dd.alphas_cumprod.double()
        for (t0, t1) in ((100, 120), (480, 500)):
            a0, a1 = acp[t0], acp[t1]
            x0 = (x_t.double() - (1 - a0).sqrt() * eps.double()) / a0.sqrt()
            T[f"ddim_{bname}_move_{t0}_to_{t1}"] = (a1.sqrt() * x0 + (1 - a1).sqrt() * eps.double()).float()
        # consistency: the downward formula equals diffusers' DDIM step (500 -> 480)
        a0, a1 = acp[500], acp[480]
        x0 = (x_t.double() - (1 - a0).sqrt() * eps.double()) / a0.sqrt()
        ref = (a1.sqrt() * x0 + (1 - a1).sqrt() * eps.double()).float()
        print(f"DDIM formula vs diffusers ({bname}) max |diff|:",
              (ref - T[f"ddim_{bname}_s50_t500_prev"]).abs().max().item())
    cases.update({
        "ddpm_{b}_t500_*": "DDPMScheduler (config schedulers/ddpm_{b}; clip_sample=True, fixed_small) .step(eps, 500, x_t) "
                           "without set_timesteps (prev t = 499) and zero noise: prev_mean = posterior mean of the clipped "
                           "pred_x0; variance = _get_variance(500)",
        "ddpm_{b}_t0_*": "same at t=0 (prev alpha_cumprod = 1, no noise at t=0)",
        "ddpm_{b}_s50_t500_*": "after set_timesteps(50) (leading): t=500 -> prev t=480, beta_t = 1 - acp[500]/acp[480]",
        "ddim_{b}_s50_t500_*": "DDIMScheduler (config schedulers/ddim_{b}; clip_sample=False, set_alpha_to_one=True) "
                               "set_timesteps(50), .step(eps, 500, x_t, eta=0): prev t = 480",
        "ddim_{b}_s50_t0_*": "same at t=0: prev t = -20 < 0 -> final_alpha_cumprod = 1 (prev = pred_x0)",
        "ddim_{b}_s10_t900_prev": "set_timesteps(10): t=900 -> 800",
        "ddim_{b}_move_{t}_to_{t2}": "deterministic DDIM move by formula in f64 (t2 > t: inversion step), no clipping",
        "ddpm_timesteps_50, ddim_timesteps_50, ddim_timesteps_10": "int64 timesteps after set_timesteps (leading spacing)",
    })
    save_file({k: v.contiguous() for k, v in T.items()}, os.path.join(out, "scheduler_ref.safetensors"),
              metadata={"cases": json.dumps(cases), "torch": torch.__version__, "diffusers": diffusers.__version__})
    return {k: tuple(v.shape) for k, v in T.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "diffusion"))
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    shapes, n_tiny, n_var = unet_fixtures(args.out)
    print("tiny_unet params:", n_tiny, "variant params:", n_var)
    print("unet_ref:", shapes)
    print("scheduler_ref:", scheduler_fixtures(args.out))
    for dp, _, fs in os.walk(args.out):  # save_pretrained / save_file create 0600 files
        for f in fs:
            os.chmod(os.path.join(dp, f), 0o644)


if __name__ == "__main__":
    main()
