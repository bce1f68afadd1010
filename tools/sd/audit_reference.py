#!/usr/bin/env python3
"""Independent diffusers re-computation of `melo audit`'s deterministic scores on a Stable
Diffusion pipeline folder: loss, PIA, SecMI and CLiD (the trajectory attack's classifier is not
re-computed). Everything here is diffusers / transformers / numpy; nothing is shared with the
Rust code except the specification of the seeded noise (src/audit/attacks/mod.rs,
`gaussian_noise`), re-implemented below in numpy.

    python tools/sd/audit_reference.py --target assets/demo_sd --members assets/demo_sd/members \
        --nonmembers assets/demo_sd/nonmembers --out /tmp/ref.json [--compare melo_report.json]

What it computes, per candidate (members first, then non-members, in metadata.jsonl order):
  latents  z = vae.encode(x).latent_dist.mean * scaling_factor, x = u8 / 127.5 - 1 (images are
           resized to the pipeline's resolution like train_text_to_image.py: shorter side with
           PIL bilinear, centre crop; an image already at that size is used as is)
  text     text_encoder(tokenizer(caption, padding="max_length", truncation=True))[0]
  loss     -mean_{t, draw} mean((eps - unet(sqrt(a_t) z + sqrt(1 - a_t) eps, t, text))^2),
           eps = gaussian_noise(shape, seed, 1000 * t_index + draw)
  pia      eps0 = unet(z, 0, text); -|| eps0 - unet(sqrt(a_t) z + sqrt(1 - a_t) eps0, t, text) ||_p
  secmi    DDIM inversion 0 -> t in steps of k, one step down and back; -mean((x_back - x_t)^2)
  clid     mean_{t, draw} [mean((eps - unet(x_t, t, "")) ^2) - mean((eps - unet(x_t, t, text))^2)],
           eps = gaussian_noise(shape, seed, 200000 + 1000 * t_index + draw)
with the model output converted to eps for v-prediction pipelines, a_t the scheduler's float32
alphas_cumprod, and the preset parameters of `melo audit --preset full` unless overridden.
--compare reads a melo report (JSON) and prints the largest relative difference per attack;
the exit status is 1 when one exceeds --tolerance (default 1e-3).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

GAMMA = np.uint64(0x9E3779B97F4A7C15)
M64 = (1 << 64) - 1


def _mix(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def gaussian_noise(shape, seed, stream):
    """The seeded standard-normal noise of `melo audit` (see the module docstring)."""
    key_in = ((seed * 0x9E3779B97F4A7C15) & M64) ^ ((stream + 0xD1B54A32D192ED03) & M64)
    key = _mix(np.uint64(key_in))
    n = int(np.prod(shape))
    i = np.arange(2 * n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = _mix(key + i * GAMMA) >> np.uint64(11)
    u = (bits.astype(np.float64) + 1.0) / float(1 << 53)
    z = np.sqrt(-2.0 * np.log(u[0::2])) * np.cos(2.0 * np.pi * u[1::2])
    return torch.from_numpy(z.astype(np.float32).reshape(shape))


def preprocess(path, res):
    im = Image.open(path).convert("RGB")
    w, h = im.size
    if (w, h) != (res, res):
        s = res / min(w, h)
        nw, nh = (res, int(res * h / w)) if w <= h else (int(res * w / h), res)
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = int(round((nw - res) / 2.0)), int(round((nh - res) / 2.0))
        im = im.crop((left, top, left + res, top + res))
    a = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1)


def load_set(folder, res, limit=None):
    imgs, texts = [], []
    with open(os.path.join(folder, "metadata.jsonl")) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            imgs.append(preprocess(os.path.join(folder, row["file_name"]), res))
            texts.append(row["text"])
            if limit and len(texts) >= limit:
                break
    return torch.stack(imgs), texts


class Pipeline:
    def __init__(self, target):
        self.unet = UNet2DConditionModel.from_pretrained(os.path.join(target, "unet")).eval()
        self.vae = AutoencoderKL.from_pretrained(os.path.join(target, "vae")).eval()
        self.text_encoder = CLIPTextModel.from_pretrained(os.path.join(target, "text_encoder")).eval()
        tok_dir = os.path.join(target, "tokenizer")
        self.tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        sched = DDPMScheduler.from_pretrained(os.path.join(target, "scheduler"))
        self.prediction = sched.config.prediction_type
        self.acp = sched.alphas_cumprod.to(torch.float32).double()
        blocks = len(self.vae.config.block_out_channels)
        self.resolution = self.unet.config.sample_size * 2 ** (blocks - 1)

    @torch.no_grad()
    def text(self, captions):
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def latents(self, x, bs):
        return torch.cat([self.vae.encode(x[i:i + bs]).latent_dist.mean for i in range(0, len(x), bs)]) \
            * self.vae.config.scaling_factor

    @torch.no_grad()
    def eps(self, x, t, text, bs):
        out = []
        for i in range(0, len(x), bs):
            xb, tb = x[i:i + bs], text[i:i + bs]
            o = self.unet(xb, torch.full((len(xb),), t, dtype=torch.long), encoder_hidden_states=tb).sample
            if self.prediction == "v_prediction":
                a = self.acp[t]
                o = (o.double() * a.sqrt() + xb.double() * (1 - a).sqrt()).float()
            out.append(o)
        return torch.cat(out)

    def add_noise(self, x0, noise, t):
        a = self.acp[t]
        return (x0.double() * a.sqrt() + noise.double() * (1 - a).sqrt()).float()

    def ddim_move(self, x, eps, t_from, t_to):
        a0 = self.acp[t_from] if t_from >= 0 else torch.tensor(1.0, dtype=torch.float64)
        a1 = self.acp[t_to] if t_to >= 0 else torch.tensor(1.0, dtype=torch.float64)
        cx = (a1 / a0).sqrt()
        ce = (1 - a1).sqrt() - a1.sqrt() * (1 - a0).sqrt() / a0.sqrt()
        return (x.double() * cx + eps.double() * ce).float()


def auc(members, nonmembers):
    """P(member score > non-member score), ties counted 1/2."""
    m, n = np.asarray(members)[:, None], np.asarray(nonmembers)[None, :]
    return float(((m > n) + 0.5 * (m == n)).mean())


def auc_ci(members, nonmembers, resamples=1000, seed=0):
    """Stratified percentile bootstrap 95 % CI of the AUC."""
    rng = np.random.default_rng(seed)
    m, n = np.asarray(members), np.asarray(nonmembers)
    vals = [auc(rng.choice(m, len(m)), rng.choice(n, len(n))) for _ in range(resamples)]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def mse(a, b):
    return ((a.double() - b.double()) ** 2).flatten(1).mean(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--members", required=True)
    ap.add_argument("--nonmembers", required=True)
    ap.add_argument("--n", type=int, default=None, help="first N of each set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--loss-t", default="50,100,200")
    ap.add_argument("--loss-draws", type=int, default=4)
    ap.add_argument("--pia-t", type=int, default=200)
    ap.add_argument("--pia-p", type=float, default=4.0)
    ap.add_argument("--secmi-t", type=int, default=100)
    ap.add_argument("--secmi-interval", type=int, default=10)
    ap.add_argument("--clid-t", default="100,200,300")
    ap.add_argument("--clid-draws", type=int, default=4)
    ap.add_argument("--attacks", default="loss,pia,secmi,clid")
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    a = ap.parse_args()
    attacks = a.attacks.split(",")

    p = Pipeline(a.target)
    xm, tm = load_set(a.members, p.resolution, a.n)
    xn, tn = load_set(a.nonmembers, p.resolution, a.n)
    x = torch.cat([xm, xn])
    captions = tm + tn
    z = p.latents(x, a.batch)
    text = p.text(captions)
    empty = p.text([""]).repeat(len(captions), 1, 1)
    bs = a.batch
    scores = {}

    if "loss" in attacks:
        ts = [int(v) for v in a.loss_t.split(",")]
        acc = torch.zeros(len(z), dtype=torch.float64)
        for ti, t in enumerate(ts):
            for k in range(a.loss_draws):
                noise = gaussian_noise(tuple(z.shape), a.seed, 1000 * ti + k)
                acc += mse(p.eps(p.add_noise(z, noise, t), t, text, bs), noise)
        scores["loss"] = (-acc / (len(ts) * a.loss_draws)).tolist()
    if "pia" in attacks:
        t = a.pia_t
        eps0 = p.eps(z, 0, text, bs)
        eps_t = p.eps(p.add_noise(z, eps0, t), t, text, bs)
        d = (eps0.double() - eps_t.double()).flatten(1).abs()
        scores["pia"] = (-(d ** a.pia_p).sum(1) ** (1.0 / a.pia_p)).tolist()
    if "secmi" in attacks:
        t_sec, k = a.secmi_t, a.secmi_interval
        xs = z.clone()
        for t in range(0, t_sec, k):
            xs = p.ddim_move(xs, p.eps(xs, t, text, bs), t, t + k)
        down = t_sec - k
        x_prev = p.ddim_move(xs, p.eps(xs, t_sec, text, bs), t_sec, down)
        x_back = p.ddim_move(x_prev, p.eps(x_prev, down, text, bs), down, t_sec)
        scores["secmi"] = (-mse(x_back, xs)).tolist()
    if "clid" in attacks:
        ts = [int(v) for v in a.clid_t.split(",")]
        acc = torch.zeros(len(z), dtype=torch.float64)
        for ti, t in enumerate(ts):
            for k in range(a.clid_draws):
                noise = gaussian_noise(tuple(z.shape), a.seed, 200000 + 1000 * ti + k)
                x_t = p.add_noise(z, noise, t)
                acc += mse(p.eps(x_t, t, empty, bs), noise) - mse(p.eps(x_t, t, text, bs), noise)
        scores["clid"] = (acc / (len(ts) * a.clid_draws)).tolist()

    n_m = len(xm)
    out = {"target": os.path.basename(os.path.normpath(a.target)), "n_members": n_m, "n_nonmembers": len(xn),
           "params": {k: v for k, v in vars(a).items() if k not in ("out", "compare")},
           "score_convention": "higher = more likely a member", "scores": scores}
    out["auc"] = {k: auc(v[:n_m], v[n_m:]) for k, v in scores.items()}
    out["auc_ci95"] = {k: auc_ci(v[:n_m], v[n_m:]) for k, v in scores.items()}
    # model-free scores: near 0.5 when the two sets are distribution-matched
    flat = x.flatten(1).double()
    base = {"mean_intensity": flat.mean(1).tolist(), "pixel_std": flat.std(1).tolist()}
    out["baselines_auc"] = {k: auc(v[:n_m], v[n_m:]) for k, v in base.items()}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, a.out)
    print(json.dumps({"auc": out["auc"], "ci": out["auc_ci95"], "baselines": out["baselines_auc"]}))

    if a.compare:
        rep = json.load(open(a.compare))
        worst = 0.0
        for att in rep["attacks"]:
            if att["name"] not in scores:
                continue
            ours = scores[att["name"]]
            diffs = []
            for s in att["scores"]:
                i = s["index"] + (0 if s["member"] else n_m)
                ref = ours[i]
                diffs.append(abs(s["score"] - ref) / max(abs(ref), 1e-12))
            print(f"{att['name']}: {len(diffs)} scores, max relative difference {max(diffs):.3e}, "
                  f"melo AUC {att['metrics']['auc']:.4f} vs diffusers {out['auc'][att['name']]:.4f}")
            worst = max(worst, max(diffs))
        if worst > a.tolerance:
            print(f"FAIL: {worst:.3e} > tolerance {a.tolerance}")
            return 1
        print(f"OK: every compared score within {a.tolerance} relative")
    return 0


if __name__ == "__main__":
    sys.exit(main())
