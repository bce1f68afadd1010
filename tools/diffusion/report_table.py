#!/usr/bin/env python3
"""Markdown table of a `melo audit` report (for docs/results.md).

Usage: python tools/diffusion/report_table.py report.json [more.json …]
"""
import json
import sys

print("| report | attack | settings | queries / sample | AUC [95 % CI] | TPR@1 % FPR | TPR@0.1 % FPR | bal. acc | seconds |")
print("|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    r = json.load(open(path))
    p = r["params"]
    for a in r["attacks"]:
        m = a["metrics"]
        name = a["name"]
        if name == "loss":
            s = f"t = {p['loss']['timesteps']}, {p['loss']['draws']} draws"
        elif name == "pia":
            s = f"t = {p['pia']['timestep']}, p = {p['pia']['p']:g}"
        elif name == "secmi":
            s = f"t = {p['secmi']['timestep']}, interval {p['secmi']['interval']}"
        elif name == "clid":
            s = f"t = {p['clid']['timesteps']}, {p['clid']['draws']} draws; caption vs empty caption"
        else:
            t = p["trajectory"]
            s = f"t₀ = {t['strengths']}, {t['steps']} steps, {t['draws']} draws; eval {m['n_members']}+{m['n_nonmembers']}"
        print(f"| {path.split('/')[-1]} ({r['n_members']}+{r['n_nonmembers']}) | {name} | {s} | {a['queries_per_sample']} | "
              f"{m['auc']:.3f} [{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}] | {m['tpr_at_1pct_fpr']:.3f} | "
              f"{m['tpr_at_0_1pct_fpr']:.3f} | {m['balanced_accuracy']:.3f} | {a['seconds']:.0f} |")
    t = r["timings"]
    print(f"| {path.split('/')[-1]} | total | load {t['load_seconds']:.1f} s, {t['threads']} threads | | | | | | {t['total_seconds']:.0f} |")
