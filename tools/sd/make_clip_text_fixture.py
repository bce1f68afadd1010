#!/usr/bin/env python3
"""Parity fixture for the text encoder of Stable Diffusion pipelines (issue 13, point 2).

Builds two tiny random transformers `CLIPTextModel`s with diffusers' own test configs
(tests/pipelines/stable_diffusion/test_stable_diffusion.py and stable_diffusion_2/
test_stable_diffusion.py, `get_dummy_components`):

  clip_text_sd1/   CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32,
                   intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
                   num_hidden_layers=5, pad_token_id=1, vocab_size=1000)   -> quick_gelu (CLIP-L)
  clip_text_sd2/   the same with hidden_act="gelu", projection_dim=512     -> exact erf GELU (OpenCLIP-H)

and writes each as a `text_encoder/` folder: `config.json`, `model.safetensors` and the fp16
variant `model.fp16.safetensors`. The two weight layouts found in the wild are both covered:

  sd1: the transformers 4.x layout of every SD 1.x / 2.x folder on the hub: tensor names under
       `text_model.` plus the int64 `text_model.embeddings.position_ids` buffer that
       transformers < 4.31 saved (CompVis/stable-diffusion-v1-4 has it);
  sd2: exactly what transformers 5's `save_pretrained` writes (no prefix, no buffer).

The script checks that transformers loads every written file back to the same weights.

Reference outputs (`reference.safetensors` beside each folder's files, float32), per case
`<case>.ids` (int64 [2, 77]) and
  <case>.last_hidden_state    [2, 77, D]  after final_layer_norm
  <case>.penultimate          [2, 77, D]  hidden_states[-2] (input of the last layer, raw)
  <case>.clip_skip1           [2, 77, D]  final_layer_norm(hidden_states[-2]): what diffusers'
                                          encode_prompt(clip_skip=1) feeds the UNet
  <case>.embeddings           [2, 77, D]  hidden_states[0] (token + position embedding)
  <case>.pooled               [2, D]      pooler_output
(the subset named in KEEP) for the cases
  random      bos, 75 random ids in [10, 1000), eos (=2) last
  eos_mid     eos in the middle, then padding: row 0 pads with eos (SD 1 style), row 1 with
              pad id 1 (no attention mask, as the SD pipelines call it)
  masked      the eos_mid ids with an attention mask (1 up to and including eos, 0 after)
  eos9        the model run with eos_token_id = 9 (transformers' newer pooling: first position
              of eos_token_id, not argmax of ids): row 0 has 9 in the middle then 9 as padding,
              row 1 has no 9 at all (transformers then picks position 0)
  f16.<case>  for random and eos_mid: the fp16 weights loaded into the model, run in float32

Run: python tools/sd/make_clip_text_fixture.py   (torch, transformers 5.x, safetensors)
Deterministic: the seed fixes the weights and ids.
"""

import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "tests", "data", "sd")
L = 77
# What each case stores (the fixture stays a few hundred KB): every output once, then what the
# case is about.
KEEP = {
    "random": ["ids", "last_hidden_state", "penultimate", "clip_skip1", "embeddings", "pooled"],
    "eos_mid": ["ids", "last_hidden_state", "penultimate", "clip_skip1", "pooled"],
    "masked": ["ids", "last_hidden_state", "penultimate", "pooled"],
    "eos9": ["ids", "last_hidden_state", "pooled"],
    "f16": ["ids", "last_hidden_state", "pooled"],
}


def dummy_config(sd2):
    kw = dict(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=1,
        vocab_size=1000,
    )
    if sd2:
        kw.update(hidden_act="gelu", projection_dim=512)
    return CLIPTextConfig(**kw)


def make_ids(gen):
    rnd = lambda n: torch.randint(10, 1000, (n,), generator=gen)
    random = torch.stack([torch.cat([torch.tensor([0]), rnd(75), torch.tensor([2])]) for _ in range(2)])
    eos_mid = torch.stack(
        [
            torch.cat([torch.tensor([0]), rnd(10), torch.full((L - 11,), 2)]),
            torch.cat([torch.tensor([0]), rnd(30), torch.tensor([2]), torch.full((L - 32,), 1)]),
        ]
    )
    mask = torch.zeros(2, L, dtype=torch.long)
    mask[0, :12] = 1
    mask[1, :32] = 1
    r0 = rnd(20)
    r1 = rnd(40)
    assert not (r0 == 9).any() and not (r1 == 9).any()  # ids are >= 10
    eos9 = torch.stack(
        [
            torch.cat([torch.tensor([0]), r0, torch.full((L - 21,), 9)]),
            torch.cat([torch.tensor([0]), r1, torch.tensor([2]), torch.full((L - 42,), 1)]),
        ]
    )
    return {"random": (random, None), "eos_mid": (eos_mid, None), "masked": (eos_mid, mask), "eos9": (eos9, None)}


