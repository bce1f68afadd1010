#!/usr/bin/env python3
"""Writes tests/data/lira_fixture.json: seeded synthetic shadow confidences and IN masks, and the
LiRA online / offline scores computed by check_scores.py's numpy implementation, for
tests/adapter_audit.rs to compare with src/audit/adapter.rs (lira_scores).

Usage: python3 tools/lira/make_fixture.py"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from check_scores import lira  # noqa: E402

rng = np.random.default_rng(19)
k, n, q = 9, 12, 2
inside = rng.random((k, n)) < 0.5
inside[:, 0] = True  # an image every shadow holds IN (OUT term absent)
inside[:, 1] = False  # and one none does (IN term absent)
memorised = rng.random(n) < 0.5
phi = rng.normal(0.0, 1.0, (k, n, q)) + np.where(inside, 3.0, 0.0)[:, :, None]
target = rng.normal(0.0, 1.0, (n, q)) + np.where(memorised, 3.0, 0.0)[:, None]
online, offline = lira(target, phi, inside)
root = os.path.join(os.path.dirname(__file__), "..", "..")
with open(os.path.join(root, "tests", "data", "lira_fixture.json"), "w") as f:
    json.dump(
        {
            "target": target.tolist(),
            "phi": phi.tolist(),
            "inside": inside.tolist(),
            "online": online.tolist(),
            "offline": offline.tolist(),
        },
        f,
    )
print("wrote tests/data/lira_fixture.json")
