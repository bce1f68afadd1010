#!/usr/bin/env python3
"""Train the MeLo Workstation latent-diffusion audit demo: a small text-to-image Stable Diffusion
pipeline (diffusers `StableDiffusionPipeline` folder layout) fine-tuned on captioned real blood-cell
microscopy images, so that the privacy tab has a latent, caption-conditioned target whose
training members are known.

What it does (deterministic for the seeds):
  1. split: from the PBC `train/` split (8 cell types x 400 images) draw, per class, M member
     images and M distribution-matched non-member images (disjoint, same class counts); every
     remaining train image is the VAE's "pre-training" pool (members and non-members excluded,
     so the non-members were seen by no component);
  2. pre-process each image the way diffusers' train_text_to_image.py does: resize the shorter
     side to --resolution with PIL bilinear, centre crop; captions from the cell type
     ("a peripheral blood smear showing a neutrophil"); write members/ and nonmembers/ as PNG
     + metadata.jsonl ({"file_name", "text", "source"} per line, the Hugging Face imagefolder
     convention);
  3. the VAE (AutoencoderKL, 3 blocks: 64 px -> 16 x 16 x 4 latents) is trained on the pool
     (MSE reconstruction + 1e-6 KL); its scaling_factor is 1 / std of the pool's latents (how
     SD's 0.18215 was chosen);
  4. the text encoder is a small CLIPTextModel (CLIP's real 49,408-token BPE vocabulary, 2
     layers, width 32) with seeded random weights, frozen, as SD fine-tunes freeze theirs;
  5. the UNet (UNet2DConditionModel, cross-attention on the text states) is trained on the
     members only, epsilon prediction, SD's scheduler (1000 steps, scaled_linear betas
     0.00085..0.012), 10 % of captions dropped to "" so the model also learns the
     unconditional prediction (as classifier-free-guidance fine-tunes do), no augmentation;
     EMA of the UNet weights (decay 0.999) is what ships;
  6. checkpoints every --ckpt-every steps into --workdir (atomic) and resumes from there; the
     final pipeline is written with save_pretrained into a temporary folder and renamed into
     --out.

Usage (one CPU thread; re-running resumes):
  OMP_NUM_THREADS=1 nohup python tools/sd/train_demo_sd.py --vae-steps 600 --unet-steps 6000 \
      > /tmp/demo_sd_run/train.log 2>&1 &
  python tools/sd/train_demo_sd.py --export-only      # write --out from the last checkpoint
"""
import argparse
import gzip
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PBC = os.path.join(os.path.dirname(ROOT), "shared", "data", "pbc", "train")
VOCAB = os.path.join(ROOT, "tests", "data", "sd", "clip_vocab")

CELL_NAMES = {
    "basophil": "basophil",
    "eosinophil": "eosinophil",
    "erythroblast": "erythroblast",
    "ig": "immature granulocyte",
    "lymphocyte": "lymphocyte",
    "monocyte": "monocyte",
    "neutrophil": "neutrophil",
    "platelet": "platelet",
}


def caption(cls):
    name = CELL_NAMES[cls]
    article = "an" if name[0] in "aeiou" else "a"
    return f"a peripheral blood smear showing {article} {name}"


def vae_config(res):
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[32, 64, 64],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=res,
    )


def unet_config(res):
    return dict(
        sample_size=res // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=[32, 64, 64],
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )


TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    projection_dim=32,
)
SCHED = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
)


def log(msg):
    print(time.strftime("%H:%M:%S ") + msg, flush=True)


