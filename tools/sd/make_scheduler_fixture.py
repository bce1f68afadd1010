#!/usr/bin/env python3
"""Scheduler fixture for Stable Diffusion pipelines (issue 13, point 1: scheduler/ configs).

Writes scheduler_config.json files as Stable Diffusion pipelines ship them and what diffusers
computes from each, for tests/sd_scheduler.rs:

  tests/data/sd/schedulers/<name>/scheduler_config.json
  tests/data/sd/scheduler_ref.safetensors
      <name>.alphas_cumprod            f32 [T]
      <name>.timesteps_<n>             scheduler.timesteps after set_timesteps(n) (i64; f32 for Euler)
      <name>.sigmas_<n>                Euler only: scheduler.sigmas (f32, n + 1)
      x, output, noise                 f32 [1, 4, 8, 8]: a latent, a model output, a noise draw
      <name>.ddim.t<t>.prev / .x0      DDIMScheduler.from_config(config).step(output, t, x), eta 0
      <name>.inv.t<t>.prev / .x0       DDIMInverseScheduler.from_config(config).step(output, t, x)
      <name>.ddpm.t<t>.prev / .x0      DDPMScheduler step with the saved noise as its variance draw
      <name>.loop_10                   PNDM / Euler: the latents of a whole 10-step sampling loop
                                       (x · init_noise_sigma, then after each step) with
                                       `stand_in_model` in place of the UNet, [11, 1, 4, 8, 8]

The SD 1.5 and SD 2.1 configs are the public files of runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-2-1 (scheduler/scheduler_config.json), reproduced by value: keys they
leave out take the class default in diffusers, which the Rust reader must reproduce too. The rest
exercise the other options (trailing / linspace spacing with numpy's round-half-even, sample and
v prediction, clipping, set_alpha_to_one, cosine and trained betas, PNDM with Runge–Kutta steps,
Euler's fractional timesteps).

Needs: torch, diffusers, safetensors. Run: python tools/sd/make_scheduler_fixture.py
"""

import json
import os

import numpy as np
import torch
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "tests", "data", "sd")

SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SD21 = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

CONFIGS = {
    "sd15_pndm": SD15,
    "sd21_ddim_v": SD21,
    # The SD 1.5 schedule under DDIM, as `DDIMScheduler.from_config(pipe.scheduler.config)` makes it.
    "sd15_ddim": dict(SD15, _class_name="DDIMScheduler"),
    # DDIM defaults (set_alpha_to_one true, clip_sample true) with x0 prediction, trailing spacing.
    "ddim_sample_trailing": {
        "_class_name": "DDIMScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": "sample",
        "timestep_spacing": "trailing",
    },
    "ddpm_cosine_v_linspace": {
        "_class_name": "DDPMScheduler",
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
        "timestep_spacing": "linspace",
        "clip_sample": False,
    },
    "ddpm_trained_betas": {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": 50,
        "trained_betas": [float(b) for b in np.linspace(0.001, 0.2, 50)],
        "clip_sample": True,
        "clip_sample_range": 2.0,
    },
    # SD 1.5's PNDM run on a v-prediction model (PNDM converts v to ε in its transfer).
    "pndm_v": dict(SD15, prediction_type="v_prediction"),
    "pndm_prk_linear": {
        "_class_name": "PNDMScheduler",
        "beta_schedule": "linear",
        "timestep_spacing": "trailing",
    },
    # No timestep_spacing: Euler's default is linspace (fractional timesteps).
    "euler_sd": {
        "_class_name": "EulerDiscreteScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "steps_offset": 1,
        "prediction_type": "epsilon",
    },
    "euler_leading_v": {
        "_class_name": "EulerDiscreteScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "prediction_type": "v_prediction",
    },
}

