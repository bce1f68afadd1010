#!/usr/bin/env python3
"""Writes tests/data/lira_fixture.json (9 shadows) and lira_fixture_64.json (64 shadows, where
LiRA uses per-image variances): seeded synthetic shadow confidences and IN masks, and the
LiRA online / offline and RMIA online / offline scores computed by check_scores.py's numpy
implementation, for tests/adapter_audit.rs to compare with src/audit/adapter.rs (lira_scores,
rmia_scores).

Usage: python3 tools/lira/make_fixture.py"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from check_scores import lira, rmia  # noqa: E402

# Seed and shift chosen so that offline RMIA's tuned a lies inside (0, 1) (0.6): a test at
# a = 0 could not see the (1 - a) term.
rng = np.random.default_rng(30)
k, n, q = 9, 12, 2
SHIFT = 1.0  # how far a member's confidence moves
inside = rng.random((k, n)) < 0.5
inside[:, 0] = True  # an image every shadow holds IN (OUT term absent)
inside[:, 1] = False  # and one none does (IN term absent)
memorised = rng.random(n) < 0.5
phi = rng.normal(0.0, 1.0, (k, n, q)) + np.where(inside, SHIFT, 0.0)[:, :, None]
target = rng.normal(0.0, 1.0, (n, q)) + np.where(memorised, SHIFT, 0.0)[:, None]
online, offline = lira(target, phi, inside)
rmia_online, rmia_offline, rmia_a, rmia_a_auc = rmia(target, phi, inside)
root = os.path.join(os.path.dirname(__file__), "..", "..")
with open(os.path.join(root, "tests", "data", "lira_fixture.json"), "w") as f:
    json.dump(
        {
            "target": target.tolist(),
            "phi": phi.tolist(),
            "inside": inside.tolist(),
            "online": online.tolist(),
            "offline": offline.tolist(),
            "rmia_online": rmia_online.tolist(),
            "rmia_offline": rmia_offline.tolist(),
            "rmia_a": float(rmia_a),
            "rmia_a_auc": float(rmia_a_auc),
        },
        f,
    )
print("wrote tests/data/lira_fixture.json")

# With 64 shadows LiRA switches to per-image variances: a second, LiRA-only fixture. Members'
# confidences also spread more, so that per-image and pooled variances differ.
k64 = 64
inside = rng.random((k64, n)) < 0.5
inside[:, 0] = True
inside[:, 1] = False
inside[0, 2] = True  # an image only one shadow holds IN (its IN side falls back to the pool)
inside[1:, 2] = False
spread = rng.uniform(0.5, 2.0, n)
phi = rng.normal(0.0, 1.0, (k64, n, q)) * spread[None, :, None] + np.where(inside, SHIFT, 0.0)[:, :, None]
online, offline = lira(target, phi, inside)
with open(os.path.join(root, "tests", "data", "lira_fixture_64.json"), "w") as f:
    json.dump(
        {
            "target": np.round(target, 6).tolist(),
            "phi": np.round(phi, 6).tolist(),
            "inside": inside.tolist(),
            "online": lira(np.round(target, 6), np.round(phi, 6), inside)[0].tolist(),
            "offline": lira(np.round(target, 6), np.round(phi, 6), inside)[1].tolist(),
        },
        f,
    )
print("wrote tests/data/lira_fixture_64.json")
