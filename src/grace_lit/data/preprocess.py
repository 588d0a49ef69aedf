"""Dataset-independent preprocessing: operating conditions, standardisation, unit splits, cuts.

``Preprocessing`` is the fitted state a run needs to be applied to new data (feature and condition columns,
the condition map, the scaler per condition, window and caps, the operating settings' training range, whether the
condition is an input); it round-trips through readable JSON exactly.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from grace_lit.errors import GraceError

CONDITION_MODES = ("round", "kmeans")


def unit_slices(unit: np.ndarray) -> list[slice]:
    """Row ranges of consecutive equal unit ids (rows sorted by unit): one slice per unit, in file order."""
    bounds = np.r_[0, np.flatnonzero(np.diff(unit)) + 1, len(unit)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _nearest(points: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and distance to the nearest centre, per row."""
    distance = np.sqrt(((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2))
    index = distance.argmin(axis=1)
    return index, distance[np.arange(len(points)), index]


@dataclass
class Preprocessing:
    """Columns, condition map and per-condition scaler of one run, fitted on its training units only.

    Conditions: none (``conditions`` empty: one global scaler); ``round``: the settings rounded to ``decimals``
    are the condition key, as on C-MAPSS; ``kmeans``: settings divided by their training std, clustered (the
    centres are saved), a row belongs to the nearest centre and is refused beyond ``tolerance`` times the
    largest training distance of that cluster. ``condition_input``: each row's standardised features are followed
    by a one-hot of its condition (its index in ``keys``), so the model sees which regime it is in; here, not in
    a reader, so that grace_lit.predict and the ONNX contract make the same columns from new data.
    """

    unit: str
    time: str
    features: list[str]
    conditions: list[str]
    condition_mode: str
    decimals: list[int]
    window: int
    eval_stride: int
    pad_mode: str
    max_rul: float
    cap_test_rul: bool
    health_thresholds: list[float]
    clusters: int = 0
    seed: int = 0
    tolerance: float = 0.0
    keys: list[list[float]] = field(default_factory=list)  # round: condition keys; kmeans: centres (scaled)
    setting_scale: list[float] = field(default_factory=list)  # kmeans: training std of each setting
    radius: list[float] = field(default_factory=list)  # kmeans: largest training distance per cluster
    mean: list[list[float]] = field(default_factory=list)  # per condition, per feature
    std: list[list[float]] = field(default_factory=list)
    # the operating-setting columns, standardised per condition or not (C-MAPSS: its three settings also when
    # standardised globally; a table: its conditions), and [min, max] of each over the training rows, so that
    # grace_lit.predict refuses data from operating conditions the model never saw whatever the standardisation
    settings: list[str] = field(default_factory=list)
    setting_range: list[list[float]] = field(default_factory=list)
    condition_input: bool = False  # False in a run from before the option: its preprocessing.json lacks the key

    def __post_init__(self) -> None:
        if not self.settings:  # a table's settings are its conditions (and a run from before settings were kept)
            self.settings = list(self.conditions)
        if self.condition_input and not self.conditions:
            raise GraceError("dataset.condition_input=true appends a one-hot of each row's operating condition, but "
                             "this run has no condition map (one global scaler: one condition, a constant input; "
                             "FD001 and FD003 run at one). Fix: dataset.condition_input=false, or give it conditions: "
                             "dataset.per_condition=true (C-MAPSS; FD002 and FD004 have 6) or "
                             "dataset.conditions=[...] (a table).")
        if self.conditions and self.condition_mode not in CONDITION_MODES:
            raise GraceError(f"dataset.condition_mode={self.condition_mode!r} is not one of {CONDITION_MODES}.")
        if self.conditions and self.condition_mode == "round" and len(self.decimals) != len(self.conditions):
            raise GraceError(f"dataset.condition_decimals={list(self.decimals)} needs one entry per condition "
                             f"column {list(self.conditions)}. Fix: give as many decimals as conditions.")

    # ------------------------------------------------------------------ conditions
    def _round(self, settings: np.ndarray) -> np.ndarray:
        return np.stack([np.round(settings[:, i], d) for i, d in enumerate(self.decimals)], axis=1)

    def _fit_groups(self, settings: np.ndarray) -> None:
        if not self.conditions:
            return
        if self.condition_mode == "round":
            self.keys = np.unique(self._round(settings), axis=0).tolist()
            return
        try:
            from sklearn.cluster import KMeans  # optional: only k-means conditions need scikit-learn
        except ImportError as err:
            raise GraceError("dataset.condition_mode=kmeans needs scikit-learn, which is not installed. Fix: pip "
                             "install 'grace-lit[table]' (or scikit-learn), or use condition_mode=round.") from err

        scale = settings.std(axis=0)
        self.setting_scale = np.where(scale > 0, scale, 1.0).tolist()
        scaled = settings / np.asarray(self.setting_scale)
        km = KMeans(n_clusters=self.clusters, n_init=10, random_state=self.seed).fit(scaled)
        order = np.lexsort(km.cluster_centers_.T[::-1])  # centres sorted, so the group numbers are readable
        self.keys = km.cluster_centers_[order].tolist()
        groups, distance = _nearest(scaled, np.asarray(self.keys))
        self.radius = [float(distance[groups == g].max(initial=0.0)) for g in range(self.clusters)]

    def groups(self, settings: np.ndarray, path: str = "", rows: np.ndarray | None = None) -> np.ndarray:
        """Condition index of every row; a row whose condition the training units never showed is refused
        (named as ``path``, row ``rows[i]`` when given)."""
        where = lambda i: f"{path}, row {rows[i]}" if rows is not None else f"row {i + 1}"  # noqa: E731
        if not self.conditions:
            return np.zeros(len(settings), dtype=np.int64)
        keys = np.asarray(self.keys)
        if self.condition_mode == "round":
            rounded = self._round(settings)
            match = (rounded[:, None, :] == keys[None, :, :]).all(axis=2)
            unknown = np.flatnonzero(~match.any(axis=1))
            if unknown.size:
                raise GraceError(f"{where(unknown[0])}: operating condition {rounded[unknown[0]].tolist()} "
                                 f"(columns {self.conditions}) does not occur in the training units. Fix: check "
                                 f"dataset.condition_decimals (now {list(self.decimals)}), or train on units that "
                                 f"cover this condition.")
            return match.argmax(axis=1)
        groups, distance = _nearest(settings / np.asarray(self.setting_scale), keys)
        far = np.flatnonzero(distance > self.tolerance * np.asarray(self.radius)[groups])
        if far.size:
            raise GraceError(f"{where(far[0])}: operating settings {settings[far[0]].tolist()} (columns "
                             f"{self.conditions}) lie farther from every training condition than "
                             f"dataset.condition_tolerance={self.tolerance} times that cluster's radius. Fix: train "
                             f"on units that cover these settings, or raise the tolerance.")
        return groups

    # ------------------------------------------------------------------ scaling
    def fit(self, features: np.ndarray, settings: np.ndarray) -> "Preprocessing":
        """Condition map and z-scoring per condition, from the training rows only."""
        self._fit_groups(settings)
        if self.settings and settings.shape[1] == len(self.settings):
            self.setting_range = np.stack([settings.min(axis=0), settings.max(axis=0)], axis=1).tolist()
        groups = self.groups(settings)
        n_groups = int(groups.max()) + 1
        self.mean = np.stack([features[groups == g].mean(axis=0) for g in range(n_groups)]).tolist()
        std = np.stack([features[groups == g].std(axis=0) for g in range(n_groups)])
        self.std = np.where(std > 0, std, 1.0).tolist()  # a feature constant within a condition carries no signal
        return self

    @property
    def n_inputs(self) -> int:
        """Columns of ``transform``'s output: the model's input width."""
        return len(self.features) + (len(self.keys) if self.condition_input else 0)

    def transform(self, features: np.ndarray, settings: np.ndarray, path: str = "",
                  rows: np.ndarray | None = None) -> np.ndarray:
        """Features standardised per condition; with ``condition_input``, then a one-hot of the condition."""
        groups = self.groups(settings, path, rows)
        scaled = (features - np.asarray(self.mean)[groups]) / np.asarray(self.std)[groups]
        if self.condition_input:
            scaled = np.concatenate([scaled, np.eye(len(self.keys))[groups]], axis=1)
        return scaled.astype(np.float32)

    def rul(self, remaining: np.ndarray, test: bool) -> np.ndarray:
        """Targets: capped at ``max_rul`` (evaluation targets only when ``cap_test_rul``)."""
        capped = np.minimum(remaining, self.max_rul) if self.cap_test_rul or not test else remaining
        return np.asarray(capped, dtype=np.float32)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)  # Python floats: repr round-trips float64 exactly

    @classmethod
    def from_json(cls, text: str) -> "Preprocessing":
        return cls(**json.loads(text))


