#!/usr/bin/env python3
"""HF PEFT LoRA fixture on a small random timm ViT.

    pip install torch timm peft safetensors numpy
    OMP_NUM_THREADS=1 python3 tools/vit/make_peft_fixture.py

Writes (tests/data/vit/):
  peft_base.safetensors      base ViT weights, timm key names, float32
  peft_base_config.json      its architecture
  peft_adapter/              adapter_model.safetensors + adapter_config.json (PeftModel.save_pretrained)
  peft_ref.safetensors       `input` [2,3,32,32], `logits_base` [2,3], `logits_adapted` [2,3]

LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"], modules_to_save=["head"]): LoRA on the
whole fused timm `qkv` Linear (q, k AND v rows; scale alpha/r = 2), plus a full copy of `head`.
lora_B is set to random non-zero values and the saved head copy is re-drawn, so both the
LoRA delta and the head replacement change the logits.

Checks before writing: the adapted logits are reproduced (1) by reloading the saved base and
adapter with PeftModel.from_pretrained and (2) by a plain timm forward with
qkv.weight <- W + (alpha/r) * B @ A and head <- the adapter's head.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, package_version, save_safetensors, single_thread  # noqa: E402

single_thread()


import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402
from tiny_vit import ARCH, ARCH_NOTES, MODEL_CLASS, base_state_dict_numpy, build_base, fixed_input  # noqa: E402

torch.set_num_threads(1)
R, ALPHA = 4, 8


def main():
    base = build_base()
    x = fixed_input()
    with torch.no_grad():
        logits_base = base(x).clone()
    base_sd = base_state_dict_numpy(base)
    base_sha = save_safetensors(base_sd, FIXTURES / "peft_base.safetensors")
    cfg = {"model": MODEL_CLASS, "constructor_kwargs": ARCH, **ARCH_NOTES, "generator": "tools/vit/make_peft_fixture.py (tools/vit/tiny_vit.py build_base)"}
    (FIXTURES / "peft_base_config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    torch.manual_seed(0)  # lora_A init (kaiming-uniform) draws from the global RNG
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["qkv"], modules_to_save=["head"])
    peft_model = get_peft_model(base, config)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        head = peft_model.base_model.model.head.modules_to_save["default"]
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) / 8.0)
        head.bias.copy_(0.1 * torch.randn(head.bias.shape, generator=g))
    peft_model.eval()
    with torch.no_grad():
        logits_adapted = peft_model(x).clone()
        with peft_model.disable_adapter():
            assert torch.equal(peft_model(x), logits_base), "disabled adapter must give the base logits"

    out_dir = FIXTURES / "peft_adapter"
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    readme = out_dir / "README.md"  # boilerplate model card, not needed by the fixture
    if readme.exists():
        readme.unlink()
    for f in out_dir.iterdir():
        f.chmod(0o644)
    adapter = load_file(str(out_dir / "adapter_model.safetensors"))
    print("adapter tensors:")
    for k, v in sorted(adapter.items()):
        print(f"  {k} {list(v.shape)} {v.dtype}")

    # Check 1: reload base + adapter from disk with PEFT.
    fresh = VisionTransformer(**ARCH).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(str(FIXTURES / "peft_base.safetensors")).items()})
    reloaded = PeftModel.from_pretrained(fresh, str(out_dir)).eval()
    with torch.no_grad():
        d1 = (reloaded(x) - logits_adapted).abs().max().item()
    print(f"check PeftModel.from_pretrained: max |diff| = {d1:.3g}")
    assert d1 < 1e-5

    # Check 2: explicit merge into a plain timm model from the saved tensors.
    merged = VisionTransformer(**ARCH).eval()
    sd = {k: torch.from_numpy(v.copy()) for k, v in base_sd.items()}
    scale = ALPHA / R
    for i in range(ARCH["depth"]):
        a = torch.from_numpy(adapter[f"base_model.model.blocks.{i}.attn.qkv.lora_A.weight"])  # [r, 64]
        b = torch.from_numpy(adapter[f"base_model.model.blocks.{i}.attn.qkv.lora_B.weight"])  # [192, r]
        sd[f"blocks.{i}.attn.qkv.weight"] = sd[f"blocks.{i}.attn.qkv.weight"] + scale * (b @ a)
    sd["head.weight"] = torch.from_numpy(adapter["base_model.model.head.weight"])
    sd["head.bias"] = torch.from_numpy(adapter["base_model.model.head.bias"])
    merged.load_state_dict(sd)
    with torch.no_grad():
        d2 = (merged(x) - logits_adapted).abs().max().item()
    print(f"check explicit merge W + (alpha/r) B@A: max |diff| = {d2:.3g}")
    assert d2 < 1e-5

    ref = {
        "input": x.numpy(),
        "logits_base": logits_base.numpy(),
        "logits_adapted": logits_adapted.numpy(),
    }
    meta = {
        "input": "torch.Generator().manual_seed(1), randn [2,3,32,32]",
        "logits_base": "peft_base.safetensors forward (timm VisionTransformer, eval)",
        "logits_adapted": f"base + peft_adapter/ (LoRA r={R} alpha={ALPHA} on fused qkv, head from modules_to_save)",
        "generator": "tools/vit/make_peft_fixture.py",
    }
    ref_sha = save_safetensors(ref, FIXTURES / "peft_ref.safetensors", metadata=meta)
    print("logits_base\n", logits_base.numpy(), "\nlogits_adapted\n", logits_adapted.numpy())
    print(f"peft_base sha256 {base_sha}\npeft_ref sha256 {ref_sha}")
    print(
        f"torch {package_version('torch')}, timm {package_version('timm')}, peft {package_version('peft')}, "
        f"safetensors {package_version('safetensors')}"
    )



if __name__ == "__main__":
    main()
