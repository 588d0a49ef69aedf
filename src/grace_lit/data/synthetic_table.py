"""A small run-to-failure fleet as a messy CSV, for the README's "Your own data" example and the tests.

``python -m grace_lit.data.synthetic_table OUT_DIR`` writes ``fleet.csv`` (pumps run to failure), ``test.csv``
(other pumps, cut before failure) and ``test_rul.csv`` (their life left after the last row). Like real
tables: string unit ids, rows of all pumps interleaved in time order, irregular time steps (hours), and a
continuous operating setting (``load``) drawn around three regimes, so conditions need k-means.

Each pump wears out along an exponential health curve; temperature, pressure and vibration follow it, shifted
by the load regime, plus noise. Nothing here models a real machine: it is only a table with a learnable RUL.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

LOADS = (0.3, 0.6, 0.9)  # load regimes (fraction of rated power)
LIFE = (150.0, 320.0)  # hours to failure, uniform
STEPS = (1.0, 2.0, 3.0)  # hours between two readings, drawn per row
# per feature: level, effect of load, effect of wear, noise
SIGNALS = {"temperature": (60.0, 25.0, 30.0, 0.8), "pressure": (4.0, 3.0, -1.5, 0.05),
           "vibration": (1.0, 0.5, 2.5, 0.05)}


def pump(name: str, rng: np.random.Generator, cut: bool) -> tuple[pd.DataFrame, float]:
    """One pump's rows (to failure, or cut at a random hour) and its life left after the last row."""
    life = rng.uniform(*LIFE)
    time = np.cumsum(rng.choice(STEPS, size=int(life)))
    time = time[time <= life]
    end = rng.integers(len(time) // 4, len(time)) + 1 if cut else len(time)
    time = time[:end]
    regime = rng.integers(len(LOADS), size=len(time))
    load = np.asarray(LOADS)[regime] + rng.normal(0, 0.01, len(time))
    wear = np.expm1(3 * time / life) / np.expm1(3)  # 0 when new, 1 at failure
    frame = pd.DataFrame({"pump": name, "hours": time, "load": load.round(4)})
    for column, (level, by_load, by_wear, noise) in SIGNALS.items():
        frame[column] = (level + by_load * load + by_wear * wear + rng.normal(0, noise, len(time))).round(4)
    return frame, float(life - time[-1]) if cut else 0.0


def generate(out_dir: Path, units: int = 40, test_units: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = [pump(f"pump-{i:03d}", rng, cut=False)[0] for i in range(units)]
    test = [pump(f"pump-{i:03d}", rng, cut=True) for i in range(units, units + test_units)]
    interleave = lambda parts: pd.concat(parts).sort_values("hours", kind="stable")  # noqa: E731
    interleave(train).to_csv(out_dir / "fleet.csv", index=False)
    interleave([f for f, _ in test]).to_csv(out_dir / "test.csv", index=False)
    pd.DataFrame({"pump": [f["pump"].iloc[0] for f, _ in test], "rul": [r for _, r in test]}).to_csv(
        out_dir / "test_rul.csv", index=False)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--units", type=int, default=40, help="pumps run to failure (fleet.csv)")
    parser.add_argument("--test-units", type=int, default=10, help="pumps cut before failure (test.csv)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(generate(args.out_dir, args.units, args.test_units, args.seed))


if __name__ == "__main__":
    main()
