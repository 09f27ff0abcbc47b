"""Live weight merging for serving: a module's weights moved along the lerp path in place, without a reload.

Library module (no command); the demo (`musicgen-cfg demo`, app/engine.py) moves lam with a slider. The
rule is merging/methods.py's lerp (torch.lerp), written into the module's own parameter storage.
"""

from collections.abc import Mapping

import torch

from merging.methods import check_equal_non_float, check_same_tensors, dtype_name, make_recipe
from musicgen_cfg.errors import UserError


class LiveMerge:
    """Holds theta_q and theta_d next to a live module and rewrites its weights to theta(lam) in place.

    The endpoint tensors are held on each parameter's device and dtype: one already there is held as
    it is (handed over, not copied: the caller must not modify it afterwards), one elsewhere is
    converted once, and one that shares memory with the module's weights (e.g. the module's own
    state_dict() as theta_q) is copied. So memory is 3x the merged weights, not 3x plus the caller's
    endpoints. `set_lambda` then writes torch.lerp(q, d, lam) into the existing parameter
    storage: no allocation, no reload, and anything holding the parameters (optimizers, compiled
    graphs, the sampler) keeps seeing them. Entries of the state dicts may be parameters or float
    buffers of the module; every parameter of the module must be covered. Not thread-safe: call
    `set_lambda` between generations, never while a forward pass is reading the weights.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        quality: Mapping[str, torch.Tensor],
        diversity: Mapping[str, torch.Tensor],
        lam: float = 0.0,
        allow_extrapolation: bool = False,
    ):
        check_same_tensors(
            {
                "quality": {n: (tuple(t.shape), t.dtype) for n, t in quality.items()},
                "diversity": {n: (tuple(t.shape), t.dtype) for n, t in diversity.items()},
            }
        )
        targets = {name: t.detach() for name, t in module.state_dict(keep_vars=True).items()}  # share storage
        for name, _ in module.named_parameters():
            if name not in quality:
                raise UserError(f"module parameter {name} is missing from the quality/diversity state dicts")
        for name, q in quality.items():  # check everything before the module is touched
            target = targets.get(name)
            if target is None:
                raise UserError(
                    f"tensor {name} of the state dicts is not a parameter or buffer of the module"
                )
            if tuple(target.shape) != tuple(q.shape):
                raise UserError(
                    f"tensor {name} has shape {list(q.shape)} in the state dicts but {list(target.shape)} in the module"
                )
            if target.is_floating_point() != q.is_floating_point():
                raise UserError(
                    f"tensor {name} is {dtype_name(q.dtype)} in the state dicts but {dtype_name(target.dtype)} in the module"
                )
            if not q.is_floating_point():
                check_equal_non_float(name, {"quality": q, "diversity": diversity[name]})
        live = {t.untyped_storage().data_ptr() for t in targets.values()}

        def held(tensor: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            # set_lambda writes the module's weights, so an endpoint must never share their memory
            tensor = tensor.detach().to(device=target.device, dtype=target.dtype)
            return tensor.clone() if tensor.untyped_storage().data_ptr() in live else tensor

        self._triples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for name, q in quality.items():
            target = targets[name]
            if not q.is_floating_point():  # integer/bool entries cannot move with lam: set once
                target.copy_(q)
                continue
            self._triples.append((target, held(q, target), held(diversity[name], target)))
        self.allow_extrapolation = allow_extrapolation
        self._lam: float | None = None
        self.set_lambda(lam)

    @property
    def lam(self) -> float:
        """The lam the module's weights currently hold."""
        return self._lam

    @torch.no_grad()
    def set_lambda(self, lam: float) -> None:
        """Rewrite the module's weights to (1 - lam) theta_q + lam theta_d; a no-op if lam is unchanged."""
        make_recipe("lerp", 2, lam=lam, allow_extrapolation=self.allow_extrapolation)
        lam = float(lam)
        if lam == self._lam:
            return
        for target, q, d in self._triples:
            torch.lerp(q, d, lam, out=target)
        self._lam = lam
