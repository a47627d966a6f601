"""Server-side aggregation strategies, all expressed through named sums.

Every strategy here only needs *sums* of per-device contributions, so any
:class:`~secrelay.federated.aggregation.SumProtocol` (plaintext or secure
aggregation) can deliver its input, and a privacy wrapper can clip contributions
on the device and noise the sums on the server without the strategy knowing.

=================  ==========================================  =====================
strategy           device contributes                          server update
=================  ==========================================  =====================
FedAvg / FedProx   ``delta`` = w_k·Δ_k, ``weight`` = w_k       w += η·Σdelta/Σweight
FedAdagrad/FedAdam same                                        Reddi et al. 2021
FedNova            n_k·Δ_k/a_k, n_k·a_k, n_k                   Wang et al. 2020
Clustered          the above in the slot of the device's key   one FedAvg per key
Standalone         nothing                                     none (personal models)
=================  ==========================================  =====================

(w_k = n_k, the device's train size, for sample weighting, or 1 for uniform.)
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from protocols.errors import InvalidParameterError
from protocols.registry import Registry
from secrelay.federated.aggregation import SumResult
from secrelay.federated.client import (
    ClientProgram,
    ContributionRule,
    DeviceTask,
    FixedKey,
    KeySelector,
    LocalResult,
    LocalTrainer,
    LocalTrainingProgram,
    ModelSpec,
    PersonalizedProgram,
    PlainTrainer,
    UpdateTransform,
)
from secrelay.federated.release import ReleaseSpec

__all__ = [
    "STRATEGY_REGISTRY",
    "ClusteredStrategy",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedNova",
    "FedProx",
    "NovaRule",
    "SlotRule",
    "StandaloneStrategy",
    "Strategy",
    "WeightedDeltaRule",
    "make_strategy",
    "register_strategy",
]

Weighting = Literal["samples", "uniform"]


def _weight(result: LocalResult, weighting: Weighting) -> float:
    return float(result.num_samples) if weighting == "samples" else 1.0


@dataclass(frozen=True)
class WeightedDeltaRule(ContributionRule):
    """``delta`` = w_k·Δ_k and ``weight`` = [w_k]."""

    weighting: Weighting = "samples"

    def contribute(self, result: LocalResult, task: DeviceTask) -> dict[str, np.ndarray]:
        w = _weight(result, self.weighting)
        return {
            "delta": (w * result.delta.astype(np.float64)),
            "weight": np.array([w]),
        }


@dataclass(frozen=True)
class NovaRule(ContributionRule):
    """FedNova: normalised update n_k·Δ_k/a_k, ``tau`` = n_k·a_k and ``weight`` = n_k.

    a_k is the number of local SGD steps (the normalising factor of vanilla SGD).
    """

    weighting: Weighting = "samples"

    def contribute(self, result: LocalResult, task: DeviceTask) -> dict[str, np.ndarray]:
        w = _weight(result, self.weighting)
        a = max(result.steps, 1)
        return {
            "delta": w * result.delta.astype(np.float64) / a,
            "tau": np.array([w * a]),
            "weight": np.array([w]),
        }


@dataclass(frozen=True)
class SlotRule(ContributionRule):
    """Cluster-keyed contribution: the weighted update in the slot of the device's
    key, zeros in every other slot (so a secure sum hides which key it chose).

    Contributes ``delta`` of shape (K, d), ``weight`` (K,) and ``count`` (K,).
    """

    keys: tuple[str, ...]
    weighting: Weighting = "samples"

    def contribute(self, result: LocalResult, task: DeviceTask) -> dict[str, np.ndarray]:
        if result.key not in self.keys:
            raise InvalidParameterError(f"key {result.key!r} is not one of {self.keys}")
        k = self.keys.index(result.key)
        w = _weight(result, self.weighting)
        delta = np.zeros((len(self.keys), result.delta.size), dtype=np.float64)
        delta[k] = w * result.delta
        weight = np.zeros(len(self.keys))
        weight[k] = w
        count = np.zeros(len(self.keys))
        count[k] = 1.0
        return {"delta": delta, "weight": weight, "count": count}


class Strategy(abc.ABC):
    """A server-side aggregation strategy over one or more named models.

    Subclasses implement :meth:`contribution_rule` (what devices send) and
    :meth:`apply` (how the sums update the models). State that must survive a
    restart goes through :meth:`state_dict` / :meth:`load_state_dict`.
    """

    name: ClassVar[str] = "strategy"
    personalized: ClassVar[bool] = False

    def __init__(self) -> None:
        self.models: dict[str, np.ndarray] = {}

    # --- set-up -------------------------------------------------------------
    def initialize(self, models: Mapping[str, np.ndarray]) -> None:
        """Set the starting models (e.g. ``{"global": cloud_model_vector}``)."""
        if not models:
            raise InvalidParameterError("initialize() needs at least one model")
        self.models = {k: np.asarray(v, dtype=np.float32).copy() for k, v in models.items()}

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.models)

    # --- device side ----------------------------------------------------------
    @abc.abstractmethod
    def contribution_rule(self) -> ContributionRule:
        """The device-side rule producing this strategy's contributions."""

    def trainer(self, trainer: LocalTrainer) -> LocalTrainer:
        """Adapt the local trainer (FedProx sets μ); identity by default."""
        return trainer

    def client_program(
        self,
        model: ModelSpec,
        trainer: LocalTrainer,
        *,
        selector: KeySelector | None = None,
        transforms: Sequence[UpdateTransform] = (),
    ) -> ClientProgram:
        """The program devices run each round."""
        return LocalTrainingProgram(
            model=model,
            trainer=self.trainer(trainer),
            rule=self.contribution_rule(),
            selector=selector if selector is not None else FixedKey(self.keys[0]),
            transforms=tuple(transforms),
        )

    # --- server side ----------------------------------------------------------
    def download(self, round: int) -> dict[str, np.ndarray]:
        """The models every sampled device downloads this round (all keys)."""
        out = {}
        for k, v in self.models.items():
            v.setflags(write=False)
            out[k] = v
        return out

    def aggregate(self, round: int, result: SumResult) -> dict[str, float]:
        """Update the models from the round's sums; returns server-side statistics."""
        if not result.survivors:
            return {"survivors": 0.0}
        stats = self.apply(round, result.sums)
        return {"survivors": float(len(result.survivors)), **stats}

    @abc.abstractmethod
    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Apply the sums to :attr:`models`."""

    # --- user-level differential privacy ----------------------------------------
    def release_spec(self, clipping_norm: float) -> ReleaseSpec | None:
        """How this strategy's sums may be released under user-level DP with the
        device update clipped to ``clipping_norm`` (:mod:`secrelay.federated.release`);
        ``None`` when they cannot be as configured (the default)."""
        return None

    def set_release_noise(self, noise_std: Mapping[str, float]) -> None:
        """Told by a user-level DP wrapper the per-coordinate noise standard deviation
        of each released sum (post-processing may use it, e.g. to ignore a noisy
        count too small to divide by); no-op by default."""

    def _set(self, key: str, value: np.ndarray) -> None:
        self.models[key] = np.asarray(value, dtype=np.float32)

    # --- persistence ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"models": {k: v.copy() for k, v in self.models.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.models = {
            k: np.asarray(v, dtype=np.float32).copy() for k, v in state["models"].items()
        }


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
        raise InvalidParameterError(f"`{name}` must be a finite number > 0; got {value!r}")


def _check_unit(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise InvalidParameterError(f"`{name}` must be in [0, 1); got {value!r}")


def _mean_delta(sums: Mapping[str, np.ndarray]) -> np.ndarray | None:
    weight = float(np.asarray(sums["weight"]).sum())
    if weight <= 0:
        return None
    return np.asarray(sums["delta"], dtype=np.float64) / weight


class FedAvg(Strategy):
    """FedAvg (McMahan et al. 2017): the weighted mean update, times ``server_lr``."""

    name = "fedavg"

    def __init__(self, *, server_lr: float = 1.0, weighting: Weighting = "samples") -> None:
        super().__init__()
        _check_positive("server_lr", server_lr)
        if weighting not in ("samples", "uniform"):
            raise InvalidParameterError(
                f"`weighting` must be 'samples' or 'uniform'; got {weighting!r}"
            )
        self.server_lr = float(server_lr)
        self.weighting: Weighting = weighting

    def contribution_rule(self) -> ContributionRule:
        return WeightedDeltaRule(self.weighting)

    def release_spec(self, clipping_norm: float) -> ReleaseSpec | None:
        """DP-FedAvg (McMahan et al. 2018): the clipped update is noised, the uniform
        weight is replaced by a public participant count. Sample weights are data
        (the device's size) and are not released: ``None`` then."""
        if self.weighting != "uniform":
            return None
        d = int(self.models[self.keys[0]].size)
        return ReleaseSpec(
            noised=(("delta", float(clipping_norm)),),
            public_counts=("weight",),
            shapes=(("delta", (d,)),),
        )

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        mean = _mean_delta(sums)
        if mean is None:
            return {}
        key = self.keys[0]
        self._set(key, self.models[key] + self.server_lr * mean)
        return {"update_norm": float(np.linalg.norm(mean))}


class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg with the proximal term μ/2‖w − w_t‖² locally."""

    name = "fedprox"

    def __init__(
        self, *, mu: float = 0.01, server_lr: float = 1.0, weighting: Weighting = "samples"
    ) -> None:
        super().__init__(server_lr=server_lr, weighting=weighting)
        _check_positive("mu", mu)
        self.mu = float(mu)

    def trainer(self, trainer: LocalTrainer) -> LocalTrainer:
        if isinstance(trainer, PlainTrainer):
            return dataclasses.replace(
                trainer, config=dataclasses.replace(trainer.config, prox_mu=self.mu)
            )
        if hasattr(trainer, "with_prox_mu"):
            return trainer.with_prox_mu(self.mu)  # type: ignore[no-any-return]
        raise InvalidParameterError(
            f"FedProx cannot set the proximal term on a {type(trainer).__name__}"
        )


class _FedOpt(FedAvg):
    """Adaptive server optimizers of Reddi et al. 2021 ("Adaptive Federated
    Optimization"): the mean update Δ is a pseudo-gradient;
    m ← β1·m + (1−β1)·Δ, v ← update(v, Δ²), w ← w + η·m/(√v + τ)."""

    def __init__(
        self,
        *,
        server_lr: float = 1e-2,
        beta1: float = 0.0,
        beta2: float = 0.99,
        tau: float = 1e-3,
        weighting: Weighting = "samples",
    ) -> None:
        super().__init__(server_lr=server_lr, weighting=weighting)
        _check_unit("beta1", beta1)
        _check_unit("beta2", beta2)
        _check_positive("tau", tau)
        self.beta1, self.beta2, self.tau = float(beta1), float(beta2), float(tau)
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    @abc.abstractmethod
    def _second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray: ...

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        mean = _mean_delta(sums)
        if mean is None:
            return {}
        key = self.keys[0]
        m = self.m.get(key, np.zeros_like(mean))
        v = self.v.get(key, np.zeros_like(mean))
        m = self.beta1 * m + (1 - self.beta1) * mean
        v = self._second_moment(v, mean**2)
        self.m[key], self.v[key] = m, v
        step = self.server_lr * m / (np.sqrt(v) + self.tau)
        self._set(key, self.models[key] + step)
        return {"update_norm": float(np.linalg.norm(step))}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "m": {k: v.copy() for k, v in self.m.items()},
            "v": {k: v.copy() for k, v in self.v.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.m = {k: np.asarray(v).copy() for k, v in state.get("m", {}).items()}
        self.v = {k: np.asarray(v).copy() for k, v in state.get("v", {}).items()}


class FedAdagrad(_FedOpt):
    """FedAdagrad: v ← v + Δ²."""

    name = "fedadagrad"

    def _second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        out: np.ndarray = v + g2
        return out


class FedAdam(_FedOpt):
    """FedAdam: v ← β2·v + (1−β2)·Δ² (β1 defaults to 0.9)."""

    name = "fedadam"

    def __init__(
        self,
        *,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        weighting: Weighting = "samples",
    ) -> None:
        super().__init__(
            server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau, weighting=weighting
        )

    def _second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * g2


class FedNova(FedAvg):
    """FedNova (Wang et al. 2020): Δ = τ_eff · Σ p_k Δ_k/a_k with τ_eff = Σ p_k a_k,
    p_k = w_k/Σw, removing the objective inconsistency of unequal local step counts."""

    name = "fednova"

    def contribution_rule(self) -> ContributionRule:
        return NovaRule(self.weighting)

    def release_spec(self, clipping_norm: float) -> ReleaseSpec | None:
        """``None``: FedNova's ``tau`` (local step counts) has no user-level DP release."""
        return None

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        weight = float(np.asarray(sums["weight"]).sum())
        if weight <= 0:
            return {}
        tau_eff = float(np.asarray(sums["tau"]).sum()) / weight
        update = tau_eff * np.asarray(sums["delta"], dtype=np.float64) / weight
        key = self.keys[0]
        self._set(key, self.models[key] + self.server_lr * update)
        return {"update_norm": float(np.linalg.norm(update)), "tau_eff": tau_eff}


class ClusteredStrategy(Strategy):
    """One FedAvg (or FedProx, with ``mu`` > 0) per model key; devices choose their
    key on the device (e.g. a RelayRec selector or a cloud-assigned group) and
    contribute into that key's slot only — clusters never mix."""

    name = "clustered"

    def __init__(
        self,
        *,
        mu: float = 0.0,
        server_lr: float = 1.0,
        weighting: Weighting = "samples",
        count_share: float = 0.25,
    ) -> None:
        super().__init__()
        _check_positive("server_lr", server_lr)
        if mu < 0:
            raise InvalidParameterError(f"`mu` must be >= 0; got {mu!r}")
        if not (isinstance(count_share, (int, float)) and 0 < count_share <= 1):
            raise InvalidParameterError(f"`count_share` must be in (0, 1]; got {count_share!r}")
        self.mu = float(mu)
        self.server_lr = float(server_lr)
        self.weighting: Weighting = weighting
        self.count_share = float(count_share)
        # A key's model is updated only when its (possibly noisy) device count
        # reaches this; 0.5 = at least one device after rounding (set_release_noise).
        self.min_count = 0.5

    def contribution_rule(self) -> ContributionRule:
        return SlotRule(self.keys, self.weighting)

    def release_spec(self, clipping_norm: float) -> ReleaseSpec | None:
        """Cluster-keyed DP-FedAvg. A device's ``delta`` (K, d) is its clipped update in
        one slot and zeros elsewhere (L2 norm <= C); its ``count`` (K,) is one-hot (norm
        1). Both are noised — which cluster a device chose is data (its preference
        vector), so per-key counts cannot be public — and the uniform ``weight`` is a
        copy of the noisy count. The counts take share ``count_share`` w of the
        sensitivity C·√(1 + w²). ``None`` for sample weighting."""
        if self.weighting != "uniform":
            return None
        k, d = len(self.keys), int(self.models[self.keys[0]].size)
        return ReleaseSpec(
            noised=(("delta", float(clipping_norm)), ("count", 1.0)),
            copies=(("weight", "count"),),
            shapes=(("delta", (k, d)), ("count", (k,))),
            weights=(("count", self.count_share),),
        )

    def set_release_noise(self, noise_std: Mapping[str, float]) -> None:
        """Update a key only if its noisy count is at least 3 noise standard deviations
        (and 0.5): dividing the noisy update sum of a (nearly) empty cluster by a
        noisy count near 0 would throw that cluster's model away."""
        if "count" in noise_std:
            self.min_count = max(0.5, 3.0 * float(noise_std["count"]))

    def trainer(self, trainer: LocalTrainer) -> LocalTrainer:
        if self.mu > 0:
            return FedProx(mu=self.mu).trainer(trainer)
        return trainer

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        delta = np.asarray(sums["delta"], dtype=np.float64)
        weight = np.asarray(sums["weight"], dtype=np.float64)
        count = np.asarray(sums["count"], dtype=np.float64)
        stats: dict[str, float] = {}
        for i, key in enumerate(self.keys):
            n_devices = round_count(count[i])
            stats[f"count/{key}"] = float(n_devices)
            # Under secure aggregation an empty slot sums to quantisation noise, not
            # exactly zero: decide emptiness on the (integer) device count, never on
            # the noisy weight, or an empty cluster's model would be divided by ~0.
            # Under user-level DP the count itself is noisy: min_count is 3 σ.
            if count[i] < self.min_count or weight[i] <= 0:  # min_count >= 0.5: none
                continue
            self._set(key, self.models[key] + self.server_lr * delta[i] / weight[i])
        return stats


def round_count(x: float) -> int:
    """A device count recovered from a (possibly quantised) sum."""
    return int(np.rint(x))


class StandaloneStrategy(Strategy):
    """No collaboration: every device trains its own copy of the start model and
    keeps it; nothing is uploaded."""

    name = "standalone"
    personalized = True

    def contribution_rule(self) -> ContributionRule:
        return _NoContribution()

    def client_program(
        self,
        model: ModelSpec,
        trainer: LocalTrainer,
        *,
        selector: KeySelector | None = None,
        transforms: Sequence[UpdateTransform] = (),
    ) -> ClientProgram:
        inner = super().client_program(model, trainer, selector=selector, transforms=transforms)
        assert isinstance(inner, LocalTrainingProgram)
        return PersonalizedProgram(inner)

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        return {}


@dataclass(frozen=True)
class _NoContribution(ContributionRule):
    def contribute(self, result: LocalResult, task: DeviceTask) -> dict[str, np.ndarray]:
        return {}


STRATEGY_REGISTRY: Registry[type[Strategy]] = Registry("strategy")


def register_strategy(cls: type[Strategy], *, force: bool = False) -> type[Strategy]:
    """Add a strategy class under its ``name``; refuses to replace one unless ``force``."""
    return STRATEGY_REGISTRY.register(cls.name, cls, force=force)


for _cls in (
    FedAvg,
    FedProx,
    FedAdagrad,
    FedAdam,
    FedNova,
    ClusteredStrategy,
    StandaloneStrategy,
):
    register_strategy(_cls)


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build the registered strategy ``name`` with keyword ``params``."""
    cls = STRATEGY_REGISTRY.get(name)
    try:
        return cls(**params)
    except TypeError as e:
        raise InvalidParameterError(f"strategy {name!r}: {e}") from None
