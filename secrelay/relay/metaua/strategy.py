"""The MetaUA server: learnable layer-wise aggregation of the round's sums.

:class:`MetaUAStrategy` holds w and θ = (s, θ_α), sends θ_α with the model, and
turns each round's named sums into the new model and one delayed meta-step on θ
(:mod:`secrelay.relay.metaua.maths`). It states the user-level DP release of its
sums (:meth:`MetaUAStrategy.release_spec`) so any sum protocol and DP wrapper fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from protocols.errors import InvalidParameterError
from secrelay.federated.client import (
    ClientProgram,
    ContributionRule,
    DeviceTask,
    KeySelector,
    LocalResult,
    LocalTrainer,
    ModelSpec,
    UpdateTransform,
)
from secrelay.federated.release import ReleaseSpec
from secrelay.federated.strategies import Strategy
from secrelay.relay.metaua.attributes import THETA_ALPHA_BOUND
from secrelay.relay.metaua.device import GLOBAL_KEY, THETA_ALPHA_KEY, MetaUAProgram
from secrelay.relay.metaua.layers import LayerPartition
from secrelay.relay.metaua.maths import (
    MetaUASums,
    aggregate_from_sums,
    meta_gradient_from_sums,
    server_step,
)
from secrelay.relay.metaua.options import MetaUAOptions

__all__ = ["MetaUAStrategy"]


@dataclass(frozen=True)
class _NoRule(ContributionRule):
    """MetaUA devices contribute through :class:`MetaUAProgram` (it needs g_k and z_k,
    which a plain :class:`LocalResult` does not carry)."""

    def contribute(self, result: LocalResult, task: DeviceTask) -> dict[str, np.ndarray]:
        raise InvalidParameterError("MetaUA contributions come from MetaUAProgram.run()")


class MetaUAStrategy(Strategy):
    """Learnable layer-wise aggregation with a one-round-delayed meta-gradient.

    The server holds ``w`` (``models["global"]``), θ = (s, θ_α), the server
    optimizer's state and, from the previous round, (w^{t−1}, its sums, the θ
    they were computed with, the optimizer state before that step). Each
    :meth:`apply` (round t):

    1. if a previous round is stored: meta-gradient ∂(ḡ^t · w^t)/∂θ^{t−1} from the
       stored sums and ḡ^t = Σg_k/Σ1 of this round, one SGD step on θ (applied
       to the current θ, the online delayed update);
    2. aggregate this round's sums with the θ the devices used (the one they
       downloaded), take the server-optimizer step, store this round;
    3. from the next download on, devices get the new θ_α.
    """

    name: ClassVar[str] = "metaua"

    def __init__(self, model_spec: ModelSpec, options: MetaUAOptions | None = None) -> None:
        super().__init__()
        self.options = options or MetaUAOptions()
        self.model_spec = model_spec
        self.partition = LayerPartition.from_model(model_spec.build())
        self._layer_of = self.partition.layer_of()
        n_layers, m = self.partition.num_layers, len(self.options.attributes)
        self.theta_s = np.full(n_layers, _logit(self.options.server_scale_init))
        self.theta_alpha = np.zeros((n_layers, m))
        self.opt_state: dict[str, np.ndarray] = {}
        self.previous: dict[str, Any] | None = None
        # Under user-level DP the sum `e` is noisy: it is floored at 3 noise
        # standard deviations before dividing by it (set_release_noise).
        self.e_floor = 0.0

    # --- device side ----------------------------------------------------------------
    def contribution_rule(self) -> ContributionRule:
        return _NoRule()

    def client_program(
        self,
        model: ModelSpec,
        trainer: LocalTrainer,
        *,
        selector: KeySelector | None = None,
        transforms: Sequence[UpdateTransform] = (),
    ) -> ClientProgram:
        o = self.options
        return MetaUAProgram(
            model=model,
            trainer=trainer,
            partition=self.partition,
            attributes=o.attributes,
            query_fraction=o.query_fraction,
            train_on=o.train_on,
            weighting=o.weighting,
            transforms=tuple(transforms),
        )

    def download(self, round: int) -> dict[str, np.ndarray]:
        out = super().download(round)
        theta = self.theta_alpha.astype(np.float32).ravel()
        theta.setflags(write=False)
        out[THETA_ALPHA_KEY] = theta
        return out

    def release_spec(self, clipping_norm: float) -> ReleaseSpec | None:
        """User-level DP release of the MetaUA sums (:class:`MetaUAOptions`, ``dp_*``).

        Every summed name is noised with a bound from the update's clipping norm C
        and the options' G, Z, E (the meta-learning sums with share
        ``dp_meta_share``); ``count`` (1 per device) is public. Needs uniform
        base weights (sample counts are data): ``None`` otherwise.
        """
        o = self.options
        if o.weighting != "uniform":
            return None
        c, g = float(clipping_norm), float(o.dp_grad_bound)
        z, e = float(o.dp_attribute_bound), float(o.dp_weight_bound)
        d, n_layers, m = self.partition.size, self.partition.num_layers, len(o.attributes)
        root_l = float(np.sqrt(n_layers))
        return ReleaseSpec(
            noised=(
                ("delta_e", c * e),
                ("delta_ez", c * e * z),
                ("e", e * root_l),
                ("ez", e * root_l * z),
                ("grad", g),
            ),
            public_counts=("count",),
            shapes=(
                ("delta_e", (d,)),
                ("delta_ez", (m, d)),
                ("e", (n_layers,)),
                ("ez", (n_layers, m)),
                ("grad", (d,)),
            ),
            weights=tuple((name, float(o.dp_meta_share)) for name in ("delta_ez", "ez", "grad")),
        )

    def set_release_noise(self, noise_std: Mapping[str, float]) -> None:
        if "e" in noise_std:
            self.e_floor = 3.0 * float(noise_std["e"])

    @property
    def server_scale(self) -> np.ndarray:
        """θ_s per layer, in (0, 1)."""
        return np.asarray(1.0 / (1.0 + np.exp(-self.theta_s)))

    # --- server side ----------------------------------------------------------------
    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        o = self.options
        m = len(o.attributes)
        if self.e_floor > 0 and "e" in sums:
            # Post-processing of a noisy release: never divide by a noise-sized `e`.
            sums = {**sums, "e": np.maximum(np.asarray(sums["e"], dtype=np.float64), self.e_floor)}
        cur = MetaUASums.from_sums(sums, self.partition, m)
        w = np.asarray(self.models[GLOBAL_KEY], dtype=np.float64)
        stats: dict[str, float] = {}
        new_s, new_alpha = self.theta_s.copy(), self.theta_alpha.copy()
        if (
            self.previous is not None
            and cur.count > 0
            and (o.learn_weights or o.learn_server_scale)
        ):
            prev = self.previous
            gbar = cur.grad / cur.count if o.query_reduction == "mean" else cur.grad
            gs, ga = meta_gradient_from_sums(
                prev["sums"],
                gbar,
                prev["theta_s"],
                prev["theta_alpha"],
                prev["w"],
                prev["state"],
                self._layer_of,
                **o.optimizer_kwargs(),
            )
            if o.meta_grad_clip > 0:
                gs = _clip(gs, o.meta_grad_clip)
                ga = _clip(ga, o.meta_grad_clip)
            stats["meta_grad_norm_s"] = float(np.linalg.norm(gs))
            stats["meta_grad_norm_alpha"] = float(np.linalg.norm(ga))
            if o.learn_server_scale:
                new_s = self.theta_s - o.meta_lr * gs
            if o.learn_weights:
                new_alpha = np.clip(
                    self.theta_alpha - o.meta_lr * ga, -THETA_ALPHA_BOUND, THETA_ALPHA_BOUND
                )
        # Aggregate this round with the θ the devices used (what they downloaded).
        used_alpha = self.theta_alpha.astype(np.float32).astype(np.float64)
        delta = aggregate_from_sums(cur, self.theta_s, self._layer_of)
        step, state = server_step(torch.as_tensor(delta), self.opt_state, **o.optimizer_kwargs())
        self.previous = {
            "sums": cur,
            "theta_s": self.theta_s.copy(),
            "theta_alpha": used_alpha,
            "w": w.copy(),
            "state": {k: v.copy() for k, v in self.opt_state.items()},
        }
        self.opt_state = {k: v.numpy().copy() for k, v in state.items()}
        self._set(GLOBAL_KEY, w + step.numpy())
        self.theta_s, self.theta_alpha = new_s, new_alpha
        scale = self.server_scale
        stats.update(
            {
                "update_norm": float(np.linalg.norm(step.numpy())),
                "theta_s_mean": float(scale.mean()),
                "theta_s_min": float(scale.min()),
                "theta_s_max": float(scale.max()),
                "theta_alpha_mean": float(self.theta_alpha.mean()),
                "query_loss_grad_norm": float(np.linalg.norm(cur.grad / max(cur.count, 1.0))),
            }
        )
        return stats

    # --- persistence ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        prev = None
        if self.previous is not None:
            prev = {**self.previous, "sums": dataclasses.asdict(self.previous["sums"])}
        return {
            **super().state_dict(),
            "theta_s": self.theta_s.copy(),
            "theta_alpha": self.theta_alpha.copy(),
            "opt_state": {k: v.copy() for k, v in self.opt_state.items()},
            "previous": prev,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.theta_s = np.asarray(state["theta_s"], dtype=np.float64).copy()
        self.theta_alpha = np.asarray(state["theta_alpha"], dtype=np.float64).copy()
        self.opt_state = {k: np.asarray(v).copy() for k, v in state["opt_state"].items()}
        prev = state.get("previous")
        if prev is None:
            self.previous = None
        else:
            self.previous = {**prev, "sums": MetaUASums(**prev["sums"])}


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def _clip(g: np.ndarray, bound: float) -> np.ndarray:
    n = float(np.linalg.norm(g))
    return g * (bound / n) if n > bound else g