def default_decimals(settings: np.ndarray, least: float = 0.01) -> list[int | None]:
    """Per operating-setting column, the fewest decimals (0..6, else -1..-6: tens, hundreds, ...) that give each
    cluster of its training values one number of its own: C-MAPSS's [0, 2, 0] on FD002. A cluster: sorted values
    without a gap wider than 1% of the column's range, holding at least ``least`` of the rows (a smaller one, a tail
    of noise, joins its nearer neighbour). A column whose clusters no rounding keeps apart (noise at a few
    recorded levels) is one condition, rounded to a single value; None where not even that exists."""
    out: list[int | None] = []
    for column in np.asarray(settings, dtype=np.float64).T:
        values, counts = np.unique(column, return_counts=True)
        cut = np.flatnonzero(np.diff(values) > 0.01 * (values[-1] - values[0])) + 1
        clusters = [[values[a], values[b - 1], int(counts[a:b].sum())]
                    for a, b in zip(np.r_[0, cut], np.r_[cut, len(values)])]
        while len(clusters) > 1 and min(c[2] for c in clusters) < least * len(column):
            i = min(range(len(clusters)), key=lambda k: clusters[k][2])
            neighbours = [k for k in (i - 1, i + 1) if 0 <= k < len(clusters)]
            j = min(neighbours, key=lambda k: clusters[max(i, k)][0] - clusters[min(i, k)][1])  # the nearer one
            a, b = sorted((i, j))
            clusters[a:b + 1] = [[clusters[a][0], clusters[b][1], clusters[a][2] + clusters[b][2]]]
        low, high = np.array([c[0] for c in clusters]), np.array([c[1] for c in clusters])
        order = [*range(0, 7), *range(-1, -7, -1)]
        fits = [d for d in order if (np.round(low, d) == np.round(high, d)).all()
                and (np.round(high, d)[:-1] < np.round(low, d)[1:]).all()]
        fits = fits or [d for d in order if np.round(values[0], d) == np.round(values[-1], d)]  # one condition
        out.append(fits[0] if fits else None)
    return out