CLASSES = {
    "DDPMScheduler": DDPMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "PNDMScheduler": PNDMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
}
# 7 and 16 put exact halves into linspace (999/6) and trailing (1000/16) spacing.
STEP_COUNTS = [1, 7, 10, 16, 25, 50]
DDIM_STEPS = 10
# Full sampling loops with a stand-in model, for the stateful samplers.
LOOPS = ["sd15_pndm", "pndm_v", "euler_sd", "euler_leading_v"]


def stand_in_model(model_input, t):
    """A deterministic function of the input and the timestep in place of a UNet."""
    return 0.3 * model_input + 0.05 * (float(t) / 1000.0)


def main():
    torch.manual_seed(0)
    shape = (1, 4, 8, 8)
    x = torch.randn(shape)
    output = torch.randn(shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    ref = {"x": x, "output": output, "noise": noise}

    for name, config in CONFIGS.items():
        folder = os.path.join(OUT, "schedulers", name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "scheduler_config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        cls = CLASSES[config["_class_name"]]
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        sched = cls.from_config(kwargs)
        ref[f"{name}.alphas_cumprod"] = sched.alphas_cumprod.clone().float()
        total = sched.config.num_train_timesteps
        for n in STEP_COUNTS:
            if n > total or (cls is PNDMScheduler and not sched.config.skip_prk_steps and n < 4):
                continue
            sched.set_timesteps(n)
            ts = sched.timesteps.clone()
            ref[f"{name}.timesteps_{n}"] = ts.float() if cls is EulerDiscreteScheduler else ts.long()
            if cls is EulerDiscreteScheduler:
                ref[f"{name}.sigmas_{n}"] = sched.sigmas.clone().float()

        if config["_class_name"] == "DDIMScheduler":
            ddim = DDIMScheduler.from_config(kwargs)
            ddim.set_timesteps(DDIM_STEPS)
            for t in [int(ddim.timesteps[0]), int(ddim.timesteps[5]), int(ddim.timesteps[-1])]:
                out = ddim.step(output, t, x, eta=0.0)
                ref[f"{name}.ddim.t{t}.prev"] = out.prev_sample
                ref[f"{name}.ddim.t{t}.x0"] = out.pred_original_sample
            inv = DDIMInverseScheduler.from_config(kwargs)
            inv.set_timesteps(DDIM_STEPS)
            for t in [int(inv.timesteps[0]), int(inv.timesteps[5]), int(inv.timesteps[-1])]:
                out = inv.step(output, t, x)
                ref[f"{name}.inv.t{t}.prev"] = out.prev_sample
                ref[f"{name}.inv.t{t}.x0"] = out.pred_original_sample
        if config["_class_name"] == "DDPMScheduler":
            ddpm = DDPMScheduler.from_config(kwargs)
            ddpm.set_timesteps(DDIM_STEPS)
            for t in [int(ddpm.timesteps[0]), int(ddpm.timesteps[5]), int(ddpm.timesteps[-1])]:
                # The step's variance draw is torch.randn(shape, generator) — the saved noise.
                out = ddpm.step(output, t, x, generator=torch.Generator().manual_seed(7))
                ref[f"{name}.ddpm.t{t}.prev"] = out.prev_sample
                ref[f"{name}.ddpm.t{t}.x0"] = out.pred_original_sample

        if name in LOOPS:
            sched = cls.from_config(kwargs)
            sched.set_timesteps(DDIM_STEPS)
            latents = x * sched.init_noise_sigma
            seq = [latents]
            for t in sched.timesteps:
                out = stand_in_model(sched.scale_model_input(latents, t), t)
                latents = sched.step(out, t, latents).prev_sample
                seq.append(latents)
            ref[f"{name}.loop_{DDIM_STEPS}"] = torch.stack(seq)

    ref = {k: v.contiguous() for k, v in ref.items()}
    save_file(ref, os.path.join(OUT, "scheduler_ref.safetensors"))
    print(f"wrote {len(ref)} tensors to tests/data/sd/scheduler_ref.safetensors")


if __name__ == "__main__":
    main()
