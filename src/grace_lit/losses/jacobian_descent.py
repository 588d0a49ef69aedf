"""Gradient-manipulation methods (UPGrad, PCGrad, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL, MGDA, DualProj) and RLW
through torchjd: each maps the Gramian of the task gradients on the shared parameters to task weights. As the
methods define it (and torchjd's ``mtl_backward`` does it), the gradient step gives the shared (backbone)
parameters the aggregate sum_i w_i grad L_i and each head its own task's unweighted gradient. RLW is a loss
weighting (Lin et al. 2022 draw weights for the losses): its ``conf/loss/rlw.yaml`` sets ``weights_heads: true``,
so its weights multiply every parameter's task gradient, heads included.

Only the ``loss=`` configs that name a torchjd class import this module, so torchjd stays optional for the others.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torchjd.aggregation import Aggregator, Weighting

from grace_lit.distributed import world_size
from grace_lit.errors import GraceError
from grace_lit.losses.base import Controller, task_names


def gramian_root(gramian: torch.Tensor) -> torch.Tensor:
    """A K x K matrix M with M M^T = G (eigenvectors scaled by the root eigenvalues; rounding's tiny negative
    eigenvalues clamped to 0): a Jacobian with the same Gramian as the task gradients."""
    eigenvalues, eigenvectors = torch.linalg.eigh(gramian)
    return eigenvectors * eigenvalues.clamp_min(0).sqrt()


class JacobianDescent(Controller):
    """A torchjd ``Weighting`` of the Gramian, or a torchjd ``Aggregator`` whose weighting reads the Jacobian.

    ``method`` builds it (a Hydra partial, so a missing optional solver is reported here, before any data is read).
    torchjd has Nash-MTL and RLW (``Random``) as Aggregators only. Their weightings depend on the Jacobian J only
    through J J^T (Nash-MTL solves on G = J J^T and caps |J^T w| = sqrt(w^T G w); RLW reads the task count), so a
    square root of the Gramian gives exactly the weights the whole Jacobian would. ``weights_heads``: false (the
    gradient-manipulation methods) aggregates on the backbone only; true (RLW) weights the losses.
    """

    scope = "shared"

    def __init__(self, method: Callable[[], Weighting | Aggregator], n_tasks: int = 2, weights_heads: bool = False):
        super().__init__(n_tasks)
        self.weights_heads = weights_heads  # False: the heads get their task's own gradient (see the module doc)
        try:
            built = method()
        except ImportError as err:  # torchjd checks its optional solvers (cvxpy, ecos, clarabel) when building
            raise GraceError(f"this loss= method needs optional solvers ({err}). Fix: "
                             "pip install -e '.[jd-solvers]' (or pip install 'grace-lit[jd-solvers]').") from err
        self.reads_jacobian = isinstance(built, Aggregator)
        self.weighting = built.weighting if self.reads_jacobian else built
        self.last_weights = torch.full((n_tasks,), 1.0)

    def forward(self, losses: torch.Tensor, gramian: torch.Tensor) -> tuple[torch.Tensor, None]:
        # a non-finite Gramian (a NaN loss or gradient) would crash the solvers: they get the identity instead and
        # the weights come out NaN, so the non-finite guard stops or skips the step as any other (no host sync)
        finite = torch.isfinite(gramian).all()
        safe = torch.where(finite, gramian, torch.eye(len(gramian), dtype=gramian.dtype, device=gramian.device))
        weights = self.weighting(gramian_root(safe) if self.reads_jacobian else safe).detach()
        weights = weights.to(device=gramian.device, dtype=gramian.dtype)
        weights = torch.where(finite, weights, torch.nan).contiguous()
        if world_size() > 1:  # RLW (and PCGrad's task order for K > 2) draw at random: all ranks take rank 0's
            dist.broadcast(weights, src=0)
        self.last_weights = weights
        return weights, None

    def log_values(self) -> dict[str, torch.Tensor]:
        return {f"weight_{n}": w for n, w in zip(task_names(self.n_tasks), self.last_weights)}
