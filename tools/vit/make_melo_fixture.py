#!/usr/bin/env python3
"""MeLo (LoRA-ViT) adapter-layout fixture on the small random timm ViT.

    pip install torch timm safetensors numpy
    OMP_NUM_THREADS=1 python3 tools/vit/make_melo_fixture.py

Base: the same ViT as tests/data/vit/peft_base.safetensors (tools/vit/tiny_vit.py build_base;
checked equal to that file when it exists).

Adapter layout as saved by MeLo's public code (JamesQFreeman/LoRA-ViT, save_lora_parameters):
  w_a_{k:03d} [r, dim]  (nn.Linear(dim, r).weight)     k = 2i -> q of block i, 2i+1 -> v of block i
  w_b_{k:03d} [dim, r]  (nn.Linear(r, dim).weight)
  fc_{dim}in_{C}out [C, dim]  head weight; MeLo saves no head bias -> the bias is zero here
LoRA on q and v only (k untouched); delta_q = scale * B_q A_q, delta_v = scale * B_v A_v,
scale = alpha / r with r = 4, alpha = 6 (1.5, a float, deliberately not an integer, so an
implementation that copies MeLo's `alpha // r` integer division fails the test). MeLo's files
carry no alpha; this fixture records r/alpha/scale in the safetensors metadata.

Writes tests/data/vit/melo_adapter.safetensors and tests/data/vit/melo_ref.safetensors
(`input` [2,3,32,32], `logits` [2,3] with LoRA + MeLo head, `logits_head_only` [2,3] with the
MeLo head but no LoRA, to tell head bugs from LoRA bugs).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, package_version, save_safetensors, single_thread  # noqa: E402

single_thread()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402
from tiny_vit import ARCH, base_state_dict_numpy, build_base, fixed_input  # noqa: E402

torch.set_num_threads(1)
R, ALPHA = 4, 6
SCALE = ALPHA / R
DIM, DEPTH, C = ARCH["embed_dim"], ARCH["depth"], ARCH["num_classes"]


def make_adapter() -> dict:
    g = torch.Generator().manual_seed(3)
    t = {}
    for k in range(2 * DEPTH):
        bound = 1.0 / DIM**0.5  # kaiming_uniform(a=sqrt(5)) bound for Linear(dim, r)
        t[f"w_a_{k:03d}"] = (torch.rand((R, DIM), generator=g) * 2 - 1) * bound
        t[f"w_b_{k:03d}"] = 0.1 * torch.randn((DIM, R), generator=g)
    t[f"fc_{DIM}in_{C}out"] = torch.randn((C, DIM), generator=g) / 8.0
    return t


def reference_merged(base_sd: dict, adapter: dict, x: torch.Tensor, with_lora: bool = True) -> torch.Tensor:
    """timm forward with qkv.weight <- W + scale * concat(B_q A_q, 0, B_v A_v), head <- fc, bias 0."""
    sd = {k: torch.from_numpy(v.copy()) for k, v in base_sd.items()}
    if with_lora:
        for i in range(DEPTH):
            dq = adapter[f"w_b_{2 * i:03d}"] @ adapter[f"w_a_{2 * i:03d}"]  # [dim, dim]
            dv = adapter[f"w_b_{2 * i + 1:03d}"] @ adapter[f"w_a_{2 * i + 1:03d}"]
            delta = torch.cat([dq, torch.zeros(DIM, DIM), dv], dim=0)  # [3*dim, dim], rows q | k | v
            sd[f"blocks.{i}.attn.qkv.weight"] = sd[f"blocks.{i}.attn.qkv.weight"] + SCALE * delta
    sd["head.weight"] = adapter[f"fc_{DIM}in_{C}out"].clone()
    sd["head.bias"] = torch.zeros(C)
    model = VisionTransformer(**ARCH).eval()
    model.load_state_dict(sd)
    with torch.no_grad():
        return model(x)


class MeloQkv(nn.Module):
    """Unmerged MeLo-style qkv (as LoRA-ViT's _LoRA_qkv_timm, with a float scale)."""

    def __init__(self, qkv: nn.Linear, a_q, b_q, a_v, b_v):
        super().__init__()
        self.qkv, self.a_q, self.b_q, self.a_v, self.b_v = qkv, a_q, b_q, a_v, b_v

    def forward(self, x):
        out = self.qkv(x)  # [..., 3*dim]: q | k | v
        q = (x @ self.a_q.T) @ self.b_q.T
        v = (x @ self.a_v.T) @ self.b_v.T
        zeros = torch.zeros_like(q)
        return out + SCALE * torch.cat([q, zeros, v], dim=-1)


def reference_unmerged(base_sd: dict, adapter: dict, x: torch.Tensor) -> torch.Tensor:
    model = VisionTransformer(**ARCH).eval()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in base_sd.items()})
    for i, blk in enumerate(model.blocks):
        blk.attn.qkv = MeloQkv(
            blk.attn.qkv,
            adapter[f"w_a_{2 * i:03d}"],
            adapter[f"w_b_{2 * i:03d}"],
            adapter[f"w_a_{2 * i + 1:03d}"],
            adapter[f"w_b_{2 * i + 1:03d}"],
        )
    with torch.no_grad():
        model.head.weight.copy_(adapter[f"fc_{DIM}in_{C}out"])
        model.head.bias.zero_()
        return model(x)