@torch.no_grad()
def run(model, ids, mask):
    o = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hs = o.hidden_states
    assert len(hs) == model.config.num_hidden_layers + 1
    return {
        "ids": ids.to(torch.int64).clone(),
        "last_hidden_state": o.last_hidden_state.float().contiguous(),
        "penultimate": hs[-2].float().contiguous(),
        "clip_skip1": model.final_layer_norm(hs[-2]).float().contiguous(),
        "embeddings": hs[0].float().contiguous(),
        "pooled": o.pooler_output.float().contiguous(),
    }


def write_folder(model, folder, legacy_layout):
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    model.save_pretrained(folder)
    weights = os.path.join(folder, "model.safetensors")
    state = load_file(weights)
    if legacy_layout:
        state = {f"text_model.{k}": v for k, v in state.items()}
        state["text_model.embeddings.position_ids"] = torch.arange(L, dtype=torch.int64).unsqueeze(0)
        save_file(state, weights, metadata={"format": "pt"})
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    save_file(half, os.path.join(folder, "model.fp16.safetensors"), metadata={"format": "pt"})
    # The folder must load back in transformers to exactly these weights (both layouts).
    back = CLIPTextModel.from_pretrained(folder).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    back16 = CLIPTextModel.from_pretrained(folder, variant="fp16", dtype=torch.float16)
    for k, v in model.state_dict().items():
        assert torch.equal(back16.state_dict()[k], v.half()), k
    return back16.float().eval()


def main():
    for name, sd2, seed in [("sd1", False, 1301), ("sd2", True, 1302)]:
        torch.manual_seed(seed)
        config = dummy_config(sd2)
        config._attn_implementation = "eager"
        model = CLIPTextModel(config).eval()
        folder = os.path.join(OUT, f"clip_text_{name}")
        f16_model = write_folder(model, folder, legacy_layout=not sd2)
        f16_model.config._attn_implementation = "eager"

        gen = torch.Generator().manual_seed(seed)
        cases = make_ids(gen)
        ref = {}
        for case, (ids, mask) in cases.items():
            if case == "eos9":
                model.eos_token_id = 9
            out = run(model, ids, mask)
            model.eos_token_id = config.eos_token_id
            if mask is not None:
                ref[f"{case}.mask"] = mask.to(torch.int64).clone()
            for k in KEEP[case]:
                ref[f"{case}.{k}"] = out[k]
        # The SDPA kernel (transformers' default) gives the same numbers within float rounding.
        sdpa = CLIPTextModel.from_pretrained(folder, attn_implementation="sdpa").eval()
        for case, (ids, mask) in cases.items():
            if case != "eos9":
                d = (run(sdpa, ids, mask)["last_hidden_state"] - ref[f"{case}.last_hidden_state"]).abs().max()
                assert d < 1e-5, (case, d)
        for case in ["random", "eos_mid"]:
            ids, mask = cases[case]
            out = run(f16_model, ids, mask)
            for k in KEEP["f16"]:
                ref[f"f16.{case}.{k}"] = out[k]
        # Sanity: the pooling rules pick what they should.
        assert torch.equal(ref["masked.ids"], ref["eos_mid.ids"])
        assert torch.equal(ref["eos9.pooled"][1], ref["eos9.last_hidden_state"][1, 0])
        assert torch.equal(ref["eos9.pooled"][0], ref["eos9.last_hidden_state"][0, 21])
        am = ref["eos_mid.ids"].argmax(-1)
        assert torch.equal(ref["eos_mid.pooled"], ref["eos_mid.last_hidden_state"][torch.arange(2), am])
        save_file(ref, os.path.join(folder, "reference.safetensors"), metadata={"made_by": "tools/sd/make_clip_text_fixture.py"})
        d16 = (ref["f16.random.last_hidden_state"] - ref["random.last_hidden_state"]).abs().max().item()
        print(f"{name}: {folder} written; f16 vs f32 weights max |diff| of last_hidden_state {d16:.3e}")
        with open(os.path.join(folder, "config.json")) as f:
            print(json.load(f)["hidden_act"])


if __name__ == "__main__":
    main()
