"""The gradient step: the per-task gradients a controller needs, its task weights, and this batch's share of the
parameter update. Knows nothing of Lightning: the caller passes its backward (``manual_backward``).

A controller asks for the Gramian of the task gradients on a scope (``Controller.gradient_scope()``): "none",
"shared" (all backbone parameters) or "last_shared" (the last backbone layer). ``mode`` chooses how "shared" is
served:

* ``fused`` (default): one VJP per task over all parameters; the Gramian is taken on the shared subset and the
  parameter gradients are assembled as sum_i w_i grad L_i. Exact, two backward passes.
* ``reference``: the spec's three passes: ``autograd.grad`` per task on the shared parameters, then backward of
  the weighted sum.
* ``approx``: the Gramian of the gradients w.r.t. the backbone *output* (one cheap pass through the heads), then
  one backward. Not the spec's GABA: an opt-in approximation.

A loss weighting (``Controller.weights_heads``: GABA, AMNL, GradNorm, Uncertainty, DWA, RLW, ...) gets sum_i w_i
grad L_i on every parameter. A gradient aggregation (the torchjd methods but RLW) gets it on the backbone only, each
head its own task's unweighted gradient, as torchjd's ``mtl_backward`` assigns them: ``fused`` weights the per-task
gradients per parameter; the single-backward paths differentiate the unweighted sum of the losses and replace the
gradient reaching the backbone output (which feeds the heads only) by sum_i w_i dL_i/d(output), one cheap pass
through the heads per task.

Under DDP every rank's controller sees the global batch: ``autograd.grad`` builds the per-task gradients outside
DDP's all-reduce hooks, so they are averaged over ranks here (``grace_lit.distributed``); the single-backward
paths leave the gradient average to DDP. So every rank computes the same weights and applies the same update, as
one process would on the concatenated batches.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from grace_lit.distributed import average_across_ranks, world_size
from grace_lit.errors import GraceError
from grace_lit.losses.base import Controller, cosine, task_names
from grace_lit.models.dual_task import DualTaskModel

GRAD_MODES = ("fused", "reference", "approx")
Grads = Sequence[torch.Tensor | None]  # one task's gradient per tensor; None where the task does not reach it


def gramian(grads: Sequence[Grads]) -> torch.Tensor:
    """G_ij = <grad L_i, grad L_j> over the listed tensors, a missing gradient counting as zero."""
    present = [j for j in range(len(grads[0])) if any(task[j] is not None for task in grads)]
    like = {j: next(task[j] for task in grads if task[j] is not None) for j in present}
    jacobian = torch.stack([torch.cat([(torch.zeros_like(like[j]) if task[j] is None else task[j]).reshape(-1)
                                       for j in present]) for task in grads])
    return jacobian @ jacobian.T


def weighted_sum(grads: Sequence[Grads], weights: torch.Tensor) -> list[torch.Tensor | None]:
    """Per tensor sum_i w_i grads[i] (None where no task reaches it), in a few kernels per task rather than small
    ops per parameter: torch has no public multi-tensor arithmetic, so ``torch._foreach_*`` it is. Out of place:
    autograd may hand one tensor to two parameters (an LSTM's two biases), so scaling in place could scale it
    twice."""
    total: list[torch.Tensor | None] = [None] * len(grads[0])
    for w, task in zip(weights, grads):
        first = [j for j, g in enumerate(task) if g is not None and total[j] is None]
        more = [j for j, g in enumerate(task) if g is not None and total[j] is not None]
        if first:
            for j, g in zip(first, torch._foreach_mul([task[j] for j in first], w)):
                total[j] = g
        if more:
            torch._foreach_add_([total[j] for j in more], torch._foreach_mul([task[j] for j in more], w))
    return total


def add_grads(params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor | None]) -> None:
    """p.grad += g (accumulation); the first batch of a cycle, after zero_grad(set_to_none=True), assigns."""
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g


class GradientStep:
    """One batch's contribution (1/``accumulate``) to the optimizer step's gradient, weighted by the controller."""

    def __init__(self, model: DualTaskModel, controller: Controller, mode: str, accumulate: int):
        if mode not in GRAD_MODES:
            raise GraceError(f"grad_mode={mode} is unknown. Fix: grad_mode={' | '.join(GRAD_MODES)} (fused is the "
                             f"default).")
        self.model, self.controller, self.mode, self.accumulate = model, controller, mode, accumulate
        self.last_gramian: torch.Tensor | None = None  # of the last call, if it measured one

    def __call__(self, losses: torch.Tensor, synced: torch.Tensor, features: torch.Tensor,
                 backward: Callable[[torch.Tensor], None]) -> None:
        """``losses``: this rank's task losses (graph attached); ``synced``: the global batch's, detached (what the
        controller sees); ``features``: the backbone output; ``backward``: differentiates a scalar into .grad."""
        scope = self.controller.gradient_scope()
        if scope == "shared" and self.mode == "fused":
            return self._fused(losses, synced)
        self.last_gramian = None if scope == "none" else self._measure(losses, scope, features)
        weights, aux = self.controller(synced, self.last_gramian)
        hook = None
        if self.controller.weights_heads:
            objective = (weights * losses).sum()  # this rank's losses: DDP averages the gradients in ``backward``
        else:  # each head its task's gradient, the backbone the weighted one (through the hook on its output)
            hook = features.register_hook(self._backbone_gradient(losses, weights.detach(), features))
            objective = losses.sum()
            if weights.requires_grad:  # a controller's own parameters, from its weights alone
                objective = objective + (weights * losses.detach()).sum()
        try:
            backward((objective if aux is None else objective + aux) / self.accumulate)
        finally:
            if hook is not None:
                hook.remove()

    def _backbone_gradient(self, losses: torch.Tensor, weights: torch.Tensor, features: torch.Tensor
                           ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A hook for the backbone output's gradient under ``backward(losses.sum() / accumulate)``: it replaces
        sum_i dL_i/dz / accumulate (what reaches z) by sum_i w_i dL_i/dz / accumulate. This rank's per-task
        gradients: under DDP the backward's all-reduce averages the parameter gradients as for a loss weighting."""
        per_task = torch.stack([torch.autograd.grad(loss, [features], retain_graph=True)[0] for loss in losses])
        w = weights.to(per_task.device).reshape(-1, *[1] * features.dim())
        # in the weights' precision (the Gramian's), then the activation's (bfloat16 under bf16-mixed)
        weighted = (per_task.to(w.dtype) * w).sum(0).div_(self.accumulate).to(per_task.dtype)
        return lambda grad: weighted

    def _measure(self, losses: torch.Tensor, scope: str, features: torch.Tensor) -> torch.Tensor:
        """The global batch's Gramian on ``scope``, identical on every rank (graph retained).

        Parameter gradients are averaged over ranks before the products. Gradients w.r.t. activations are per
        sample: the global loss is the mean of the W ranks' losses, so its gradient on this rank's activations is
        1/W of the local one and the products add up over ranks: G = mean_r(G_r) / W.
        """
        if scope == "shared" and self.mode == "approx":
            grads = [torch.autograd.grad(loss, [features], retain_graph=True) for loss in losses]
            local, ranks = gramian(grads), world_size()
            return local if ranks == 1 else average_across_ranks([local])[0] / ranks
        inputs = self.model.shared_parameters() if scope == "shared" else self.model.last_shared_parameters()
        return gramian([average_across_ranks(torch.autograd.grad(loss, inputs, retain_graph=True,
                                                                 allow_unused=True)) for loss in losses])

    def _fused(self, losses: torch.Tensor, synced: torch.Tensor) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        shared = {id(p) for p in self.model.shared_parameters()}
        on_backbone = [j for j, p in enumerate(params) if id(p) in shared]
        last = len(losses) - 1
        grads = [average_across_ranks(torch.autograd.grad(loss, params, retain_graph=i < last, allow_unused=True))
                 for i, loss in enumerate(losses)]
        self.last_gramian = gramian([[task[j] for j in on_backbone] for task in grads])
        weights, aux = self.controller(synced, self.last_gramian)
        scale = weights.detach() / self.accumulate
        if self.controller.weights_heads:
            add_grads(params, weighted_sum(grads, scale))
        else:  # the backbone gets the aggregate; each head its task's gradient (a task never reaches the other head)
            on_heads = [j for j, p in enumerate(params) if id(p) not in shared]
            for subset, w in ((on_backbone, scale), (on_heads, torch.full_like(scale, 1 / self.accumulate))):
                add_grads([params[j] for j in subset], weighted_sum([[task[j] for j in subset] for task in grads], w))
        if weights.requires_grad or aux is not None:  # the controller's own parameters
            # from the global losses: the same gradient on every rank. autograd.grad, not backward(): DDP's hooks
            # on these parameters alone would leave its reduction half done and fail the next step
            objective = (weights * synced).sum()
            own = [p for p in self.controller.parameters() if p.requires_grad]
            add_grads(own, torch.autograd.grad((objective if aux is None else objective + aux) / self.accumulate,
                                               own))

    def log_values(self) -> dict[str, torch.Tensor]:
        """The cosine between the task gradients where the last call measured them (the conflict spec 002's
        diagnostics measure before training, here as it evolves)."""
        if self.last_gramian is None:
            return {}
        names = task_names(len(self.last_gramian))
        return {f"cos_{names[i]}_{names[j]}": cosine(self.last_gramian, i, j)
                for i in range(len(names)) for j in range(i + 1, len(names))}
