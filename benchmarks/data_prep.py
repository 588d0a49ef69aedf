"""Data preparation time per C-MAPSS subset, as a training run does it (conf/dataset/FD00x.yaml, protocol
paper): read + check the text files (``load``), then standardise and cut the windows (``prep``).

Every round starts from a fresh cache directory: the bundled archive is extracted and its SHA-256 sums are
verified (timed separately: ``verify`` is timed on its own, ``extract`` is the rest of ``ensure_extracted``).
Each subset is then prepared twice: ``cold`` (its first read after extraction) and ``cached`` (again). The
last line is ``fd004_cold_s=<extract + verify + load + prep> fd004_prep_s=<load + prep, cached>``.

    .venv/bin/python benchmarks/data_prep.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
from hydra.utils import instantiate

from common import add_options, apply_options, compose_config, machine, now
from grace_lit.data.archive import ensure_extracted, expected_checksums, verify
from grace_lit.data.cmapss import SUBSETS


def extract(cache: Path) -> dict[str, float]:
    start = now()
    directory = ensure_extracted(cache)
    total = now() - start
    start = now()
    verify(directory, expected_checksums())
    checked = now() - start
    return {"extract": total - checked, "verify": checked}


def prepare(subset: str, cache: Path) -> dict[str, float]:
    cfg = compose_config(f"dataset={subset}", f"paths.data_dir={cache}")
    start = now()
    source = instantiate(cfg.dataset)
    loaded = now()
    source.build(source.train_units(), np.array([], dtype=np.int64), cfg.seed)
    return {"load": loaded - start, "prep": now() - loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    add_options(parser)
    args = parser.parse_args()
    apply_options(args)
    print(f"machine: {machine()}")
    times: dict[tuple[str, str, str], list[float]] = {}
    for r in range(args.rounds):
        cache = Path(tempfile.mkdtemp(prefix="grace-lit-cache-"))
        try:
            for key, t in extract(cache).items():
                times.setdefault(("archive", "cold", key), []).append(t)
            for state in ("cold", "cached"):
                for subset in SUBSETS:
                    for key, t in prepare(subset, cache).items():
                        times.setdefault((subset, state, key), []).append(t)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    archive = med[("archive", "cold", "extract")] + med[("archive", "cold", "verify")]
    print(f"archive (all four subsets, once per cache dir): extract {med[('archive', 'cold', 'extract')]:.3f} s, "
          f"verify {med[('archive', 'cold', 'verify')]:.3f} s")
    print(f"{'subset':<7} {'state':<7} {'load s':>7} {'prep s':>7} {'total s':>8} {'with archive s':>15}")
    for subset in SUBSETS:
        for state in ("cold", "cached"):
            load, prep = med[(subset, state, "load")], med[(subset, state, "prep")]
            cold = f"{archive + load + prep:15.3f}" if state == "cold" else ""
            print(f"{subset:<7} {state:<7} {load:7.3f} {prep:7.3f} {load + prep:8.3f} {cold}")
    fd004 = med[("FD004", "cold", "load")] + med[("FD004", "cold", "prep")]
    print(f"fd004_cold_s={archive + fd004:.3f} "
          f"fd004_prep_s={med[('FD004', 'cached', 'load')] + med[('FD004', 'cached', 'prep')]:.3f}")


if __name__ == "__main__":
    main()
