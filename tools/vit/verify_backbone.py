#!/usr/bin/env python3
"""Check assets/backbone/dinov2_vits14.safetensors against the ONNX Runtime reference.

    pip install torch timm safetensors numpy
    OMP_NUM_THREADS=1 python3 tools/vit/verify_backbone.py

Independent of ONNX: the forward pass is written out below from the timm-named
float16 weights (computed in float32, and in float64 for comparison), with the
positional-embedding resize implemented explicitly in numpy (separable bicubic,
Keys a = -0.75, half-pixel centres, edge clamp, no antialias) and checked against
torch `F.interpolate(mode="bicubic", align_corners=False, antialias=False)`.
A second check loads the same weights into timm's VisionTransformer (strict key match).

Compares with tests/data/vit/dinov2_ref.safetensors (`tokens`, `pos_embed_resized`) and
fails unless max|err| / max|ref| < 1e-4.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BACKBONE_DIR, BACKBONE_ST, FIXTURES, error_stats, package_version, single_thread  # noqa: E402

single_thread()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-4


def cubic_weights(t: float, a: float = -0.75) -> np.ndarray:
    """Keys cubic convolution weights for the 4 taps at offsets -1, 0, 1, 2."""

    def k(x):
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return 0.0

    return np.array([k(t + 1), k(t), k(1 - t), k(2 - t)])


def resize_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """[n_out, n_in] matrix of the 1-D bicubic resize (half-pixel, indices clamped)."""
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for o in range(n_out):
        src = (o + 0.5) * scale - 0.5
        i0 = int(np.floor(src))
        w = cubic_weights(src - i0, a)
        for tap, wt in zip(range(i0 - 1, i0 + 3), w):
            m[o, min(max(tap, 0), n_in - 1)] += wt
    return m


def resize_pos_embed(pos: np.ndarray, grid_out: int) -> np.ndarray:
    """pos [1, 1+g*g, D] -> [1, 1+grid_out^2, D]; CLS row unchanged."""
    d = pos.shape[-1]
    g = int(round((pos.shape[1] - 1) ** 0.5))
    grid = pos[0, 1:].reshape(g, g, d).astype(np.float64)
    r = resize_matrix(g, grid_out)
    out = np.einsum("ih,jw,hwd->ijd", r, r, grid).reshape(1, grid_out * grid_out, d)
    return np.concatenate([pos[:, :1].astype(np.float64), out], axis=1)


def forward(w: dict, x: torch.Tensor, pos: torch.Tensor, cfg: dict, attentions: list | None = None) -> torch.Tensor:
    """Plain DINOv2/timm ViT forward; returns final-norm tokens [B, 1+N, D]. When `attentions`
    is a list, each block's head-averaged attention probabilities [B, T, T] are appended to it."""
    d, h, eps = cfg["embed_dim"], cfg["num_heads"], cfg["layer_norm_eps"]
    hd = d // h
    b = x.shape[0]
    p = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=cfg["patch_size"])
    p = p.flatten(2).transpose(1, 2)  # [B, N, D], row-major over the patch grid
    t = torch.cat([w["cls_token"].expand(b, -1, -1), p], dim=1) + pos
    for i in range(cfg["depth"]):
        bk = f"blocks.{i}."
        y = F.layer_norm(t, (d,), w[bk + "norm1.weight"], w[bk + "norm1.bias"], eps)
        qkv = F.linear(y, w[bk + "attn.qkv.weight"], w[bk + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, -1, 3, h, hd).permute(2, 0, 3, 1, 4)  # each [B, H, T, hd]
        att = torch.softmax((q @ k.transpose(-2, -1)) * hd**-0.5, dim=-1)
        if attentions is not None:
            attentions.append(att.mean(dim=1))
        y = (att @ v).transpose(1, 2).reshape(b, -1, d)
        y = F.linear(y, w[bk + "attn.proj.weight"], w[bk + "attn.proj.bias"])
        t = t + w[bk + "ls1.gamma"] * y
        y = F.layer_norm(t, (d,), w[bk + "norm2.weight"], w[bk + "norm2.bias"], eps)
        y = F.gelu(F.linear(y, w[bk + "mlp.fc1.weight"], w[bk + "mlp.fc1.bias"]))  # exact (erf)
        y = F.linear(y, w[bk + "mlp.fc2.weight"], w[bk + "mlp.fc2.bias"])
        t = t + w[bk + "ls2.gamma"] * y
    return F.layer_norm(t, (d,), w["norm.weight"], w["norm.bias"], eps)


def check(name: str, got, ref) -> dict:
    s = error_stats(got, ref)
    ok = s["max_abs_over_max_ref"] < TOL
    print(f"{'PASS' if ok else 'FAIL'} {name}: " + ", ".join(f"{k}={v:.3g}" for k, v in s.items()))
    if not ok:
        raise SystemExit(f"{name}: error above {TOL}")
    return s


def main():
    cfg = json.loads((BACKBONE_DIR / "config.json").read_text())
    w16 = load_file(str(BACKBONE_ST))
    assert all(v.dtype == np.float16 for v in w16.values())
    ref = load_file(str(FIXTURES / "dinov2_ref.safetensors"))
    x = ref["input"]
    grid_out = x.shape[-1] // cfg["patch_size"]

    # 1. Positional-embedding resize: explicit numpy vs torch vs ONNX Runtime.
    pos_np = resize_pos_embed(w16["pos_embed"].astype(np.float32), grid_out)
    g = cfg["pos_embed_grid"]
    grid_t = torch.from_numpy(w16["pos_embed"][:, 1:].astype(np.float32)).reshape(1, g, g, -1).permute(0, 3, 1, 2)
    rs = F.interpolate(grid_t, size=(grid_out, grid_out), mode="bicubic", align_corners=False, antialias=False)
    pos_t = torch.cat(
        [torch.from_numpy(w16["pos_embed"][:, :1].astype(np.float32)), rs.permute(0, 2, 3, 1).reshape(1, -1, rs.shape[1])],
        dim=1,
    )
    check("pos resize numpy vs torch F.interpolate", pos_t.numpy(), pos_np)
    check("pos resize numpy vs ONNX Runtime", pos_np, ref["pos_embed_resized"])

    # 2. Full forward from the safetensors, float32 and float64.
    results = {}
    for dtype in (torch.float32, torch.float64):
        w = {k: torch.from_numpy(v.astype(np.float32)).to(dtype) for k, v in w16.items()}
        with torch.no_grad():
            out = forward(w, torch.from_numpy(x).to(dtype), torch.from_numpy(pos_np).to(dtype), cfg)
        results[str(dtype)] = check(f"tokens, explicit forward ({dtype}) vs ORT", out.numpy(), ref["tokens"])

    # 3. timm's own VisionTransformer with the timm-named weights (strict load).
    import timm
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=x.shape[-1],
        patch_size=cfg["patch_size"],
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=True,
        init_values=1.0,  # LayerScale present; values overwritten by the checkpoint
        num_classes=0,
        global_pool="",
    ).eval()
    sd = {k: torch.from_numpy(v.astype(np.float32)) for k, v in w16.items()}
    sd["pos_embed"] = torch.from_numpy(pos_np.astype(np.float32))
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        out = model.forward_features(torch.from_numpy(x))
    results["timm"] = check(f"tokens, timm {timm.__version__} VisionTransformer vs ORT", out.numpy(), ref["tokens"])

    print(
        f"torch {package_version('torch')}, timm {package_version('timm')}, "
        f"safetensors {package_version('safetensors')}, numpy {package_version('numpy')}"
    )
    print("all checks passed")
    return results


if __name__ == "__main__":
    main()
