#!/usr/bin/env python3
"""Quick PyTorch check that the demo target memorises its members.

Attacks (score: higher = "more likely a member"):
  loss  (Matsumoto et al.)  score = -mean_k ||eps_k - eps_theta(sqrt(a_t) x0 + sqrt(1-a_t) eps_k, t)||^2 / D
        at t in --loss-t (default 50, 100, 200), --draws noise draws per t (fixed seed), reported per t and
        averaged over the t's ("loss_mean").
  pia   (Kong et al.)       eps0 = eps_theta(x0, 0); x_t = sqrt(a_t) x0 + sqrt(1-a_t) eps0 (t = 200);
        score = -||eps0 - eps_theta(x_t, t)||_p, p = 4 (over the flattened image). Deterministic.
  secmi (Duan et al.)       deterministic DDIM inversion x0 -> x_t (t = 100, interval 10: 10 steps), one DDIM
        step down t -> t-10 and one inversion step back t-10 -> t; score = -||x~_t - x_t||^2 / D. Deterministic.
All DDIM moves: x0' = (x - sqrt(1-a) e)/sqrt(a), x' = sqrt(a') x0' + sqrt(1-a') e, e = eps_theta(x, t), no clipping;
the inversion step from t to t' uses eps_theta at t (standard DDIM inversion).

Model-free baselines (mean intensity, pixel std of each image) are scored too: they must sit near
AUC 0.5, or the member / non-member split is not distribution-matched.

Metrics: ROC AUC (Mann-Whitney, ties counted 1/2) with a stratified bootstrap 95 % CI (2000 resamples, seed 0),
TPR at 1 % / 0.1 % FPR, best balanced accuracy.

Usage (one thread):
  OMP_NUM_THREADS=1 python tools/diffusion/check_leakage.py            # assets/demo_ddpm, writes leakage_pytorch.json
  OMP_NUM_THREADS=1 python tools/diffusion/check_leakage.py --ckpt /tmp/demo_ddpm_run/checkpoint.pt --weights ema \
      --no-write                                                       # an intermediate checkpoint
"""
import argparse
import json
import os
import time

import numpy as np
import torch

torch.set_num_threads(1)

from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def auc_score(pos, neg):
    s = np.concatenate([pos, neg])
    order = s.argsort(kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    # average ranks of ties
    ss = s[order]
    i = 0
    while i < len(ss):
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        if j > i:
            ranks[order[i:j + 1]] = (i + j + 2) / 2.0
        i = j + 1
    r = ranks[: len(pos)].sum()
    return (r - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def roc(pos, neg):
    s = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    thr = np.unique(s)[::-1]
    tpr = np.array([(pos >= t).mean() for t in thr])
    fpr = np.array([(neg >= t).mean() for t in thr])
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr]), y


def metrics(pos, neg, n_boot=2000, seed=0):
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    auc = auc_score(pos, neg)
    rng = np.random.default_rng(seed)
    boots = np.array([auc_score(pos[rng.integers(0, len(pos), len(pos))], neg[rng.integers(0, len(neg), len(neg))])
                      for _ in range(n_boot)])
    fpr, tpr, _ = roc(pos, neg)

    def tpr_at(x):
        ok = fpr <= x + 1e-12
        return float(tpr[ok].max())

    bal = float(((tpr + 1 - fpr) / 2).max())
    return dict(auc=round(float(auc), 4), auc_ci95=[round(float(np.percentile(boots, 2.5)), 4),
                                                     round(float(np.percentile(boots, 97.5)), 4)],
                tpr_at_1pct_fpr=round(tpr_at(0.01), 4), tpr_at_0_1pct_fpr=round(tpr_at(0.001), 4),
                balanced_accuracy=round(bal, 4))


def load_model(args):
    folder = args.model
    model = UNet2DModel.from_pretrained(folder) if args.ckpt is None else None
    if args.ckpt is not None:
        import sys
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from train_demo_ddpm import SCHED_CONFIG, UNET_CONFIG  # config of the run being checkpointed
        model = UNet2DModel(**UNET_CONFIG)
        st = torch.load(args.ckpt, weights_only=False)
        model.load_state_dict(st["ema"] if args.weights == "ema" else st["model"])
        print(f"checkpoint {args.ckpt} step {st['step']} weights {args.weights}")
        return model.eval(), DDPMScheduler(**SCHED_CONFIG).alphas_cumprod.double()
    sched = DDPMScheduler.from_pretrained(folder)
    return model.eval(), sched.alphas_cumprod.double()


