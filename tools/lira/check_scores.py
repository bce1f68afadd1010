#!/usr/bin/env python3
"""Independent LiRA and RMIA scoring (numpy) of an adapter audit, from the shadow cache.

Usage: python3 tools/lira/check_scores.py SHADOW_DIR REPORT.json

Reads SHADOW_DIR/target_phi.json (the target's logit-scaled confidences per audited image and
query) and SHADOW_DIR/shadow_*.json (each shadow's IN mask over the pool and its confidences),
recomputes LiRA online and offline exactly as specified in Carlini et al. 2022 with the fixed
(pooled within-image) variance described in src/audit/adapter.rs, and RMIA online and offline
(Zarifzadeh et al. 2024, gamma = 1, offline a tuned on the shadows), and prints the worst
absolute difference to the scores in REPORT.json (exit 1 above 1e-9 relative), with each
attack's AUC and TPR at 1 % and 0.1 % FPR as numpy computes them (also for attacks the report
lacks, e.g. RMIA on a cache made before RMIA existed)."""
import glob
import json
import sys

import numpy as np


# From this many shadows on, per-image variances (src/audit/adapter.rs LIRA_PER_EXAMPLE_VARIANCE).
PER_EXAMPLE_VARIANCE = 64


def lira(target, phi, inside):
    """target [n, q]; phi [k, n, q]; inside [k, n] bool -> (online [n], offline [n])."""
    k, n, q = phi.shape
    ins = inside[:, :, None]
    count_in = inside.sum(0)[:, None]
    count_out = (~inside).sum(0)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = np.where(ins, phi, 0).sum(0) / count_in
        mean_out = np.where(~ins, phi, 0).sum(0) / count_out
    ss_in = np.nansum(np.where(ins, (phi - mean_in[None]) ** 2, 0), axis=(0, 1))
    ss_out = np.nansum(np.where(~ins, (phi - mean_out[None]) ** 2, 0), axis=(0, 1))
    df_in = np.maximum(count_in - 1, 0).sum(0)
    df_out = np.maximum(count_out - 1, 0).sum(0)
    sd_in = np.maximum(np.sqrt(ss_in / np.maximum(df_in, 1)), 1e-6)
    sd_out = np.maximum(np.sqrt(ss_out / np.maximum(df_out, 1)), 1e-6)

    if k >= PER_EXAMPLE_VARIANCE:
        # Each image's own variance where its side has two or more shadows.
        with np.errstate(invalid="ignore", divide="ignore"):
            own_in = np.sqrt(np.where(ins, (phi - mean_in[None]) ** 2, 0).sum(0) / (count_in - 1))
            own_out = np.sqrt(np.where(~ins, (phi - mean_out[None]) ** 2, 0).sum(0) / (count_out - 1))
        sd_in = np.where(count_in >= 2, np.maximum(own_in, 1e-6), sd_in)
        sd_out = np.where(count_out >= 2, np.maximum(own_out, 1e-6), sd_out)

    def logpdf(x, m, s):
        return -0.5 * ((x - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)

    has_in, has_out = count_in > 0, count_out > 0
    term_in = np.where(has_in, logpdf(target, np.nan_to_num(mean_in), sd_in), 0.0)
    term_out = np.where(has_out, logpdf(target, np.nan_to_num(mean_out), sd_out), 0.0)
    online = (term_in - term_out).mean(1)
    offline = np.where(has_out, (target - np.nan_to_num(mean_out)) / sd_out, 0.0).mean(1)
    return online, offline


def rmia_dominance(p, pr, gamma=1.0):
    """p, pr [n, q] -> mean over queries of the fraction of other images z with
    p(x)/pr(x) > gamma * p(z)/pr(z), by brute force over all pairs."""
    n, q = p.shape
    ratio = p / np.maximum(pr, np.finfo(np.float64).tiny)
    dominates = ratio[:, None, :] > gamma * ratio[None, :, :]  # [x, z, q]
    idx = np.arange(n)
    dominates[idx, idx, :] = False
    return (dominates.sum(1) / (n - 1)).mean(1)


def rank_auc(pos, neg):
    """P(pos > neg) + P(equal)/2 by all pairs."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)


def rmia(target, phi, inside, gamma=1.0):
    """-> (online [n], offline [n], a, mean AUC of a) as in src/audit/adapter.rs."""
    k, n, q = phi.shape
    p_shadow = 1.0 / (1.0 + np.exp(-phi))

    def means(keep):
        all_ = p_shadow[keep].mean(0)
        out_w = (~inside[keep])[:, :, None]
        count_out = out_w.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(count_out > 0, (p_shadow[keep] * out_w).sum(0) / count_out, all_)
        return all_, out

    def offline_pr(out, a):
        return 0.5 * ((1 + a) * out + 1 - a)

    best_a, best_auc = 0.0, -np.inf
    for a in np.round(np.arange(11) * 0.1, 1):
        aucs = []
        for s in range(k):
            keep = np.arange(k) != s
            _, out_s = means(keep)
            sc = rmia_dominance(p_shadow[s], offline_pr(out_s, a), gamma)
            pos, neg = sc[inside[s]], sc[~inside[s]]
            aucs.append(rank_auc(pos, neg) if len(pos) and len(neg) else 0.5)
        if np.mean(aucs) > best_auc + 1e-12:
            best_a, best_auc = a, np.mean(aucs)
    all_, out = means(np.ones(k, dtype=bool))
    p_target = 1.0 / (1.0 + np.exp(-target))
    return (rmia_dominance(p_target, all_, gamma), rmia_dominance(p_target, offline_pr(out, best_a), gamma),
            best_a, best_auc)


def tpr_at_fpr(members, nonmembers, max_fpr):
    """Highest TPR over thresholds whose FPR (score >= threshold) is at most max_fpr."""
    best = 0.0
    for threshold in np.unique(np.concatenate([members, nonmembers])):
        if (nonmembers >= threshold).mean() <= max_fpr:
            best = max(best, (members >= threshold).mean())
    return best


def main():
    shadow_dir, report_path = sys.argv[1], sys.argv[2]
    t = json.load(open(f"{shadow_dir}/target_phi.json"))
    target = np.array(t["phi"], dtype=np.float64)
    n = target.shape[0]
    shadows = [json.load(open(p)) for p in sorted(glob.glob(f"{shadow_dir}/shadow_[0-9][0-9][0-9].json"))]
    phi = np.array([s["phi"] for s in shadows], dtype=np.float64)
    inside = np.array([s["in_mask"][:n] for s in shadows], dtype=bool)
    online, offline = lira(target, phi, inside)
    rmia_online, rmia_offline, a, _ = rmia(target, phi, inside)
    report = json.load(open(report_path))
    nm = t["n_members"]
    worst = 0.0
    for name, ours in (("lira_online", online), ("lira_offline", offline), ("rmia_online", rmia_online),
                       ("rmia_offline", rmia_offline)):
        m, nmem = ours[:nm], ours[nm:]
        tuned = f", a = {a:.1f}" if name == "rmia_offline" else ""
        print(f"{name} (numpy{tuned}): AUC {rank_auc(m, nmem):.3f}, TPR@1% FPR {tpr_at_fpr(m, nmem, 0.01):.3f}, "
              f"TPR@0.1% FPR {tpr_at_fpr(m, nmem, 0.001):.3f}")
        attack = next((a for a in report["attacks"] if a["name"] == name), None)
        if attack is None:
            continue
        theirs = np.array([s["score"] for s in sorted(attack["scores"], key=lambda s: (not s["member"], s["index"]))])
        diff = np.abs(theirs - ours) / np.maximum(1.0, np.abs(ours))
        worst = max(worst, diff.max())
        print(f"{name}: {len(shadows)} shadows, {nm} + {n - nm} images, worst relative difference {diff.max():.2e}")
    sys.exit(0 if worst < 1e-9 else 1)


if __name__ == "__main__":
    main()
