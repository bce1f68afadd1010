#!/usr/bin/env python3
"""A whole tiny Stable Diffusion pipeline folder + captioned member / non-member sets + the
scores diffusers gives for them, for tests/sd_audit.rs (the latent audit end to end).

Writes tests/data/sd/pipeline_tiny/:
  model_index.json, scheduler/ (DDIMScheduler, scaled_linear, **v_prediction**: the conversion to
  ε is on the tested path; the shipped demo covers epsilon), unet/ (UNet2DConditionModel, SD 1
  dummy layout, 16×16 latents), vae/ (AutoencoderKL, 2 blocks: 32 px images), text_encoder/
  (CLIPTextModel, 2 layers, width 32), tokenizer/ (CLIP's real BPE cut to its first 400 merges:
  ids 0–911 are exactly CLIP's, plus <|startoftext|> 912 and <|endoftext|> 913);
  members/, nonmembers/: 4 + 4 real PBC smear crops (PNG, 44×40: not the pipeline's 32 px, so
  the resize + centre crop runs) with metadata.jsonl captions;
  reference.json: per-sample loss, PIA, SecMI and CLiD scores from tools/sd/audit_reference.py
  (diffusers + transformers + numpy) with the parameters stored beside them.

Usage: OMP_NUM_THREADS=1 python tools/sd/make_pipeline_fixture.py
"""
import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

torch.set_num_threads(1)

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "sd", "pipeline_tiny")
VOCAB = os.path.join(ROOT, "tests", "data", "sd", "clip_vocab")
PBC = os.path.join(os.path.dirname(ROOT), "shared", "data", "pbc", "train")
MERGES = 400
PARAMS = ["--loss-t", "50,300", "--loss-draws", "2", "--pia-t", "200", "--pia-p", "4", "--secmi-t", "100",
          "--secmi-interval", "20", "--clid-t", "100,400", "--clid-draws", "1", "--seed", "3", "--batch", "3"]


def tokenizer(dst):
    os.makedirs(dst)
    vocab = json.loads(gzip.open(os.path.join(VOCAB, "vocab.json.gz")).read())
    merges = gzip.open(os.path.join(VOCAB, "merges.txt.gz")).read().decode().split("\n")
    header, merges = merges[0], [m for m in merges[1:] if m][:MERGES]
    keep = {t: i for t, i in vocab.items() if i < 512 + MERGES}
    assert len(keep) == 512 + MERGES
    keep["<|startoftext|>"] = 512 + MERGES
    keep["<|endoftext|>"] = 513 + MERGES
    json.dump(keep, open(os.path.join(dst, "vocab.json"), "w"), ensure_ascii=False)
    open(os.path.join(dst, "merges.txt"), "w").write("\n".join([header] + merges) + "\n")
    tok = lambda s: s  # noqa: E731  (plain strings, as newer hub folders write them)
    json.dump({"add_prefix_space": False, "bos_token": tok("<|startoftext|>"), "eos_token": tok("<|endoftext|>"),
               "pad_token": tok("<|endoftext|>"), "unk_token": tok("<|endoftext|>"), "do_lower_case": True,
               "errors": "replace", "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"},
              open(os.path.join(dst, "tokenizer_config.json"), "w"), indent=1)


def images(dst, start, captions):
    os.makedirs(dst)
    rows = []
    for i, cls in enumerate(["basophil", "eosinophil", "lymphocyte", "neutrophil"]):
        files = sorted(os.listdir(os.path.join(PBC, cls)))
        im = Image.open(os.path.join(PBC, cls, files[start + i])).convert("RGB")
        im = im.crop((90, 90, 270, 254)).resize((44, 40), Image.BILINEAR)
        name = f"{i}_{cls}.png"
        im.save(os.path.join(dst, name))
        rows.append({"file_name": name, "text": captions[i] + f" {cls}"})
    with open(os.path.join(dst, "metadata.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=0.7)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=514 + MERGES, hidden_size=32, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        bos_token_id=512 + MERGES, eos_token_id=513 + MERGES,
                                        pad_token_id=513 + MERGES, hidden_act="quick_gelu"))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    unet.save_pretrained(os.path.join(OUT, "unet"))
    vae.save_pretrained(os.path.join(OUT, "vae"))
    text.save_pretrained(os.path.join(OUT, "text_encoder"))
    sched.save_pretrained(os.path.join(OUT, "scheduler"))
    tokenizer(os.path.join(OUT, "tokenizer"))
    json.dump({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
               "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
               "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"]}, open(os.path.join(OUT, "model_index.json"), "w"), indent=1)
    caps = ["a smear showing a", "Blood film, one", "peripheral blood: a", "a CELL — the"]
    images(os.path.join(OUT, "members"), 0, caps)
    images(os.path.join(OUT, "nonmembers"), 10, caps)
    ref = os.path.join(OUT, "reference.json")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sd", "audit_reference.py"), "--target", OUT,
                    "--members", os.path.join(OUT, "members"), "--nonmembers", os.path.join(OUT, "nonmembers"),
                    "--out", ref] + PARAMS, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    noise = {f"{seed},{stream}": [float(v) for v in
                                  __import__("audit_reference").gaussian_noise((8,), seed, stream)]
             for seed, stream in [(0, 0), (3, 1001), (2 ** 63 + 5, 200_000)]}
    r = json.load(open(ref))
    r["noise"] = noise
    json.dump(r, open(ref, "w"), indent=1)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print("fixture bytes:", total)


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(ROOT, "tools", "sd"))
    main()
