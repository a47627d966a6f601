"""What the ServerApp and every ClientApp build from one run config.

Both sides read the same TOML run config (shipped inside the Flower app, named by
the run config key ``config``) and build the same public parts from it: the model
spec, the device program (with the privacy plan's DP-SGD and update clipping
composed in, as :meth:`~secrelay.privacy.plan.PrivacyPlan.build_loop` does), the
SecAgg+ settings and, under user-level DP, the device-side noise encoding. Nothing
here is sent: a device never runs code the server chose, it runs the program its
own copy of the app builds.

Device data is loaded on the device: :meth:`FlowerJob.device_data` materializes one
device's rows (the simulation builds the run's data set once per worker process and
keeps it; a real device reads its own data instead, ``docs/deploy.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from protocols.errors import ConfigError
from secrelay.config import RunConfig
from secrelay.federated.client import ClientProgram, DeviceData, ModelSpec, PlainTrainer
from secrelay.federated.loop import RoundConfig
from secrelay.federated.secure import SecureSum, SecureSumSettings
from secrelay.federated.strategies import Strategy, make_strategy
from secrelay.methods.cloud import local_train_config, model_spec_from
from secrelay.methods.data import PreparedData, prepare_data
from secrelay.methods.loop import round_config_from
from secrelay.privacy.plan import PrivacyPlan, release_support
from secrelay.privacy.user_dp import UserLevelDPSum
from secrelay.training import TrainConfig

__all__ = ["FlowerJob", "flower_problems"]


def flower_problems(config: RunConfig) -> list[str]:
    """Why ``config`` cannot run as the Flower app (empty when it can)."""
    problems = []
    if config.method.name != "federated":
        problems.append(
            f"the Flower app runs method.name = 'federated' (any registered strategy); "
            f"got {config.method.name!r}"
        )
    if not config.privacy.secure_aggregation:
        problems.append(
            "the Flower app sends contributions only under secrelay's SecAgg+: set "
            "privacy.secure_aggregation = true"
        )
    if config.federated.dropout_rate != 0:
        problems.append(
            "federated.dropout_rate simulates dropouts in-process; over Flower devices "
            f"drop out for real: set it to 0 (got {config.federated.dropout_rate!r})"
        )
    return problems


@dataclass
class FlowerJob:
    """The public parts of a ``method.name = "federated"`` run, for either side.

    Raises
    ------
    ConfigError
        Every reason the config cannot run as the Flower app, at once.
    """

    config: RunConfig
    #: Device side: loads one device's rows (default: its split of :attr:`data`).
    loader: Callable[[int], DeviceData] | None = field(default=None, repr=False)
    #: Device side: the identity public key of a device from a directory the server
    #: cannot forge (a deployment's PKI); when set, a device refuses a round whose
    #: setup lists any other key. ``None``: trust the keys collected at registration.
    directory: Callable[[int], bytes] | None = field(default=None, repr=False)
    #: Both sides: the public beacon of ``(round, round_id)`` (e.g. a drand round the
    #: round id fixes); when set, the server uses it and a device refuses a setup whose
    #: beacon differs. ``None``: the server draws it (secure mode) — see docs/deploy.md.
    beacon: Callable[[int, bytes], bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problems = flower_problems(self.config)
        if problems:
            raise ConfigError("; ".join(problems))

    @cached_property
    def data(self) -> PreparedData:
        """The run's prepared data (built once per process)."""
        return prepare_data(self.config)

    @cached_property
    def population(self) -> tuple[int, ...]:
        """Every device id, sorted (the simulation's partition i is device ``population[i]``)."""
        return tuple(sorted(self.data.devices))

    @cached_property
    def plan(self) -> PrivacyPlan:
        return PrivacyPlan.from_config(self.config)

    @cached_property
    def model_spec(self) -> ModelSpec:
        return model_spec_from(self.config, self.data.full.schema)

    def device_data(self, device_id: int) -> DeviceData:
        """The rows of device ``device_id`` (device side only)."""
        if self.loader is not None:
            return self.loader(int(device_id))
        try:
            return self.data.devices[int(device_id)]
        except KeyError:
            raise ConfigError(f"device {device_id} is not in this run's population") from None

    def round_config(self) -> RoundConfig:
        """The ``[federated]`` sampling settings (as :class:`FederatedMethod` uses them)."""
        return round_config_from(self.config.federated)

    def strategy(self, models: Mapping[str, np.ndarray] | None = None) -> Strategy:
        """A fresh strategy, initialised with ``models`` (default: zeros of the model's
        size, enough for the device side, which never reads the values)."""
        strategy = make_strategy(self.config.strategy.name, **self.config.strategy.params)
        if models is None:
            size = int(self.model_spec.num_parameters())
            models = {"global": np.zeros(size, np.float32)}
        strategy.initialize(dict(models))
        return strategy

    @cached_property
    def train_config(self) -> TrainConfig:
        """``[local]`` as the devices' training settings, as the in-process run builds
        them (with ``trainable = "seen"``: the embedding rows the cloud's data uses)."""
        return local_train_config(self.config, self.data.cloud)

    @cached_property
    def program(self) -> ClientProgram:
        """The device program, with the privacy plan's DP-SGD / clipping composed in."""
        strategy = self.strategy()
        program = strategy.client_program(self.model_spec, PlainTrainer(self.train_config))
        problems = self.plan.loop_problems(strategy, program)
        if problems:
            raise ConfigError("; ".join(dict.fromkeys(problems)))
        participations = 1
        p = self.config.privacy
        if p.dp_sgd and p.local_target_epsilon is not None:
            participations = self.plan.participations(
                self.population,
                self.round_config(),
                seed=self.config.run.seed,
                rounds=self.config.federated.rounds,
            )
        return self.plan.private_program(program, participations=participations)

    @cached_property
    def secure_settings(self) -> SecureSumSettings:
        return self.plan.secure_settings()

    @cached_property
    def dp_sum(self) -> UserLevelDPSum | None:
        """Under ``privacy.user_level_dp``: the user-level DP sum whose device-side
        encoding (clip, scale, discrete Gaussian share) each device runs; else None."""
        p = self.config.privacy
        if not p.user_level_dp:
            return None
        assert p.clipping_norm is not None
        strategy = self.strategy()
        spec = strategy.release_spec(float(p.clipping_norm))
        if spec is None:  # pragma: no cover - loop_problems refused it already
            raise ConfigError(f"strategy {strategy.name!r} has no user-level DP release")
        spec = release_support(spec, self.train_config, self.model_spec)
        base = SecureSum(self.secure_settings, seed=self.config.run.seed)
        return self.plan.private_sum(
            base,
            strategy,
            spec=spec,
            population=self.population,
            rounds=self.config.federated.rounds,
        )
