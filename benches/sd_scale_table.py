#!/usr/bin/env python3
"""Turns the JSON lines of `benches/sd_scale.sh` into the markdown table of docs/benchmarks.md
(issue 13 point 7) and the projected wall time of a 100 + 100 audit at 512 px.

  python benches/sd_scale_table.py /tmp/sd_scale.jsonl

Per-sample model calls of the default presets (src/audit/attacks/*.rs, src/audit/mod.rs):
loss 3 t x 4 draws = 12 UNet; PIA 2; SecMI t/interval + 2 = 100/10 + 2 = 12; trajectory
2 strengths x 5 steps x 2 draws = 20 UNet + 20 VAE decodes (each x0 estimate compared in pixels);
CLiD 2 x 3 t x 4 draws = 24 UNet. Once per candidate for all attacks: 1 VAE encode (the latents)
and 1 text encode (its caption; the empty caption once per audit).
"""
import json
import sys

UNET_PER_SAMPLE = {"loss": 12, "pia": 2, "secmi": 12, "trajectory": 20, "clid": 24}
DECODES_PER_SAMPLE = {"trajectory": 20}
SAMPLES = 200

rows, meta = {}, []
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    d = json.loads(line)
    if "impl" in d:
        rows.setdefault((d["component"], d["px"]), {})[d["impl"]] = d
    else:
        meta.append(d)

names = {"unet": "UNet call", "vae": "VAE encode (posterior mean)", "decode": "VAE decode", "text": "text encode (77 tokens)"}
print("| call | px | ours ms | diffusers ms | ratio | ours peak MB | diffusers peak MB | peak ratio |")
print("|---|---|---|---|---|---|---|---|")
for (comp, px), pair in rows.items():
    o, t = pair.get("melo"), pair.get("diffusers")
    if not (o and t):
        continue
    print(f"| {names[comp]} | {'—' if comp == 'text' else px} | {o['ms_per_call']:.0f} | {t['ms_per_call']:.0f} | "
          f"{o['ms_per_call'] / t['ms_per_call']:.2f} | {o['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} | "
          f"{o['peak_rss_mb'] / t['peak_rss_mb']:.2f} |")
print()
for m in meta:
    print(json.dumps(m))


def sec(impl, comp, px):
    pair = rows.get((comp, px), {})
    return pair[impl]["ms_per_call"] / 1000 if impl in pair else None


print()
for impl in ["melo", "diffusers"]:
    u, e, dc, tx = sec(impl, "unet", 512), sec(impl, "vae", 512), sec(impl, "decode", 512), sec(impl, "text", 77)
    if None in (u, e, dc, tx):
        print(impl, "incomplete")
        continue
    per = {a: n * u + DECODES_PER_SAMPLE.get(a, 0) * dc for a, n in UNET_PER_SAMPLE.items()}
    shared = e + tx
    total = SAMPLES * (sum(per.values()) + shared)
    parts = ", ".join(f"{a} {SAMPLES * s / 3600:.1f} h" for a, s in per.items())
    print(f"{impl}: per sample {sum(per.values()) + shared:.0f} s; 100+100 at 512 px: {total / 3600:.1f} h "
          f"({parts}, encodes {SAMPLES * shared / 3600:.2f} h)")
