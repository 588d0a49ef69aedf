"""A synthetic N-CMAPSS DS02 file with exactly the real file's schema, for tests and benchmarks.

The real file (2.3 GiB) is not shipped with the package; this one has the same 17 datasets, names, dtypes,
dev/test units, per-unit flight classes, the ``hs`` switch and the ``Y`` countdown, rows sorted by unit, cycle
and second. Sensors respond to the flight conditions and drift with a degradation that accelerates after the
``hs`` switch, so a model has something to learn. Small by default; ``--full-size`` writes the real row counts
(5,263,447 dev + 1,253,743 test) over full-length units (59 to 89 cycles), for the reader benchmark.

    python -m grace_lit.data.synthetic_ncmapss OUT.h5 [--full-size] [--cycles N] [--flight-rows R] [--seed S]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import h5py
import numpy as np

from grace_lit.data.ncmapss import COLUMNS, DTYPES, SPLITS, WIDTHS

UNITS = {"dev": (2, 5, 10, 16, 18, 20), "test": (11, 14, 15)}
REAL_CYCLES = {2: 75, 5: 89, 10: 82, 16: 63, 18: 71, 20: 66, 11: 59, 14: 76, 15: 67}  # full size: dev RUL max 88
REAL_ROWS = {"dev": 5_263_447, "test": 1_253_743}
# the small default: 10 flights per unit, enough for 50-row windows at 0.1 Hz even on short-flight units
SMALL_CYCLES, SMALL_FLIGHT_ROWS = 10, 150
FLIGHT_CLASS = {2: 3, 5: 2, 10: 2, 16: 1, 18: 1, 20: 1, 11: 2, 14: 1, 15: 3}  # Fc: 1 short, 2 medium, 3 long
# flight length per class, as a range of multiples of ``flight_rows``
CLASS_LENGTH = {1: (0.35, 0.65), 2: (0.8, 1.2), 3: (1.4, 1.9)}
CLASS_ALTITUDE_FT = {1: 18_000.0, 2: 25_000.0, 3: 32_000.0}  # cruise altitude
ALTITUDE_SPREAD_FT = 1_500.0  # flight-to-flight spread of the cruise altitude
CLIMB_SHARE = 0.2  # climb and descent each take this share of a flight
MACH = (0.25, 0.75)  # on the ground, at cruise
TRA_DEG = (75.0, 60.0, 35.0)  # throttle in climb, cruise, descent
HEALTHY_SHARE = (0.2, 0.4)  # the hs switch falls in this share of a unit's life
NORMAL_WEAR = 0.1  # degradation reached at the hs switch; 1 at the last cycle
CONDITION_EFFECT = 0.3  # largest relative response of a sensor to altitude, Mach or throttle
DEGRADATION_EFFECT = 0.05  # largest relative drift of a sensor at end of life
NOISE = 0.005  # relative measurement noise
# T: the degradation modifiers (HPT and LPT wear, as in DS02); the other modules stay at 0
T_GAIN = {"HPT_eff_mod": -0.03, "HPT_flow_mod": 0.02, "LPT_eff_mod": -0.02, "LPT_flow_mod": 0.015}


def flight_lengths(cycles: dict[int, int], flight_rows: int, rng: np.random.Generator,
                   total: int | None = None) -> dict[int, np.ndarray]:
    """Seconds per flight of each unit by its flight class; scaled to ``total`` rows in all if given."""
    lengths = {u: flight_rows * rng.uniform(*CLASS_LENGTH[FLIGHT_CLASS[u]], size=n) for u, n in cycles.items()}
    if total is not None:
        scale = total / sum(x.sum() for x in lengths.values())
        lengths = {u: x * scale for u, x in lengths.items()}
    out = {u: np.maximum(np.round(x), 1).astype(np.int64) for u, x in lengths.items()}
    if total is not None:  # rounding leftovers go to the last flight
        out[max(out)][-1] += total - sum(int(x.sum()) for x in out.values())
    return out


def degradation(n_cycles: int, switch: int) -> np.ndarray:
    """Per cycle 1..n: slow normal wear up to the hs switch, then accelerating to 1 at the last cycle."""
    cycle = np.arange(1, n_cycles + 1, dtype=np.float64)
    after = np.clip((cycle - switch) / max(n_cycles - switch, 1), 0.0, 1.0)
    return np.where(cycle < switch, NORMAL_WEAR * (cycle - 1) / switch, NORMAL_WEAR + (1 - NORMAL_WEAR) * after ** 1.5)


class SensorModel:
    """Seeded per-column base level, responses to the flight conditions and degradation gain."""

    def __init__(self, rng: np.random.Generator):
        n = len(COLUMNS["X_s"]) + len(COLUMNS["X_v"])
        self.base = 10 ** rng.uniform(0.5, 3.5, size=n)
        self.effects = rng.uniform(-CONDITION_EFFECT, CONDITION_EFFECT, size=(3, n))
        self.gain = rng.uniform(-DEGRADATION_EFFECT, DEGRADATION_EFFECT, size=n)

    def flight(self, length: int, flight_class: int, wear: float, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
        """(W (length, 4), X_s + X_v (length, 28)) of one flight: climb, cruise, descent."""
        phase = np.arange(length) / length
        profile = np.clip(np.minimum(phase, 1 - phase) / CLIMB_SHARE, 0.0, 1.0)
        cruise = CLASS_ALTITUDE_FT[flight_class] + ALTITUDE_SPREAD_FT * rng.standard_normal()
        alt = cruise * profile
        mach = MACH[0] + (MACH[1] - MACH[0]) * profile + NOISE * rng.standard_normal(length)
        climb, cruise_tra, descent = TRA_DEG
        tra = np.where(phase < CLIMB_SHARE, climb, np.where(phase > 1 - CLIMB_SHARE, descent, cruise_tra))
        tra = tra * (1 + NOISE * rng.standard_normal(length))
        t2 = 518.67 * (1 - 6.875e-6 * alt) * (1 + 0.2 * mach ** 2)  # standard atmosphere, ram rise (Rankine)
        conditions = np.stack([profile, mach, tra / climb], axis=1)
        level = self.base * (1 + conditions @ self.effects) * (1 + self.gain * wear)
        sensors = level * (1 + NOISE * rng.standard_normal(level.shape))
        return np.stack([alt, mach, tra, t2], axis=1), sensors


def generate(path: str | Path, cycles: int | None = SMALL_CYCLES, flight_rows: int = SMALL_FLIGHT_ROWS, seed: int = 0,
             full_size: bool = False) -> Path:
    """Write the file (atomically: a temporary sibling renamed into place) and return its path.

    ``cycles``: flights per unit (None: the full-size counts); ``flight_rows``: seconds of a medium flight;
    ``full_size``: the real row counts over units of 59 to 89 cycles (``cycles`` and ``flight_rows`` ignored).
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    model = SensorModel(rng)
    n_x_s = len(COLUMNS["X_s"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same directory: the rename is atomic
    try:
        with h5py.File(tmp, "w") as f:
            for group, names in COLUMNS.items():
                f.create_dataset(f"{group}_var", data=np.array(names, dtype="S"))
            for split in SPLITS:
                per_unit = {u: REAL_CYCLES[u] if full_size or cycles is None else cycles for u in UNITS[split]}
                lengths = flight_lengths(per_unit, flight_rows, rng, REAL_ROWS[split] if full_size else None)
                n_rows = sum(int(x.sum()) for x in lengths.values())
                out = {g: f.create_dataset(f"{g}_{split}", shape=(n_rows, WIDTHS[g]), dtype=d)
                       for g, d in DTYPES.items()}
                row = 0
                for unit, flights in lengths.items():
                    n_cycles = len(flights)
                    switch = int(np.clip(round(rng.uniform(*HEALTHY_SHARE) * n_cycles), 2, n_cycles))
                    wear = degradation(n_cycles, switch)
                    for cycle, length in enumerate(flights.tolist(), start=1):
                        w, x = model.flight(length, FLIGHT_CLASS[unit], wear[cycle - 1], rng)
                        rows = slice(row, row + length)
                        out["W"][rows], out["X_s"][rows], out["X_v"][rows] = w, x[:, :n_x_s], x[:, n_x_s:]
                        theta = [T_GAIN.get(name, 0.0) * wear[cycle - 1] for name in COLUMNS["T"]]
                        out["T"][rows] = np.broadcast_to(theta, (length, WIDTHS["T"]))
                        out["Y"][rows] = np.full((length, WIDTHS["Y"]), n_cycles - cycle, dtype=np.int64)
                        aux = [unit, cycle, FLIGHT_CLASS[unit], float(cycle < switch)]  # hs: 1 while healthy
                        out["A"][rows] = np.broadcast_to(aux, (length, WIDTHS["A"]))
                        row += length
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the .h5 file to write")
    parser.add_argument("--full-size", action="store_true", help="the real row counts (6.5 M rows, 2.3 GiB)")
    parser.add_argument("--cycles", type=int, default=SMALL_CYCLES, help="flights per unit (not with --full-size)")
    parser.add_argument("--flight-rows", type=int, default=SMALL_FLIGHT_ROWS, help="seconds of a medium flight")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = generate(args.out, cycles=args.cycles, flight_rows=args.flight_rows, seed=args.seed,
                   full_size=args.full_size)
    with h5py.File(out, "r") as f:
        print(f"{out}: {f['A_dev'].shape[0]:,} dev rows, {f['A_test'].shape[0]:,} test rows, "
              f"{out.stat().st_size / 2 ** 30:.2f} GiB")


if __name__ == "__main__":
    main()
