"""N-CMAPSS DS02 reader: wall time and peak memory on a generated file of the real size (6.5 M rows, 2.3 GiB).

The file comes from ``grace_lit.data.synthetic_ncmapss --full-size`` (the real schema and row counts, units of 59
to 89 cycles), written once into ``--file`` and reused. Every measurement runs in a fresh child process, the two
feature presets interleaved per round: ``read`` is the reader's constructor (schema check, chunked read,
downsampling, float32 columns), ``build`` cuts the standardised windows (protocol paper). Memory is the growth
of the child's peak resident set (``ru_maxrss``) over its peak after the imports, and, in a second child, the
peak of ``tracemalloc`` (numpy's allocations; not HDF5's own buffers). Both are set against the size of the
selected columns as float32 over all rows, what a whole-column read would hold at least. The file is in the page
cache after the first read, so the times are warm-cache reads. The last line is
``peak_vs_selected=<largest read peak / selected float32 size over the presets>``.

    .venv/bin/python benchmarks/ncmapss_reader.py [--rounds 3] [--file /tmp/grace-lit-bench/...h5] [--presets ...]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
from hydra.utils import instantiate

from common import compose_config, machine
from grace_lit.data.synthetic_ncmapss import generate

PRESETS = ("ncmapss_20feat", "ncmapss_32feat")
DEFAULT_FILE = Path(tempfile.gettempdir()) / "grace-lit-bench" / "N-CMAPSS_DS02-006-synthetic-full.h5"
MIB = 2 ** 20


def peak_rss() -> int:
    """This process's peak resident set in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(preset: str, path: Path, trace: bool) -> dict[str, float]:
    """One measurement, in this (fresh) process."""
    cfg = compose_config("dataset=DS02", f"dataset.path={path}", f"dataset/features={preset}")
    base = peak_rss()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    source = instantiate(cfg.dataset)
    read_s, read_rss = time.perf_counter() - start, peak_rss()
    read_traced = tracemalloc.get_traced_memory()[1] if trace else 0
    source.build(source.train_units(), np.array([], dtype=np.int64), cfg.seed)
    build_s = time.perf_counter() - start - read_s
    kept = len(source.dev.unit) + len(source.test.unit)
    return {"read_s": read_s, "build_s": build_s, "read_peak": read_rss - base, "build_peak": peak_rss() - base,
            "read_traced": read_traced, "kept_rows": kept, "features": source.n_features}


def measure(preset: str, path: Path, trace: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", preset, "--file", str(path)] + (["--trace"] if trace else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="generated once, then reused")
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--child", choices=PRESETS, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.file, args.trace)))
        return
    print(f"machine: {machine()}")
    if not args.file.is_file():
        start = time.perf_counter()
        generate(args.file, full_size=True)
        print(f"generated {args.file} in {time.perf_counter() - start:.1f} s")
    with h5py.File(args.file, "r") as f:
        rows = f["A_dev"].shape[0] + f["A_test"].shape[0]
    print(f"{args.file}: {rows:,} rows, {args.file.stat().st_size / 2 ** 30:.2f} GiB")
    runs: dict[tuple[str, bool], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for preset in args.presets:
            for trace in (False, True):
                runs.setdefault((preset, trace), []).append(measure(preset, args.file, trace))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    ratios = []
    print(f"{'preset':<15} {'read s':>7} {'build s':>8} {'selected f32 MiB':>17} {'kept f32 MiB':>13} "
          f"{'read peak MiB':>14} {'traced MiB':>11} {'read+build peak MiB':>20} {'peak/selected':>14}")
    for preset in args.presets:
        plain, traced = runs[(preset, False)], runs[(preset, True)]
        med = {k: statistics.median(m[k] for m in plain) for k in plain[0]}
        selected = rows * med["features"] * 4
        ratio = med["read_peak"] / selected
        ratios.append(ratio)
        print(f"{preset:<15} {med['read_s']:7.2f} {med['build_s']:8.2f} {selected / MIB:17.1f} "
              f"{med['kept_rows'] * med['features'] * 4 / MIB:13.1f} {med['read_peak'] / MIB:14.1f} "
              f"{statistics.median(m['read_traced'] for m in traced) / MIB:11.1f} "
              f"{med['build_peak'] / MIB:20.1f} {ratio:14.3f}")
    print(f"peak_vs_selected={max(ratios):.3f}")


if __name__ == "__main__":
    main()
