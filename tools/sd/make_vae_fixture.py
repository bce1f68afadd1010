"""Parity fixtures for the Rust AutoencoderKL (src/diffusion/sd/vae.rs) against diffusers.

Writes, per variant, a diffusers `vae/` sub-folder exactly as `save_pretrained` writes it
(config.json + diffusion_pytorch_model.safetensors) under tests/data/sd/vae_<variant>/, and beside
it `reference.safetensors` with the inputs and diffusers' outputs (CPU, float32):

  x          [2, 3, 32, 32] images in [-1, 1]       x_wide      [1, 3, 32, 48] (non-square)
  mean, logvar, noise, sample  (posterior of x;  sample = mean + exp(0.5 logvar) * noise,
                                the noise drawn here and saved)
  wide_mean, wide_logvar, wide_noise, wide_sample   (the same for x_wide)
  z          latents to decode [2, C, h, w]          decoded     vae.decode(z).sample
  wide_z     [1, C, h, 1.5 h]                         wide_decoded
  latents    mean * scaling_factor (what a training script feeds the UNet)
  latents_decoded  vae.decode(latents / scaling_factor).sample (what the pipeline does)
  x_odd      [1, 3, 33, 22] (sizes not multiples of the downsampling), odd_mean, odd_logvar

Variants:
  sd1      diffusers' StableDiffusionPipeline test dummy VAE (block_out_channels [4, 8],
           norm_num_groups 2, layers_per_block 1, default scaling_factor 0.18215).
  sd2      3 down/up blocks, layers_per_block 2, norm_num_groups 4, sample_size 64,
           scaling_factor 0.13025, and quant_conv biases pushed so that one logvar channel
           clamps at +20 and one at -30 (diffusers clamps logvar to [-30, 20]).
  plain    use_quant_conv / use_post_quant_conv false and no mid-block attention.

All parameters are random (GroupNorm weights and biases too, so that a swapped or ignored affine
shows up). Run from the repository root:  python tools/sd/make_vae_fixture.py
"""
import json
import os

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "sd")

VARIANTS = {
    "sd1": dict(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    ),
    "sd2": dict(
        block_out_channels=[8, 8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.13025,
    ),
    "plain": dict(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    ),
}


def randomize(vae, gen):
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)


def make(variant, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vae = AutoencoderKL(**VARIANTS[variant]).eval()
    randomize(vae, gen)
    lc = vae.config.latent_channels
    if variant == "sd2":
        with torch.no_grad():
            vae.quant_conv.bias[lc + 0] += 40.0
            vae.quant_conv.bias[lc + 1] -= 60.0
    folder = os.path.join(OUT, f"vae_{variant}")
    vae.save_pretrained(folder, safe_serialization=True)

    f = 2 ** (len(vae.config.block_out_channels) - 1)
    ref = {}
    ref["x"] = torch.rand((2, 3, 32, 32), generator=gen) * 2 - 1
    ref["x_wide"] = torch.rand((1, 3, 32, 48), generator=gen) * 2 - 1
    ref["z"] = torch.randn((2, lc, 32 // f, 32 // f), generator=gen)
    ref["wide_z"] = torch.randn((1, lc, 32 // f, 48 // f), generator=gen)
    with torch.no_grad():
        for prefix, x in (("", ref["x"]), ("wide_", ref["x_wide"])):
            post = vae.encode(x).latent_dist
            noise = torch.randn(post.mean.shape, generator=gen)
            ref[prefix + "mean"] = post.mean
            ref[prefix + "logvar"] = post.logvar
            ref[prefix + "noise"] = noise
            ref[prefix + "sample"] = post.mean + post.std * noise
        ref["decoded"] = vae.decode(ref["z"]).sample
        ref["wide_decoded"] = vae.decode(ref["wide_z"]).sample
        sf = vae.config.scaling_factor
        ref["latents"] = ref["mean"] * sf
        ref["latents_decoded"] = vae.decode(ref["latents"] / sf).sample
        # Sizes that are not multiples of the downsampling factor: diffusers pads right/bottom
        # before each stride-2 conv, so any size encodes (drawn last: the other values stay put).
        ref["x_odd"] = torch.rand((1, 3, 33, 22), generator=gen) * 2 - 1
        odd = vae.encode(ref["x_odd"]).latent_dist
        ref["odd_mean"], ref["odd_logvar"] = odd.mean, odd.logvar
    ref = {k: v.contiguous().float() for k, v in ref.items()}
    save_file(ref, os.path.join(folder, "reference.safetensors"))
    lv = ref["logvar"]
    print(
        variant,
        sum(p.numel() for p in vae.parameters()),
        "params; logvar range",
        float(lv.min()),
        float(lv.max()),
        "decoded range",
        float(ref["decoded"].min()),
        float(ref["decoded"].max()),
    )


if __name__ == "__main__":
    for i, v in enumerate(VARIANTS):
        make(v, 1300 + i)
