"""The small random timm ViT shared by the PEFT and MeLo fixtures (torch + timm)."""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer

MODEL_CLASS = "timm.models.vision_transformer.VisionTransformer"
# Constructor keyword arguments.
ARCH = {
    "img_size": 32,
    "patch_size": 8,
    "in_chans": 3,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 4,
    "mlp_ratio": 4.0,
    "num_classes": 3,
    "class_token": True,
    "global_pool": "token",
    "qkv_bias": True,
}

# Facts about the forward that the constructor arguments above imply (timm 1.0).
ARCH_NOTES = {
    "layerscale": False,
    "layer_norm_eps": 1e-6,
    "act": "gelu_exact",
    "pos_embed_shape": [1, 1 + 4 * 4, 64],
    "pos_embed_includes_cls": True,
    "pos_embed_resize": "none (4x4 grid at 32 px)",
    "qkv_layout": "attn.qkv.weight [192, 64]: rows 0:64 = q, 64:128 = k, 128:192 = v",
    "head_input": "final norm(tokens)[:, 0] (CLS token; no fc_norm, no pre-norm)",
    "keys": "timm state_dict names (cls_token, pos_embed, patch_embed.proj.*, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*, norm.*, head.*)",
}


def build_base() -> VisionTransformer:
    """Deterministic small ViT with every parameter random and O(1)-scaled.

    timm's own init leaves biases at zero and weights tiny (std 0.02); the fixture
    re-draws everything so that biases, LayerNorm affine terms and the positional
    embedding all influence the logits.
    """
    torch.manual_seed(0)
    model = VisionTransformer(**ARCH).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name in ("cls_token", "pos_embed"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    return model


def fixed_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn((2, 3, ARCH["img_size"], ARCH["img_size"]), generator=g)


def base_state_dict_numpy(model: VisionTransformer) -> dict:
    return {k: v.detach().cpu().float().numpy().copy() for k, v in model.state_dict().items()}