def preprocess(path, res):
    """diffusers train_text_to_image.py: Resize(res, bilinear) on the shorter side, CenterCrop(res)."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = res / min(w, h)
    nw, nh = max(res, round(w * s)), max(res, round(h * s))
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - res) / 2.0)), int(round((nh - res) / 2.0))
    return im.crop((left, top, left + res, top + res))


def make_split(per_class, seed):
    rng = np.random.default_rng(seed)
    members, nonmembers, pool = [], [], []
    for cls in sorted(CELL_NAMES):
        files = sorted(os.listdir(os.path.join(PBC, cls)))
        order = rng.permutation(len(files))
        picked = [os.path.join(cls, files[i]) for i in order]
        members += [(p, cls) for p in picked[:per_class]]
        nonmembers += [(p, cls) for p in picked[per_class:2 * per_class]]
        pool += [(p, cls) for p in picked[2 * per_class:]]
    return members, nonmembers, pool


def write_set(folder, items, res):
    os.makedirs(folder, exist_ok=True)
    lines = []
    for i, (rel, cls) in enumerate(items):
        name = f"{i:04d}_{cls}.png"
        preprocess(os.path.join(PBC, rel), res).save(os.path.join(folder, name), optimize=True)
        lines.append(json.dumps({"file_name": name, "text": caption(cls), "source": "pbc/train/" + rel}))
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")


def load_set(folder):
    imgs, texts = [], []
    with open(os.path.join(folder, "metadata.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            a = np.asarray(Image.open(os.path.join(folder, row["file_name"])).convert("RGB"), dtype=np.float32)
            imgs.append(a / 127.5 - 1.0)
            texts.append(row["text"])
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(), texts


def tokenizer_files(dst):
    os.makedirs(dst, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        with gzip.open(os.path.join(VOCAB, name + ".gz"), "rb") as src, open(os.path.join(dst, name), "wb") as out:
            shutil.copyfileobj(src, out)
    tok = CLIPTokenizer(os.path.join(dst, "vocab.json"), os.path.join(dst, "merges.txt"),
                        pad_token="<|endoftext|>", model_max_length=77)
    tok.save_pretrained(dst)
    return CLIPTokenizer.from_pretrained(dst)


def save_ckpt(path, obj):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_vae(args, pool_x):
    path = os.path.join(args.workdir, "vae.pt")
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**vae_config(args.resolution))
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step = 0
    if os.path.exists(path):
        ck = torch.load(path)
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        log(f"vae: resumed at step {step}")
    g = torch.Generator().manual_seed(args.seed + step)
    t0 = time.time()
    while step < args.vae_steps:
        idx = torch.randint(0, len(pool_x), (args.vae_batch,), generator=g)
        x = pool_x[idx]
        if torch.rand((), generator=g) < 0.5:  # the VAE is a generic pre-trained part: flips are fine here
            x = x.flip(3)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            log(f"vae step {step}/{args.vae_steps} loss {loss.item():.5f} ({(time.time() - t0) / 50:.2f} s/step)")
            t0 = time.time()
        if step % args.ckpt_every == 0 or step == args.vae_steps:
            save_ckpt(path, dict(model=vae.state_dict(), opt=opt.state_dict(), step=step))
    vae.eval()
    return vae


@torch.no_grad()
def encode_all(vae, x, bs=64):
    means, stds = [], []
    for i in range(0, len(x), bs):
        post = vae.encode(x[i:i + bs]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "assets", "demo_sd"))
    ap.add_argument("--workdir", default="/tmp/demo_sd_run")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=25, help="members (and non-members) per cell type")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-lr", type=float, default=5e-4)
    ap.add_argument("--unet-steps", type=int, default=6000)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--unet-lr", type=float, default=3e-4)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    stage = os.path.join(args.workdir, "stage")

    # 1-2. split and pre-processed sets (written once, into the staging folder)
    members, nonmembers, pool = make_split(args.per_class, args.seed)
    assert not ({p for p, _ in members} & {p for p, _ in nonmembers})
    if not os.path.exists(os.path.join(stage, "nonmembers", "metadata.jsonl")):
        write_set(os.path.join(stage, "members"), members, args.resolution)
        write_set(os.path.join(stage, "nonmembers"), nonmembers, args.resolution)
    mem_x, mem_text = load_set(os.path.join(stage, "members"))
    log(f"members {len(members)}, non-members {len(nonmembers)}, VAE pool {len(pool)}")

    # 3. VAE on the pool
    pool_path = os.path.join(args.workdir, "pool.pt")
    if not os.path.exists(pool_path):
        pool_x = torch.stack([torch.from_numpy(np.asarray(preprocess(os.path.join(PBC, p), args.resolution),
                                                          dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
                              for p, _ in pool])
        save_ckpt(pool_path, pool_x)
    pool_x = torch.load(pool_path)
    t_start = time.time()
    vae = train_vae(args, pool_x)
    pm, _ = encode_all(vae, pool_x[:1024])
    scaling = float(1.0 / pm.std())
    vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad():
        rec = vae.decode(pm[:256]).sample
        vae_rmse = float(((rec - pool_x[:256]) ** 2).mean().sqrt()) * 127.5
    log(f"vae: scaling_factor {scaling:.5f}, pool reconstruction RMSE {vae_rmse:.2f} grey levels")

    # 4. tokenizer + frozen text encoder
    tok = tokenizer_files(os.path.join(stage, "tokenizer"))
    torch.manual_seed(args.seed + 7)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).eval()
    with torch.no_grad():
        def embed(texts):
            ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            return text_encoder(ids)[0]
        mem_cond = embed(mem_text)
        uncond = embed([""])[0]

    # 5. UNet on the members' latents
    mem_mean, mem_std = encode_all(vae, mem_x)
    sched = DDPMScheduler(**SCHED)
    torch.manual_seed(args.seed + 1)
    unet = UNet2DConditionModel(**unet_config(args.resolution))
    ema = UNet2DConditionModel(**unet_config(args.resolution))
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=1e-2)
    upath = os.path.join(args.workdir, "unet.pt")
    step, seconds, last_loss = 0, 0.0, float("nan")
    if os.path.exists(upath):
        ck = torch.load(upath)
        unet.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        step, seconds, last_loss = ck["step"], ck["seconds"], ck.get("loss", float("nan"))
        log(f"unet: resumed at step {step}")
    n_params = sum(p.numel() for p in unet.parameters())
    log(f"unet: {n_params} parameters")
    g = torch.Generator().manual_seed(args.seed + 1000 + step)
    t0 = time.time()
    running = []
    while step < args.unet_steps and not args.export_only:
        idx = torch.randint(0, len(mem_x), (args.unet_batch,), generator=g)
        lat = (mem_mean[idx] + mem_std[idx] * torch.randn(mem_mean[idx].shape, generator=g)) * scaling
        cond = mem_cond[idx].clone()
        drop = torch.rand(args.unet_batch, generator=g) < args.caption_dropout
        cond[drop] = uncond
        noise = torch.randn(lat.shape, generator=g)
        t = torch.randint(0, SCHED["num_train_timesteps"], (args.unet_batch,), generator=g)
        noisy = sched.add_noise(lat, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pu in zip(ema.parameters(), unet.parameters()):
                pe.mul_(0.999).add_(pu, alpha=0.001)
        step += 1
        running.append(loss.item())
        if step % 100 == 0:
            dt = time.time() - t0
            seconds += dt
            last_loss = float(np.mean(running))
            log(f"unet step {step}/{args.unet_steps} loss {last_loss:.5f} ({dt / 100:.2f} s/step)")
            running, t0 = [], time.time()
        if step % args.ckpt_every == 0 or step == args.unet_steps:
            save_ckpt(upath, dict(model=unet.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(),
                                  step=step, seconds=seconds, loss=last_loss))

    # 6. export the pipeline
    from diffusers import StableDiffusionPipeline

    scheduler = PNDMScheduler(**SCHED, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=ema.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # transformers 5 writes only tokenizer.json; SD folders (and the workstation) carry the
    # slow tokenizer's vocab.json + merges.txt
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(stage, "tokenizer", name), os.path.join(tmp, "tokenizer", name))
    for name in ("members", "nonmembers"):
        shutil.copytree(os.path.join(stage, name), os.path.join(tmp, name))
    info = dict(
        unet_steps=step, unet_batch=args.unet_batch, epochs=round(step * args.unet_batch / len(mem_x), 1),
        unet_lr=args.unet_lr, caption_dropout=args.caption_dropout, ema_decay=0.999,
        unet_train_seconds=round(seconds), final_loss=last_loss, unet_parameters=n_params,
        vae_steps=args.vae_steps, vae_batch=args.vae_batch, vae_pool=len(pool), vae_scaling_factor=scaling,
        vae_pool_rmse_grey_levels=vae_rmse, members=len(members), nonmembers=len(nonmembers),
        per_class=args.per_class, resolution=args.resolution, seed=args.seed,
        torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__,
        threads=torch.get_num_threads(), wall_seconds_this_run=round(time.time() - t_start),
    )
    with open(os.path.join(tmp, "training_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    if os.path.exists(args.out):
        shutil.rmtree(args.out + ".old", ignore_errors=True)
        os.replace(args.out, args.out + ".old")
    os.replace(tmp, args.out)
    shutil.rmtree(args.out + ".old", ignore_errors=True)
    log(f"wrote {args.out}: {json.dumps(info)}")


if __name__ == "__main__":
    sys.exit(main())
