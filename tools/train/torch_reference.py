#!/usr/bin/env python3
"""PyTorch reference for the training recipe of `melo train` (tests/train.rs loads its output).

One tiny, fully deterministic case, computed by PyTorch's own functions in float64:

  * the head: logits = x · Wᵀ + b (x [B, F], W [C, F], b [C]);
  * the loss: `F.cross_entropy(logits, y, weight=w, label_smoothing=eps)` ('mean' reduction),
    with class weights w = n / (C · n_c) (scikit-learn's 'balanced' formula) and the gradients
    of W and b;
  * the schedule: linear warm-up then cosine decay to `min_lr`, built from PyTorch's own
    schedulers (`SequentialLR` of `LinearLR` and `CosineAnnealingLR`), one value per step;
  * two steps of `torch.optim.AdamW` (β = 0.9 / 0.999, ε = 1e-8, the trainer's constants),
    weight decay on the matrix W only (a second parameter group without decay for b, as the
    trainer decays matrices only), at the schedule's learning rates of steps 0 and 1; the loss
    is recomputed on the updated parameters before the second step, as a training loop does.

The trainer's warm-up length is round(total · warmup), at most total − 1; its learning rate at
step s < warm is lr · (s + 1) / warm, i.e. `LinearLR(start_factor=1/warm, total_iters=warm−1)`,
and afterwards cosine over the remaining total − warm steps, i.e. `CosineAnnealingLR(T_max=
total − warm, eta_min=min_lr)` from the milestone `warm` on.

The weight decay (0.1) and peak learning rate (0.05) are larger than `melo train`'s defaults
so that decay and bias correction move the parameters by far more than f32 rounding.

Usage: python tools/train/torch_reference.py tests/data/train/torch_reference.json
"""
import argparse
import json
import math
import warnings

import torch
import torch.nn.functional as F

BATCH, FEATURES, CLASSES = 6, 5, 3
LABELS = [0, 2, 1, 0, 0, 1]  # counts 3 / 2 / 1: skewed, so the class weights differ
SMOOTHING = 0.1
LR, MIN_LR, WARMUP, TOTAL_STEPS = 0.05, 1e-4, 0.3, 10
WEIGHT_DECAY = 0.1
BETAS, EPS = (0.9, 0.999), 1e-8


def schedule(total, warmup, lr, min_lr):
    """PyTorch's schedulers stepped once per optimiser step; returns the lr in force at each
    step 0..total−1."""
    warm = min(round(total * warmup), total - 1)
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total - warm, 1), eta_min=min_lr)
    if warm >= 2:
        linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warm])
    elif warm == 0:
        sched = cosine
    else:
        raise ValueError("a warm-up of one step has no LinearLR equivalent; choose another case")
    out = []
    with warnings.catch_warnings():
        # SequentialLR passes an epoch to the cosine scheduler at the milestone (deprecated API).
        warnings.simplefilter("ignore")
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return warm, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    args = ap.parse_args()

    g = torch.Generator().manual_seed(20)
    x = (torch.rand(BATCH, FEATURES, generator=g, dtype=torch.float64) * 4 - 2)
    w0 = (torch.rand(CLASSES, FEATURES, generator=g, dtype=torch.float64) - 0.5)
    b0 = (torch.rand(CLASSES, generator=g, dtype=torch.float64) - 0.5)
    # Round the inputs to f32 so that both sides start from exactly the same numbers.
    x, w0, b0 = (t.float().double() for t in (x, w0, b0))
    y = torch.tensor(LABELS)
    counts = torch.bincount(y, minlength=CLASSES).double()
    class_weights = counts.sum() / (CLASSES * counts)

    warm, lrs = schedule(TOTAL_STEPS, WARMUP, LR, MIN_LR)
    # The closed form the trainer documents, to catch a quirk of the chained schedulers.
    for s, got in enumerate(lrs):
        want = LR * (s + 1) / warm if s < warm else MIN_LR + 0.5 * (LR - MIN_LR) * (
            1 + math.cos(math.pi * (s - warm) / (TOTAL_STEPS - warm)))
        assert abs(got - want) < 1e-15, (s, got, want)

    W = torch.nn.Parameter(w0.clone())
    b = torch.nn.Parameter(b0.clone())
    opt = torch.optim.AdamW(
        [{"params": [W], "weight_decay": WEIGHT_DECAY}, {"params": [b], "weight_decay": 0.0}],
        lr=LR, betas=BETAS, eps=EPS)

    def loss_fn():
        return F.cross_entropy(x @ W.T + b, y, weight=class_weights, label_smoothing=SMOOTHING)

    steps = []
    for s in range(2):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        rec = {"lr": lrs[s], "loss": loss.item(), "grad_weight": W.grad.flatten().tolist(),
               "grad_bias": b.grad.tolist()}
        for group in opt.param_groups:
            group["lr"] = lrs[s]
        opt.step()
        rec["weight_after"] = W.detach().flatten().tolist()
        rec["bias_after"] = b.detach().tolist()
        steps.append(rec)

    # Unweighted and unsmoothed variants too: they pin down which term carries which weight.
    logits0 = x @ w0.T + b0
    variants = {
        "plain": F.cross_entropy(logits0, y).item(),
        "weighted": F.cross_entropy(logits0, y, weight=class_weights).item(),
        "smoothed": F.cross_entropy(logits0, y, label_smoothing=SMOOTHING).item(),
        "weighted_smoothed": F.cross_entropy(logits0, y, weight=class_weights, label_smoothing=SMOOTHING).item(),
    }

    fixture = {
        "generator": "tools/train/torch_reference.py",
        "torch_version": torch.__version__,
        "dtype": "float64",
        "batch": BATCH, "features": FEATURES, "classes": CLASSES,
        "x": x.flatten().tolist(),
        "labels": LABELS,
        "class_counts": counts.long().tolist(),
        "class_weights": class_weights.tolist(),
        "label_smoothing": SMOOTHING,
        "weight_init": w0.flatten().tolist(),
        "bias_init": b0.tolist(),
        "lr": LR, "min_lr": MIN_LR, "warmup": WARMUP, "total_steps": TOTAL_STEPS, "warmup_steps": warm,
        "schedule": lrs,
        "weight_decay": WEIGHT_DECAY, "betas": list(BETAS), "eps": EPS,
        "loss_variants": variants,
        "steps": steps,
    }
    with open(args.out, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
