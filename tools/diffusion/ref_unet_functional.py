#!/usr/bin/env python3
"""A from-scratch functional UNet2DModel (torch.nn.functional only, no diffusers) that reads a
diffusers folder (config.json + diffusion_pytorch_model.safetensors): an executable spec of what
the candle port must do, checked against the diffusers outputs in tests/data/diffusion/unet_ref.safetensors.

Supports what the fixtures and the demo use: time_embedding_type "positional", DownBlock2D /
AttnDownBlock2D / UpBlock2D / AttnUpBlock2D, UNetMidBlock2D (with or without attention),
resnet_time_scale_shift "default" | "scale_shift", downsample_type / upsample_type "conv",
downsample_padding 0 | 1, no class embedding.

Usage: python tools/diffusion/ref_unet_functional.py   (prints max |diff| per fixture; exits 1 if > 1e-4)
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FunctionalUNet:
    def __init__(self, folder):
        self.cfg = json.load(open(os.path.join(folder, "config.json")))
        self.w = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
        c = self.cfg
        for k, v in (("time_embedding_type", "positional"), ("downsample_type", "conv"), ("upsample_type", "conv"),
                     ("class_embed_type", None), ("num_class_embeds", None), ("center_input_sample", False)):
            if c.get(k, v) != v:
                raise ValueError(f"unsupported {k}={c.get(k)}")
        self.eps = c.get("norm_eps", 1e-5)
        self.groups = c.get("norm_num_groups", 32)
        self.shift = c.get("resnet_time_scale_shift", "default")

    # ---------------------------------------------------------------- primitives
    def lin(self, x, p):
        return F.linear(x, self.w[p + ".weight"], self.w.get(p + ".bias"))

    def conv(self, x, p, stride=1, padding=1):
        return F.conv2d(x, self.w[p + ".weight"], self.w.get(p + ".bias"), stride=stride, padding=padding)

    def gn(self, x, p, groups):
        return F.group_norm(x, groups, self.w[p + ".weight"], self.w[p + ".bias"], eps=self.eps)

    def t_proj(self, t):
        dim = self.cfg["block_out_channels"][0]
        half = dim // 2
        exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - self.cfg.get("freq_shift", 0))
        emb = t.float()[:, None] * torch.exp(exponent)[None, :]
        emb = torch.cat([emb.sin(), emb.cos()], dim=-1)
        if self.cfg.get("flip_sin_to_cos", True):
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        return emb

    def resnet(self, x, temb, p, out_scale=1.0):
        h = F.silu(self.gn(x, p + ".norm1", self.groups))
        h = self.conv(h, p + ".conv1")
        te = self.lin(F.silu(temb), p + ".time_emb_proj")[:, :, None, None]  # SiLU on temb inside every resnet
        if self.shift == "default":
            h = self.gn(h + te, p + ".norm2", self.groups)
        elif self.shift == "scale_shift":
            scale, shift = te.chunk(2, dim=1)
            h = self.gn(h, p + ".norm2", self.groups) * (1 + scale) + shift
        else:
            raise ValueError(self.shift)
        h = self.conv(F.silu(h), p + ".conv2")
        sc = self.conv(x, p + ".conv_shortcut", padding=0) if (p + ".conv_shortcut.weight") in self.w else x
        return (sc + h) / out_scale

    def attn(self, x, p, channels, rescale=1.0):
        hd = self.cfg.get("attention_head_dim")
        heads = channels // hd if hd is not None else 1
        B, C, H, W = x.shape
        h = x
        if (p + ".group_norm.weight") in self.w:  # absent in the mid block when scale_shift and no attn_norm_num_groups
            h = self.gn(h, p + ".group_norm", self.cfg.get("attn_norm_num_groups") or self.groups)
        h = h.reshape(B, C, H * W).transpose(1, 2)  # [B, HW, C]
        q, k, v = (self.lin(h, f"{p}.{n}").reshape(B, H * W, heads, C // heads).transpose(1, 2)
                   for n in ("to_q", "to_k", "to_v"))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // heads), dim=-1) @ v  # [B, heads, HW, dh]
        a = self.lin(a.transpose(1, 2).reshape(B, H * W, C), p + ".to_out.0")
        return (a.transpose(1, 2).reshape(B, C, H, W) + x) / rescale

    def downsample(self, x, p):
        if self.cfg.get("downsample_padding", 1) == 0:
            return self.conv(F.pad(x, (0, 1, 0, 1)), p + ".conv", stride=2, padding=0)
        return self.conv(x, p + ".conv", stride=2, padding=self.cfg.get("downsample_padding", 1))

    def upsample(self, x, p):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"), p + ".conv")

    # ---------------------------------------------------------------- forward
    def __call__(self, x, t):
        c = self.cfg
        boc, L = c["block_out_channels"], c["layers_per_block"]
        if t.ndim == 0:
            t = t[None]
        t = t.expand(x.shape[0]) if t.shape[0] == 1 else t
        temb = self.lin(F.silu(self.lin(self.t_proj(t), "time_embedding.linear_1")), "time_embedding.linear_2")
        h = self.conv(x, "conv_in")
        skips = [h]
        for i, bt in enumerate(c["down_block_types"]):
            for j in range(L):
                h = self.resnet(h, temb, f"down_blocks.{i}.resnets.{j}")
                if bt == "AttnDownBlock2D":
                    h = self.attn(h, f"down_blocks.{i}.attentions.{j}", boc[i])
                skips.append(h)
            if i < len(boc) - 1:
                h = self.downsample(h, f"down_blocks.{i}.downsamplers.0")
                skips.append(h)
        if c.get("mid_block_type", "UNetMidBlock2D") is not None:
            sf = c.get("mid_block_scale_factor", 1)
            h = self.resnet(h, temb, "mid_block.resnets.0", sf)
            if c.get("add_attention", True):
                h = self.attn(h, "mid_block.attentions.0", boc[-1], sf)
            h = self.resnet(h, temb, "mid_block.resnets.1", sf)
        rev = list(reversed(boc))
        for i, bt in enumerate(c["up_block_types"]):
            for j in range(L + 1):
                h = torch.cat([h, skips.pop()], dim=1)  # current hidden first, then the skip
                h = self.resnet(h, temb, f"up_blocks.{i}.resnets.{j}")
                if bt == "AttnUpBlock2D":
                    h = self.attn(h, f"up_blocks.{i}.attentions.{j}", rev[i])
            if i < len(boc) - 1:
                h = self.upsample(h, f"up_blocks.{i}.upsamplers.0")
        h = F.silu(self.gn(h, "conv_norm_out", self.groups))
        return self.conv(h, "conv_out")


def main():
    d = os.path.join(ROOT, "tests", "data", "diffusion")
    ref = load_file(os.path.join(d, "unet_ref.safetensors"))
    worst = 0.0
    for folder, key in (("tiny_unet", "eps"), ("tiny_unet_variant", "variant_eps")):
        m = FunctionalUNet(os.path.join(d, folder))
        with torch.no_grad():
            out = m(ref["x"], ref["t"])
        diff = (out - ref[key]).abs().max().item()
        worst = max(worst, diff)
        print(f"{folder}: max |functional - diffusers| = {diff:.3e}")
    with torch.no_grad():
        m = FunctionalUNet(os.path.join(d, "tiny_unet"))
        diff = (m.t_proj(ref["t"]) - ref["dbg_t_proj"]).abs().max().item()
        print(f"t_proj: max |diff| = {diff:.3e}")
    demo = os.path.join(ROOT, "assets", "demo_ddpm")
    if os.path.exists(os.path.join(demo, "config.json")):
        from diffusers import UNet2DModel
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4, 1, 32, 32, generator=g)
        t = torch.tensor([0, 10, 200, 999])
        with torch.no_grad():
            a = FunctionalUNet(demo)(x, t)
            b = UNet2DModel.from_pretrained(demo).eval()(x, t).sample
        diff = (a - b).abs().max().item()
        worst = max(worst, diff)
        print(f"demo_ddpm: max |functional - diffusers| = {diff:.3e}")
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
