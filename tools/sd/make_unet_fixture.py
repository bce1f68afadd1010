#!/usr/bin/env python3
"""Parity fixtures for the candle UNet2DConditionModel (src/diffusion/sd/unet_cond.rs).

Writes into tests/data/sd/ (deterministic, CPU, float32):

  unet_sd1/config.json + diffusion_pytorch_model.safetensors
      diffusers' own SD 1 test dummy (tests/pipelines/stable_diffusion/test_stable_diffusion.py,
      get_dummy_components): block_out_channels (4, 8), layers_per_block 1, DownBlock2D +
      CrossAttnDownBlock2D, CrossAttnUpBlock2D + UpBlock2D, cross_attention_dim 32,
      norm_num_groups 2, attention_head_dim 8 (the default: 8 HEADS per block, the diffusers
      naming quirk), 1x1-conv proj_in / proj_out.
  unet_sd2/config.json + diffusion_pytorch_model.safetensors
      the SD 2 test's changes (attention_head_dim (2, 4) per block, use_linear_projection,
      layers_per_block 2) plus, to pin down more of the config: upcast_attention true (as SD 2.1
      768), the real pipelines' block order (CrossAttnDownBlock2D first, CrossAttnUpBlock2D last,
      so the per-block head counts are read in both directions), transformer_layers_per_block
      [2, 1] (a per-block list: 2 transformer blocks in down block 0 and up block 1, 1 in the
      mid block), block_out_channels (8, 16), norm_num_groups 4.
  unet_sd1_ref.safetensors, unet_sd2_ref.safetensors
      x [2,4,32,32], t [2] int64 (10, 981: a different timestep per sample), enc77 [2,77,32],
      enc5 [2,5,32] (a short text sequence), t_frac [2] f32 (2.5, 700.25: fractional timesteps);
      eps_77 = unet(x, t, enc77), eps_5 = unet(x, t, enc5), eps_frac = unet(x, t_frac, enc77),
      and intermediates of the eps_77 forward to debug with: dbg_t_emb (time_embedding output),
      dbg_conv_in, dbg_down_k (hidden output of down block k), dbg_mid, dbg_up_k.

Every parameter is redrawn to something non-trivial (biases ~ N(0, 0.1^2), norm scales
~ 1 + N(0, 0.2^2), weights 1.5x their default init) so that a weight read into the wrong place
changes the output.

Usage:  OMP_NUM_THREADS=1 python tools/sd/make_unet_fixture.py [--out tests/data/sd]
"""
import argparse
import os

import torch

torch.set_num_threads(1)

import diffusers  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SD1 = dict(
    block_out_channels=(4, 8),
    layers_per_block=1,
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    norm_num_groups=2,
)
SD2 = dict(
    block_out_channels=(8, 16),
    layers_per_block=2,
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    norm_num_groups=4,
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    upcast_attention=True,
    transformer_layers_per_block=[2, 1],
)


def redraw(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            parent = name.split(".")[-2] if "." in name else ""
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in parent:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.mul_(1.5)


def make(name, cfg, seed, out):
    torch.manual_seed(seed)
    m = UNet2DConditionModel(**cfg)
    redraw(m, seed + 1)
    folder = os.path.join(out, f"unet_{name}")
    m.save_pretrained(folder, safe_serialization=True)
    # the Rust side reads what is on disk: compute the reference with the reloaded model
    m = UNet2DConditionModel.from_pretrained(folder).eval()
    m.set_attn_processor(diffusers.models.attention_processor.AttnProcessor())  # plain math, f32

    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(2, 4, 32, 32, generator=g)
    enc77 = torch.randn(2, 77, 32, generator=g)
    enc5 = torch.randn(2, 5, 32, generator=g)
    t = torch.tensor([10, 981], dtype=torch.int64)
    t_frac = torch.tensor([2.5, 700.25], dtype=torch.float32)

    dbg = {}
    hooks = [
        m.time_embedding.register_forward_hook(lambda mod, i, o: dbg.__setitem__("dbg_t_emb", o)),
        m.conv_in.register_forward_hook(lambda mod, i, o: dbg.__setitem__("dbg_conv_in", o)),
        m.mid_block.register_forward_hook(lambda mod, i, o: dbg.__setitem__("dbg_mid", o)),
    ]
    for k, blk in enumerate(m.down_blocks):
        hooks.append(blk.register_forward_hook(lambda mod, i, o, k=k: dbg.__setitem__(f"dbg_down_{k}", o[0])))
    for k, blk in enumerate(m.up_blocks):
        hooks.append(blk.register_forward_hook(lambda mod, i, o, k=k: dbg.__setitem__(f"dbg_up_{k}", o)))
    with torch.no_grad():
        eps_77 = m(x, t, encoder_hidden_states=enc77).sample
        for h in hooks:
            h.remove()
        eps_5 = m(x, t, encoder_hidden_states=enc5).sample
        eps_frac = m(x, t_frac, encoder_hidden_states=enc77).sample
        one_by_one = torch.cat([m(x[i:i + 1], t[i:i + 1], encoder_hidden_states=enc77[i:i + 1]).sample
                                for i in range(2)])
    print(name, "params", sum(p.numel() for p in m.parameters()))
    print(name, "batch vs one-by-one max |diff|:", (eps_77 - one_by_one).abs().max().item())
    print(name, "eps std per sample:", eps_77.flatten(1).std(1).tolist())
    print(name, "77 vs 5 tokens max |diff|:", (eps_77 - eps_5).abs().max().item())
    tensors = dict(x=x, t=t, t_frac=t_frac, enc77=enc77, enc5=enc5, eps_77=eps_77, eps_5=eps_5,
                   eps_frac=eps_frac)
    tensors.update(dbg)
    meta = {
        "model": f"tests/data/sd/unet_{name} (UNet2DConditionModel.from_pretrained, AttnProcessor)",
        "eps_77": "unet(x, t, encoder_hidden_states=enc77).sample",
        "eps_5": "unet(x, t, encoder_hidden_states=enc5).sample",
        "eps_frac": "unet(x, t_frac, encoder_hidden_states=enc77).sample",
        "dbg": "eps_77 intermediates: time_embedding, conv_in, down_blocks[k] hidden output, mid_block, up_blocks[k]",
        "torch": torch.__version__, "diffusers": diffusers.__version__,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, f"unet_{name}_ref.safetensors"),
              metadata=meta)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "sd"))
    a = ap.parse_args()
    make("sd1", SD1, 0, a.out)
    make("sd2", SD2, 10, a.out)


if __name__ == "__main__":
    main()
