"""The printed latency report.

Part of ``benchmarks/latency.py`` (see its docstring for what is timed and how).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from fexsdk.metadata import PIXEL_SCALE


def fmt(v: Optional[float], spec: str = ".2f", none: str = "-") -> str:
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def print_report(res: dict[str, Any]) -> None:
    mach, model, fl = res["machine"], res["model"], res["flops"]
    gpu = mach["gpu"] or "none"
    print(f"# fexsdk latency: {model['source']}")
    print(f"#   preset {model['preset'] or '?'}, {model['image_size']}x{model['image_size']}x{model['channels']}, "
          f"noise {model['noise_size']}, {model['precision']}")
    print(f"# machine: {mach['cpu']['name']}, {mach['cpu']['usable_cpus']} usable CPU(s) "
          f"({mach['cpu']['physical_cores']} core(s)), load avg {fmt(mach.get('loadavg_1min'))}; GPU: {gpu}")
    print(f"# ISA: {mach.get('isa') or mach['cpu']['isa']}")
    print(f"# threads: onnxruntime intra-op {res['options']['threads'] or 'default'}, torch {mach.get('torch_threads', '-')}")
    if mach.get("busy_warning"):
        print(f"# WARNING: {mach['busy_warning']}")
    if fl.get("flops"):
        print(f"# generator: {fl['flops'] / 1e9:.3f} GFLOP per face ({fl['macs'] / 1e6:.0f} M multiply-adds in "
              f"{fl['layers']} Conv/ConvTranspose, {fl['source']})")
    else:
        print(f"# generator FLOPs: unknown ({fl.get('error', '')})")
    for dev, p in res["peaks"].items():
        bound = f" -> at most {p['bound_faces_per_s']:,.0f} faces/s" if p.get("bound_faces_per_s") else ""
        print(f"# peak {dev}: {fmt(p['gflops'], ',.0f')} GFLOP/s ({p['source']}){bound}")
    print()
    hdr = f"{'backend':18s} {'dev':4s} {'prec':5s} {'batch':>5s} {'p50 ms':>9s} {'p95 ms':>9s} {'ms/face':>8s} " \
          f"{'faces/s':>9s} {'GFLOP/s':>8s} {'%peak':>6s} {'vs torch':>8s}"
    print(hdr)
    print("-" * len(hdr))
    last = None
    for r in res["rows"]:
        if last and last != r["backend"]:
            print()
        last = r["backend"]
        pct = None if r["peak_fraction"] is None else 100 * r["peak_fraction"]
        vs = fmt(r["speedup_vs_torch_eager"], ".2f") + "x" if r["speedup_vs_torch_eager"] else "-"
        print(f"{r['backend']:18s} {r['device']:4s} {r['precision']:5s} {r['batch']:5d} {r['p50_ms']:9.2f} {r['p95_ms']:9.2f} "
              f"{r['ms_per_face']:8.3f} {r['faces_per_s']:9.1f} {fmt(r['gflops_per_s'], '.1f'):>8s} {fmt(pct, '.1f'):>6s} {vs:>8s}")
    print()
    for b in res["backends"]:
        if b.get("notes"):
            print(f"# {b['key']}: {b['name']}; " + "; ".join(b["notes"]))
    if res["skipped"]:
        print("skipped:")
        for s in res["skipped"]:
            print(f"  {s['backend']:18s} {s['reason']}")
    if res["parity"]:
        print()
        print(f"parity vs {res['parity_reference']} on {res['parity_inputs']} (model units, [-1, 1]; x{PIXEL_SCALE:g} = pixel levels):")
        for key, p in res["parity"].items():
            print(f"  {key:18s} max |diff| {p['max_abs']:.2e} ({p['max_abs'] * PIXEL_SCALE:.2f} px)   "
                  f"mean {p['mean_abs']:.2e} ({p['mean_abs'] * PIXEL_SCALE:.3f} px)")
    q = res.get("quantization")
    if q and q.get("path"):
        print(f"int8 model: {q['size_bytes'] / 1e6:.2f} MB (fp32 {q['fp32_size_bytes'] / 1e6:.2f} MB), "
              f"{q['calibration_count']} {q['calibration']}, quantized in {q['seconds']:.1f} s")
    for pipe in res["pipeline"]:
        print()
        print(f"pipeline on {pipe['backend']} ({pipe['backend_name']}), detector {pipe['detector']}; "
              f"{pipe['frames']}; stage medians in ms:")
        hdr = f"{'frame':10s} {'faces':>5s} {'FPS':>7s} {'p50 ms':>8s} {'p95 ms':>8s} " + \
              " ".join(f"{s:>8s}" for s in ("decode", "detect", "crop", "generate", "paste")) + "  note"
        print(hdr)
        print("-" * len(hdr))
        for r in pipe["rows"]:
            st = r["stages_ms"]
            print(f"{r['frame']:10s} {r['faces']:5d} {r['fps']:7.1f} {r['total']['p50_ms']:8.2f} {r['total']['p95_ms']:8.2f} "
                  + " ".join(f"{st[s]:8.2f}" for s in ("decode", "detect", "crop", "generate", "paste")) + f"  {r['note']}")
    for s in res.get("pipeline_skipped", []):
        print(f"pipeline skipped on {s['backend']}: {s['reason']}")


# ---------------------------------------------------------------------------- main
