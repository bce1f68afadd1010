"""Writes tests/data/calibration/fixture.json: reference values computed with numpy for
tests/calibration_ood.rs (independent of the Rust code).

- calibration: logits [200, 3] and labels; softmax, ECE (15 equal-width bins (lo, hi] of the
  top-class confidence, Guo et al. 2017), Brier score (sum over classes, mean over images), NLL,
  and the NLL-minimising temperature by a dense grid on log T (step 1e-4).
- mahalanobis: features [300, 6] of 3 classes; class means, pooled within-class covariance
  (divided by n - C); queries' min-over-classes distances with the full inverse (np.linalg.inv)
  and with k = 2 leading eigenpairs (np.linalg.eigh) plus the mean residual variance.

python3 tools/ood/make_fixture.py
"""
import json
import os

import numpy as np

rng = np.random.default_rng(15)
out = {}

n, c = 200, 3
true = rng.normal(0, 1.5, (n, c))
p_true = np.exp(true - true.max(1, keepdims=True))
p_true /= p_true.sum(1, keepdims=True)
labels = np.array([rng.choice(c, p=row) for row in p_true])
logits = (true * 2.2).astype(np.float32)  # over-confident by about 2.2


def softmax(z, t=1.0):
    z = z.astype(np.float64) / t
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def nll(z, y, t):
    p = softmax(z, t)
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def ece(p, y, bins=15):
    conf = p.max(1)
    right = (p.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if lo == 0:
            m |= conf == 0
        if m.any():
            total += m.mean() * abs(right[m].mean() - conf[m].mean())
    return float(total)


def brier(p, y):
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(1).mean())


grid = np.exp(np.arange(np.log(0.05), np.log(20.0), 1e-4))
losses = [nll(logits, labels, t) for t in grid]
t_best = float(grid[int(np.argmin(losses))])
p1 = softmax(logits)
out["calibration"] = {
    "classes": c,
    "logits": logits.flatten().tolist(),
    "labels": labels.tolist(),
    "ece": ece(p1, labels),
    "brier": brier(p1, labels),
    "nll": nll(logits, labels, 1.0),
    "temperature": t_best,
    "ece_at_temperature": ece(softmax(logits, t_best), labels),
}

n, d, c = 300, 6, 3
centres = rng.normal(0, 3, (c, d))
mix = rng.normal(0, 1, (d, d))
y = rng.integers(0, c, n)
y[:c] = np.arange(c)
x = (centres[y] + rng.normal(0, 1, (n, d)) @ mix).astype(np.float32)
q = np.concatenate([x[:3], rng.normal(0, 6, (4, d))]).astype(np.float32)
xd = x.astype(np.float64)
means = np.stack([xd[y == k].mean(0) for k in range(c)])
centred = xd - means[y]
cov = centred.T @ centred / (n - c)
inv = np.linalg.inv(cov)
qd = q.astype(np.float64)
full = [min(float((v - m) @ inv @ (v - m)) for m in means) for v in qd]
w, v = np.linalg.eigh(cov)
w, v = w[::-1], v[:, ::-1]
k = 2
res = w[k:].mean()


def ppca(vec):
    best = np.inf
    for m in means:
        diff = vec - m
        proj = v[:, :k].T @ diff
        best = min(best, float((proj**2 / w[:k]).sum() + (diff @ diff - (proj**2).sum()) / res))
    return best


out["mahalanobis"] = {
    "classes": c,
    "dim": d,
    "features": x.flatten().tolist(),
    "labels": y.tolist(),
    "queries": q.flatten().tolist(),
    "full_inverse_scores": full,
    "k": k,
    "k_scores": [ppca(vec) for vec in qd],
    "eigenvalues": w.tolist(),
}

path = os.path.join(os.path.dirname(__file__), "../../tests/data/calibration/fixture.json")
with open(path, "w") as f:
    json.dump(out, f)
print(path, out["calibration"]["temperature"], out["calibration"]["ece"])
