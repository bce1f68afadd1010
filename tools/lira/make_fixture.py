#!/usr/bin/env python3
"""Writes tests/data/lira_fixture.json: seeded synthetic shadow confidences and IN masks, and the
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