def load_set(folder, name):
    d = np.load(os.path.join(folder, f"{name}.npz"))
    x = torch.from_numpy(d["images"].astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    return x, d["indices"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "assets", "demo_ddpm"))
    ap.add_argument("--ckpt", default=None, help="training checkpoint to evaluate instead of the exported weights")
    ap.add_argument("--weights", default="ema", choices=["ema", "raw"])
    ap.add_argument("--n", type=int, default=0, help="use only the first n members / non-members (0 = all)")
    ap.add_argument("--loss-t", default="50,100,200")
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--pia-t", type=int, default=200)
    ap.add_argument("--pia-p", type=float, default=4.0)
    ap.add_argument("--secmi-t", type=int, default=100)
    ap.add_argument("--secmi-interval", type=int, default=10)
    ap.add_argument("--no-secmi", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--out", default=None, help="default: <model>/leakage_pytorch.json")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)

    model, acp = load_model(args)
    xm, im = load_set(args.model, "members")
    xn, inn = load_set(args.model, "nonmembers")
    if args.n:
        xm, xn, im, inn = xm[: args.n], xn[: args.n], im[: args.n], inn[: args.n]
    X = torch.cat([xm, xn])
    N, D = X.shape[0], X[0].numel()
    loss_ts = [int(t) for t in args.loss_t.split(",")]

    @torch.no_grad()
    def eps_theta(x, t):
        out = []
        for i in range(0, x.shape[0], args.batch):
            xb = x[i:i + args.batch]
            out.append(model(xb, torch.full((xb.shape[0],), t, dtype=torch.long)).sample)
        return torch.cat(out)

    def ddim_move(x, e, t_from, t_to):
        a0, a1 = acp[t_from], acp[t_to]
        x0 = (x.double() - (1 - a0).sqrt() * e.double()) / a0.sqrt()
        return (a1.sqrt() * x0 + (1 - a1).sqrt() * e.double()).float()

    scores, timings = {}, {}
    # ---- loss attack
    t0 = time.time()
    per_t = {}
    for ti, t in enumerate(loss_ts):
        acc = torch.zeros(N, dtype=torch.float64)
        for k in range(args.draws):
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + 1000 * ti + k)
            eps = torch.randn(X.shape, generator=g)
            a = acp[t].float()
            xt = a.sqrt() * X + (1 - a).sqrt() * eps
            acc += ((eps_theta(xt, t) - eps) ** 2).flatten(1).mean(1).double()
        per_t[t] = -(acc / args.draws).numpy()
        scores[f"loss_t{t}"] = per_t[t]
    scores["loss_mean"] = np.mean([per_t[t] for t in loss_ts], axis=0)
    timings["loss"] = time.time() - t0
    # ---- PIA
    t0 = time.time()
    e0 = eps_theta(X, 0)
    a = acp[args.pia_t].float()
    xt = a.sqrt() * X + (1 - a).sqrt() * e0
    d = (e0 - eps_theta(xt, args.pia_t)).flatten(1).abs().double()
    scores["pia"] = -(d ** args.pia_p).sum(1).pow(1.0 / args.pia_p).numpy()
    timings["pia"] = time.time() - t0
    # ---- SecMI (t-error)
    if not args.no_secmi:
        t0 = time.time()
        x, step = X.clone(), args.secmi_interval
        for t in range(0, args.secmi_t, step):
            x = ddim_move(x, eps_theta(x, t), t, t + step)
        x_t = x
        ts = args.secmi_t
        x_prev = ddim_move(x_t, eps_theta(x_t, ts), ts, ts - step)
        x_back = ddim_move(x_prev, eps_theta(x_prev, ts - step), ts - step, ts)
        scores["secmi"] = -((x_back - x_t) ** 2).flatten(1).mean(1).double().numpy()
        timings["secmi"] = time.time() - t0

    # model-free sanity baselines: must be ~0.5 for a distribution-matched split
    scores["baseline_mean_intensity"] = X.flatten(1).mean(1).double().numpy()
    scores["baseline_pixel_std"] = X.flatten(1).std(1).double().numpy()
    nm = xm.shape[0]
    results = {}
    for name, s in scores.items():
        results[name] = metrics(s[:nm], s[nm:])
        print(f"{name:10s} AUC {results[name]['auc']:.4f}  95% CI [{results[name]['auc_ci95'][0]:.4f}, "
              f"{results[name]['auc_ci95'][1]:.4f}]  TPR@1%FPR {results[name]['tpr_at_1pct_fpr']:.3f}  "
              f"TPR@0.1%FPR {results[name]['tpr_at_0_1pct_fpr']:.3f}  bal.acc {results[name]['balanced_accuracy']:.3f}")
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})

    if not args.no_write:
        out = args.out or os.path.join(args.model, "leakage_pytorch.json")
        rep = dict(
            model=os.path.relpath(args.model, ROOT) if args.ckpt is None else args.ckpt,
            weights="exported" if args.ckpt is None else args.weights,
            n_members=int(nm), n_nonmembers=int(xn.shape[0]),
            score_convention="higher = more likely member (negated loss / distance)",
            params=dict(loss_t=loss_ts, loss_draws=args.draws, loss_noise="torch.Generator seeded "
                        "seed*1000003 + 1000*t_index + draw, torch.randn([N,1,32,32]) over members then non-members",
                        pia_t=args.pia_t, pia_p=args.pia_p, secmi_t=args.secmi_t, secmi_interval=args.secmi_interval,
                        seed=args.seed, bootstrap="2000 stratified resamples, numpy default_rng(0), percentile CI",
                        model_calls_per_sample=dict(loss=len(loss_ts) * args.draws, pia=2,
                                                    secmi=args.secmi_t // args.secmi_interval + 2)),
            metrics=results,
            seconds=dict({k: round(v, 1) for k, v in timings.items()}, threads=1, torch=torch.__version__),
            per_sample_scores=dict(
                member_indices=[int(i) for i in im], nonmember_indices=[int(i) for i in inn],
                **{k: dict(members=[float(f"{v:.6g}") for v in scores[k][:nm]],
                           nonmembers=[float(f"{v:.6g}") for v in scores[k][nm:]])
                   for k in ("pia", "secmi", "loss_mean") if k in scores}),
        )
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rep, f, indent=1)
        os.replace(tmp, out)
        print("wrote", out)


if __name__ == "__main__":
    main()
