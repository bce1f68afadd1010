#!/usr/bin/env python3
"""Train the MeLo Workstation privacy-audit demo target: a small DDPM that memorises a
fixed member set of real PneumoniaMNIST training images.

What it does (all deterministic for a seed):
  1. picks a class-stratified member set and a disjoint, distribution-matched non-member set
     (same size, same class counts) from the *train* split of pneumoniamnist.npz, writes
     members.txt / nonmembers.txt / members.npz / nonmembers.npz into --out;
  2. trains a diffusers UNet2DModel (epsilon prediction, 1000 steps, linear betas
     1e-4..0.02) on the members only, on the CPU, no augmentation, so that it memorises;
  3. checkpoints every --ckpt-every steps into --workdir (atomic), resumes from there;
  4. writes the final EMA weights atomically into --out in flat diffusers layout:
     config.json + diffusion_pytorch_model.safetensors + scheduler_config.json.

Images: 28x28 uint8 zero-padded by 2 px on every side to 32x32 (no resampling), scaled to
[-1, 1] as x = u8 / 127.5 - 1 (the padding is therefore -1).

Example (one CPU thread):
  mkdir -p /tmp/demo_ddpm_run && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nohup python tools/diffusion/train_demo_ddpm.py \
      --steps 8000 > /tmp/demo_ddpm_run/train.log 2>&1 &
Re-running the same command resumes from the last checkpoint. `--export-only` writes the
model from the last checkpoint without training further.
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)

from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "medmnist", "pneumoniamnist.npz")

UNET_CONFIG = dict(
    sample_size=32,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(16, 32, 64, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=8,
)
SCHED_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="epsilon",
    variance_type="fixed_small",
    clip_sample=True,
)


def log(msg, fh=None):
    line = time.strftime("%H:%M:%S ") + msg
    print(line, flush=True)


def pad32(imgs_u8):
    """N x 28 x 28 uint8 -> N x 32 x 32 uint8, zero padding 2 px on each side."""
    return np.pad(imgs_u8, ((0, 0), (2, 2), (2, 2)), mode="constant", constant_values=0)


def make_split(n_members, seed):
    d = np.load(DATA)
    imgs, labels = d["train_images"], d["train_labels"][:, 0].astype(np.int64)
    rng = np.random.default_rng(seed)
    n = len(labels)
    counts = np.bincount(labels, minlength=2)
    frac0 = counts[0] / n
    want = [int(round(n_members * frac0))]
    want.append(n_members - want[0])
    mem, non = [], []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        mem.append(idx[: want[c]])
        non.append(idx[want[c]: 2 * want[c]])
    mem = np.sort(np.concatenate(mem))
    non = np.sort(np.concatenate(non))
    assert len(np.intersect1d(mem, non)) == 0
    return imgs, labels, mem, non


def write_split(out, imgs, labels, mem, non, seed):
    os.makedirs(out, exist_ok=True)
    # exact-duplicate and nearest-neighbour check between the two sets
    a = imgs[mem].reshape(len(mem), -1).astype(np.float32)
    b = imgs[non].reshape(len(non), -1).astype(np.float32)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    min_rmse = float(np.sqrt(max(d2.min(), 0) / a.shape[1]))
    n_exact = int((d2 <= 0.5).sum())
    for name, idx in (("members", mem), ("nonmembers", non)):
        cls = np.bincount(labels[idx], minlength=2)
        hdr = [
            f"# PneumoniaMNIST (MedMNIST v2, CC BY 4.0) pneumoniamnist.npz, split 'train', 0-based indices",
            f"# {name}: {len(idx)} images; class balance: 0 (normal) = {cls[0]}, 1 (pneumonia) = {cls[1]}",
            f"# chosen by tools/diffusion/train_demo_ddpm.py --split-seed {seed} (class-stratified, disjoint)",
        ]
        tmp = os.path.join(out, f".{name}.txt.tmp")
        with open(tmp, "w") as f:
            f.write("\n".join(hdr) + "\n" + "\n".join(str(int(i)) for i in idx) + "\n")
        os.replace(tmp, os.path.join(out, f"{name}.txt"))
        tmp = os.path.join(out, f".{name}.tmp.npz")
        np.savez_compressed(
            tmp,
            images=pad32(imgs[idx]),  # N x 32 x 32 uint8, zero-padded from 28 x 28
            labels=labels[idx].astype(np.uint8),
            indices=idx.astype(np.int64),
        )
        os.replace(tmp, os.path.join(out, f"{name}.npz"))
    return dict(min_rmse_member_nonmember=min_rmse, exact_duplicates=n_exact)


def step_generator(seed, step):
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + step + 1)
    return g


def epoch_perm(seed, epoch, n):
    g = torch.Generator()
    g.manual_seed(seed * 7_919 + 1_000_000_000 + epoch)
    return torch.randperm(n, generator=g)


def save_ckpt(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def export(out, model_sd, info):
    """Write the flat diffusers folder atomically (per file)."""
    os.makedirs(out, exist_ok=True)
    tmpdir = os.path.join(out, ".export_tmp")
    shutil.rmtree(tmpdir, ignore_errors=True)
    unet = UNet2DModel(**UNET_CONFIG)
    unet.load_state_dict(model_sd)
    unet.save_pretrained(tmpdir, safe_serialization=True)
    DDPMScheduler(**SCHED_CONFIG).save_pretrained(tmpdir)
    with open(os.path.join(tmpdir, "training_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    for name in ("config.json", "scheduler_config.json", "training_info.json",
                 "diffusion_pytorch_model.safetensors"):
        os.chmod(os.path.join(tmpdir, name), 0o644)
        os.replace(os.path.join(tmpdir, name), os.path.join(out, name))
    shutil.rmtree(tmpdir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "assets", "demo_ddpm"))
    ap.add_argument("--workdir", default="/tmp/demo_ddpm_run")
    ap.add_argument("--members", type=int, default=500)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    os.makedirs(args.workdir, exist_ok=True)
    ckpt_path = os.path.join(args.workdir, "checkpoint.pt")

    imgs, labels, mem, non = make_split(args.members, args.split_seed)
    split_info = write_split(args.out, imgs, labels, mem, non, args.split_seed)
    log(f"split: {len(mem)} members, {len(non)} non-members; {split_info}")
    x_all = torch.from_numpy(pad32(imgs[mem]).astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    n = x_all.shape[0]
    assert n % args.batch == 0, "batch must divide the member count (equal exposure per image)"
    steps_per_epoch = n // args.batch

    torch.manual_seed(args.seed)
    model = UNet2DModel(**UNET_CONFIG)
    n_params = sum(p.numel() for p in model.parameters())
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = DDPMScheduler(**SCHED_CONFIG)
    acp = sched.alphas_cumprod.to(torch.float32)
    step, train_seconds, loss_hist = 0, 0.0, []
    if os.path.exists(ckpt_path):
        st = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(st["model"])
        ema = st["ema"]
        opt.load_state_dict(st["opt"])
        step, train_seconds, loss_hist = st["step"], st["train_seconds"], st["loss_hist"]
        log(f"resumed from {ckpt_path} at step {step}")
    log(f"UNet2DModel params: {n_params}; steps/epoch {steps_per_epoch}; target steps {args.steps}")

    def info():
        return dict(
            unet_params=n_params, steps=step, epochs=step / steps_per_epoch, batch=args.batch,
            members=n, lr=args.lr, warmup=args.warmup, ema_decay=args.ema, seed=args.seed,
            split_seed=args.split_seed, weights="ema", train_seconds_one_thread=round(train_seconds, 1),
            seconds_per_step=round(train_seconds / max(step, 1), 4),
            final_loss_mean_last_500_steps=(float(np.mean([l for _, l in loss_hist[-(500 // args.log_every):]]))
                                            if loss_hist else None),
            preprocessing="28x28 uint8 zero-padded 2 px per side to 32x32; x = u8/127.5 - 1",
            torch=torch.__version__, diffusers=__import__("diffusers").__version__,
        )

    if not args.export_only:
        model.train()
        run_loss, run_n, t_last = 0.0, 0, time.time()
        while step < args.steps:
            t0 = time.time()
            epoch, k = divmod(step, steps_per_epoch)
            perm = epoch_perm(args.seed, epoch, n)
            x0 = x_all[perm[k * args.batch:(k + 1) * args.batch]]
            g = step_generator(args.seed, step)
            t = torch.randint(0, 1000, (args.batch,), generator=g)
            eps = torch.randn(x0.shape, generator=g)
            a = acp[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            lr = args.lr * min(1.0, (step + 1) / args.warmup)
            for pg in opt.param_groups:
                pg["lr"] = lr
            loss = torch.nn.functional.mse_loss(model(xt, t).sample, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                for kk, v in model.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[kk].mul_(args.ema).add_(v.detach(), alpha=1 - args.ema)
                    else:
                        ema[kk].copy_(v)
            step += 1
            train_seconds += time.time() - t0
            run_loss += loss.item()
            run_n += 1
            if step % args.log_every == 0:
                dt = (time.time() - t_last) / run_n
                loss_hist.append((step, run_loss / run_n))
                eta = (args.steps - step) * dt
                log(f"step {step:6d} epoch {step / steps_per_epoch:7.1f} loss {run_loss / run_n:.5f} "
                    f"lr {lr:.2e} {dt:.3f}s/step eta {eta / 60:.1f} min")
                run_loss, run_n, t_last = 0.0, 0, time.time()
            if step % args.ckpt_every == 0 or step == args.steps:
                save_ckpt(ckpt_path, dict(model=model.state_dict(), ema=ema, opt=opt.state_dict(), step=step,
                                          train_seconds=train_seconds, loss_hist=loss_hist, args=vars(args)))
    # raw (non-EMA) weights for comparison, kept out of the repository
    torch.save(model.state_dict(), os.path.join(args.workdir, "raw_model.pt"))
    export(args.out, ema, info())
    log(f"exported EMA weights at step {step} to {args.out}: {json.dumps(info())}")


if __name__ == "__main__":
    main()