def main():
    base = build_base()
    base_sd = base_state_dict_numpy(base)
    saved = FIXTURES / "peft_base.safetensors"
    if saved.exists():
        on_disk = load_file(str(saved))
        assert set(on_disk) == set(base_sd) and all(np.array_equal(on_disk[k], base_sd[k]) for k in base_sd), (
            "peft_base.safetensors differs from build_base(): rerun make_peft_fixture.py"
        )
        print("base == tests/data/vit/peft_base.safetensors")
    x = fixed_input()
    adapter = make_adapter()

    logits = reference_merged(base_sd, adapter, x)
    logits_head_only = reference_merged(base_sd, adapter, x, with_lora=False)
    unmerged = reference_unmerged(base_sd, adapter, x)
    d = (unmerged - logits).abs().max().item()
    print(f"check merged vs unmerged (MeLo-style qkv wrapper): max |diff| = {d:.3g}")
    assert d < 1e-5
    print(f"LoRA effect on logits: max |diff| = {(logits - logits_head_only).abs().max().item():.3g}")

    meta = {
        "format": "melo",
        "r": str(R),
        "alpha": str(ALPHA),
        "scale": repr(SCALE),
        "layout": "w_a_{k:03d} [r,dim], w_b_{k:03d} [dim,r]; k=2i q of block i, k=2i+1 v of block i; "
        "fc_{dim}in_{C}out [C,dim] head weight, no bias",
        "base": "tests/data/vit/peft_base.safetensors",
        "generator": "tools/vit/make_melo_fixture.py",
    }
    a_sha = save_safetensors(
        {k: v.numpy() for k, v in adapter.items()}, FIXTURES / "melo_adapter.safetensors", metadata=meta
    )
    ref_meta = {
        "input": "torch.Generator().manual_seed(1), randn [2,3,32,32] (same as peft_ref input)",
        "logits": f"base + MeLo LoRA on q,v (scale {ALPHA}/{R}={SCALE}) + head fc_{DIM}in_{C}out, head bias 0",
        "logits_head_only": f"base backbone, no LoRA, head fc_{DIM}in_{C}out, head bias 0",
        "generator": "tools/vit/make_melo_fixture.py",
    }
    r_sha = save_safetensors(
        {"input": x.numpy(), "logits": logits.numpy(), "logits_head_only": logits_head_only.numpy()},
        FIXTURES / "melo_ref.safetensors",
        metadata=ref_meta,
    )
    print("logits\n", logits.numpy(), "\nlogits_head_only\n", logits_head_only.numpy())
    print(f"melo_adapter sha256 {a_sha}\nmelo_ref sha256 {r_sha}")
    print(f"torch {package_version('torch')}, timm {package_version('timm')}")


if __name__ == "__main__":
    main()
