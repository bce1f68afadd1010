#!/usr/bin/env python3
"""Attention-rollout reference for the explanation heatmap of the diagnosis engine.

    pip install torch safetensors numpy
    OMP_NUM_THREADS=1 python3 tools/vit/make_rollout_ref.py

Independent of the Rust code: the DINOv2 forward pass is `verify_backbone.forward` (written out
in torch from the float16 weights of assets/backbone/dinov2_vits14.safetensors, computed here in
float64), on the `input` tensor of tests/data/vit/dinov2_ref.safetensors (a real PBC image,
[1, 3, 224, 224]). Each block's attention probabilities are averaged over the heads (A_l).

Rollout (Abnar & Zuidema 2020, with the residual path as ½·I):
    R = (½·A_12 + ½·I) · … · (½·A_1 + ½·I),   map = R[CLS, patches]
reshaped to the 16×16 patch grid (row-major: patch (r, c) is token 1 + 16·r + c), divided by
its maximum. The heatmap is that grid upsampled to the 224×224 image with torch
`F.interpolate(mode="bilinear", align_corners=False)` (half-pixel centres, edges clamped).

Writes tests/data/vit/rollout_ref.safetensors: `grid` [16, 16] f32, `heatmap` [224, 224] f32.
The grid is not symmetric and not centred, so a transposed, flipped or shifted heatmap
differs from it by far more than float error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BACKBONE_DIR, BACKBONE_ST, FIXTURES, package_version, save_safetensors, single_thread  # noqa: E402

single_thread()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from verify_backbone import forward, resize_pos_embed  # noqa: E402

torch.set_num_threads(1)


def main():
    cfg = json.loads((BACKBONE_DIR / "config.json").read_text())
    w16 = load_file(str(BACKBONE_ST))
    ref = load_file(str(FIXTURES / "dinov2_ref.safetensors"))
    x = ref["input"]
    size = x.shape[-1]
    g = size // cfg["patch_size"]
    pos = resize_pos_embed(w16["pos_embed"].astype(np.float32), g)

    w = {k: torch.from_numpy(v.astype(np.float64)) for k, v in w16.items()}
    attentions: list = []
    with torch.no_grad():
        tokens = forward(w, torch.from_numpy(x).double(), torch.from_numpy(pos), cfg, attentions)
    # The same forward pass must reproduce the ONNX Runtime tokens of the fixture.
    err = np.abs(tokens.numpy() - ref["tokens"]).max() / np.abs(ref["tokens"]).max()
    assert err < 1e-4, f"forward differs from the ONNX Runtime tokens: {err:.3g}"
    assert len(attentions) == cfg["depth"]
    t = attentions[0].shape[-1]
    eye = torch.eye(t, dtype=torch.float64)
    rollout = eye.clone()
    for a in attentions:
        rollout = (0.5 * a[0] + 0.5 * eye) @ rollout
    cls_to_patches = rollout[0, 1:]
    grid = (cls_to_patches / cls_to_patches.max()).reshape(g, g)
    heatmap = F.interpolate(grid[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]

    grid_np = grid.numpy().astype(np.float32)
    print(f"grid {grid_np.shape}: min {grid_np.min():.4f}, argmax {np.unravel_index(grid_np.argmax(), grid_np.shape)}")
    print(f"  max |grid - grid.T| {np.abs(grid_np - grid_np.T).max():.4f}")
    out = FIXTURES / "rollout_ref.safetensors"
    meta = {
        "input": "tests/data/vit/dinov2_ref.safetensors `input` [1,3,224,224]",
        "grid": "CLS row of prod_l (A_l/2 + I/2) over blocks 12..1 (A_l head-averaged attention), patches "
        "row-major 16x16, divided by its max; float64 torch forward from the f16 backbone weights",
        "heatmap": "grid upsampled to 224x224, torch F.interpolate bilinear, align_corners=False",
        "weights": "assets/backbone/dinov2_vits14.safetensors",
        "generator": "tools/vit/make_rollout_ref.py",
        "versions": f"torch {package_version('torch')}, numpy {package_version('numpy')}",
    }
    tensors = {"grid": grid_np, "heatmap": heatmap.numpy().astype(np.float32)}
    sha = save_safetensors(tensors, out, metadata=meta)
    print(f"wrote {out} ({out.stat().st_size} bytes) sha256 {sha}")


if __name__ == "__main__":
    main()