def split_units(units: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of unit ids into (fit, held-out); held-out holds round(fraction * n) units."""
    units = np.sort(np.asarray(units))
    n_out = int(round(fraction * len(units)))
    if fraction > 0 and not 1 <= n_out < len(units):
        raise GraceError(f"protocol.holdout_fraction={fraction} leaves {n_out} of {len(units)} units held out. "
                         f"Fix: choose a fraction in (0, 1) that holds out at least one unit.")
    held = np.sort(np.random.default_rng(seed).choice(units, size=n_out, replace=False))
    return np.setdiff1d(units, held), held


def fold_units(units: np.ndarray, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) for fold ``fold`` of ``folds``: the units, shuffled by ``seed``, in K near-equal groups;
    over the K folds every unit is held out exactly once."""
    units = np.sort(np.asarray(units))
    if not 2 <= folds <= len(units) or not 0 <= fold < folds:
        raise GraceError(f"protocol.folds={folds} protocol.fold={fold}: need 2 <= folds <= {len(units)} (the "
                         f"training units) and 0 <= fold < folds. Fix: e.g. protocol.folds=5 protocol.fold=0.")
    groups = np.array_split(np.random.default_rng(seed).permutation(units), folds)
    held = np.sort(groups[fold])
    return np.setdiff1d(units, held), held


def truncation_lengths(lengths: np.ndarray, window: int, seed: int | list[int], cuts: int = 1) -> np.ndarray:
    """Seeded cut points, (units, cuts), each uniform in [min(window, L), L], so held-out units end before
    failure like the NASA test units do (and the last window's RUL is not always 0)."""
    lengths = np.asarray(lengths)
    low = np.minimum(window, lengths)
    return np.random.default_rng(seed).integers(low[:, None], lengths[:, None] + 1, size=(len(lengths), cuts))
