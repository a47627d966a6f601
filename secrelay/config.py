"""One typed configuration object for a whole run, from TOML or keyword arguments.

Every section is a frozen dataclass; :func:`load_config` rejects unknown sections
and keys and wrong types with the dotted key's name (``federated.rounds must be an
int; got '50'``), and each section validates its ranges at construction.
Method-specific options (RelayRec's K, MetaUA's meta learning rate, …) live under
``[method.options]`` and are validated by the method itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from protocols.dp.accountants import ACCOUNTANTS
from protocols.errors import ConfigError
from secrelay.options import parse_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CloudConfig",
    "DataConfig",
    "FederatedConfig",
    "LocalConfig",
    "MethodConfig",
    "ModelConfig",
    "PrivacyConfig",
    "RunConfig",
    "RunSection",
    "SplitConfig",
    "StrategyConfig",
    "load_config",
    "load_run_config",
    "read_toml",
]


@dataclass(frozen=True)
class RunSection:
    """``[run]``: identity, seed and execution."""

    name: str = "run"
    seed: int = 0
    executor: Literal["sequential", "process", "ray"] = "sequential"
    workers: int = 0
    # Ray cluster to connect to with executor = "ray" ("auto", "ray://host:10001");
    # empty starts a local instance.
    address: str = ""
    record_transcript: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"run.workers must be >= 0 (0 = all cores); got {self.workers}")


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: which data set (``synthetic``, ``movielens100k``, ``libfm``, ``csv``,
    ``parquet``), its path and loader options."""

    name: str = "synthetic"
    path: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitConfig:
    """``[split]``: the regulation split and the per-device train/test split.

    ``evaluate_on = "validation"`` is the tuning protocol: the last
    ``validation_fraction`` of each device's *training* rows (in time order) are
    held out and every evaluation of the run uses them; the test rows are not
    loaded into the run at all. Choose hyperparameters this way, then report the
    chosen configuration with ``evaluate_on = "test"``.
    """

    mode: Literal["random", "temporal"] = "random"
    alpha: float = 0.05
    train_fraction: float = 0.8
    min_device_rows: int = 2
    evaluate_on: Literal["test", "validation"] = "test"
    validation_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"split.alpha must be in (0, 1); got {self.alpha}")
        if not 0 < self.train_fraction < 1:
            raise ConfigError(f"split.train_fraction must be in (0, 1); got {self.train_fraction}")
        if self.min_device_rows < 1:
            raise ConfigError(f"split.min_device_rows must be >= 1; got {self.min_device_rows}")
        if self.evaluate_on not in ("test", "validation"):
            raise ConfigError(
                f"split.evaluate_on must be 'test' or 'validation'; got {self.evaluate_on!r}"
            )
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(
                f"split.validation_fraction must be in (0, 1); got {self.validation_fraction}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: the device (and cloud) CTR model."""

    name: str = "dnn"
    embedding_dim: int = 16
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ConfigError(f"model.embedding_dim must be >= 1; got {self.embedding_dim}")


@dataclass(frozen=True)
class _TrainSection:
    epochs: int = 1
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: Literal["sgd", "adam", "adagrad"] = "adam"
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        section = "cloud" if isinstance(self, CloudConfig) else "local"
        if self.epochs < 0:
            raise ConfigError(f"{section}.epochs must be >= 0; got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"{section}.batch_size must be >= 1; got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"{section}.lr must be > 0; got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"{section}.weight_decay must be >= 0; got {self.weight_decay}")


@dataclass(frozen=True)
class CloudConfig(_TrainSection):
    """``[cloud]``: centralized training on the pre-regulation cloud data."""

    epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-3


@dataclass(frozen=True)
class LocalConfig(_TrainSection):
    """``[local]``: each device's local training per round.

    ``trainable = "dense"`` leaves the embedding tables exactly as downloaded and
    trains only the dense layers; ``"seen"`` also trains the embedding rows the
    cloud's (pre-regulation) data uses, and leaves every other row — the new users'
    ids, items the cloud never saw — exactly as downloaded. Under
    ``privacy.user_level_dp`` the released sum then carries no noise where no device
    can change anything (every device's update there is exactly 0, whatever its
    data). Not with ``privacy.dp_sgd``; ``"seen"`` with the ``federated``, ``metaua``
    and ``relayrec`` methods.
    """

    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    trainable: Literal["all", "dense", "seen"] = "all"


@dataclass(frozen=True)
class FederatedConfig:
    """``[federated]``: rounds, sampling and dropouts (see
    :class:`secrelay.federated.loop.RoundConfig`)."""

    rounds: int = 50
    clients_per_round: int = 25
    sampling: Literal["fixed", "poisson"] = "fixed"
    sample_rate: float = 0.1
    dropout_rate: float = 0.0
    min_survivors: int = 1
    on_abort: Literal["raise", "skip"] = "raise"
    eval_every: int = 1
    # Evaluate on a fixed sample of this many devices (drawn once from run.seed);
    # 0 = every device. A lazy population's server then reads only these devices' rows.
    eval_devices: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ConfigError(f"federated.rounds must be >= 0; got {self.rounds}")
        if self.eval_devices < 0:
            raise ConfigError(
                f"federated.eval_devices must be >= 0 (0 = every device); got {self.eval_devices}"
            )


@dataclass(frozen=True)
class StrategyConfig:
    """``[strategy]``: the aggregation strategy and its parameters."""

    name: str = "fedavg"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodConfig:
    """``[method]``: ``federated`` (plain FL from the cloud model) or a relay method."""

    name: str = "federated"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrivacyConfig:
    """``[privacy]``: protections wrapped around the method's flows.

    Differential privacy (``docs/privacy.md``): ``dp_sgd`` turns on example-level
    DP-SGD on the devices (``max_grad_norm``, and ``local_noise_multiplier`` or
    ``local_target_epsilon`` over ``local_participations`` rounds, 0 = the most rounds
    any device can be sampled in: read from the public sampling schedule under
    reproducible randomness, ``federated.rounds`` under secure randomness, whose
    samples are not known before they are drawn); ``user_level_dp`` turns on DP-FedAvg (each device's
    update clipped to ``clipping_norm``; noise ``noise_multiplier`` or calibrated to
    ``target_epsilon`` over the planned rounds; central Gaussian noise, or distributed
    discrete Gaussian noise under ``secure_aggregation``). ``user_epsilon`` and
    ``example_epsilon`` are budgets at ``delta``: a round that could exceed one is
    refused before it runs. ``query_ldp`` (``"gaussian"`` or ``"randomized_response"``)
    makes a device's small query releases (LCFT's local-CTR query) ε-LDP at
    ``query_ldp_epsilon``. Unset (``None``) numbers are not used.

    ``user_mechanism`` picks the user-level release (``docs/dp.md``): ``"gaussian"``
    (DP-FedAvg above), ``"dp_ftrl"`` (tree aggregation; ``tree_efficient``,
    ``tree_restart_every``) or ``"banded_mf"`` (``bands``); the last two add server noise
    correlated across rounds, claim no amplification, and count a device in at most
    ``max_participations`` rounds ``min_separation`` apart (0: the public reproducible
    schedule's worst device). ``adaptive_clip`` moves the clipping norm (starting at
    ``clipping_norm``) towards the ``target_quantile`` of update norms at rate
    ``clip_lr``, from a count noised at ``clip_count_stddev`` (central Gaussian only).

    ``randomness`` is where the randomness the guarantees rest on comes from:
    ``"secure"`` (default) draws DP noise, DP-SGD's sampling and noise, the device
    sample of every round and the SecAgg keys from OS entropy, never from
    ``run.seed``; ``"reproducible"`` derives them from ``run.seed`` for bit-identical
    research reruns, and the guarantee then holds only against parties who do not
    know ``run.seed`` (the audit says so). Training order, data splits and the cloud
    phase follow ``run.seed`` in both modes. It replaces ``secure_noise``.

    ``secagg_active_security`` picks the threat model of ``secure_aggregation``:
    ``true`` (default) runs the malicious-server protocol (authenticated key
    advertisements, the consistency check, the surviving-graph rule; it needs a
    quorum of about (n + t)/2 devices alive at the consistency check), ``false``
    the cheaper honest-but-curious protocol, whose guarantees hold only if the
    server follows the protocol (the audit says so); ``docs/secagg.md``.
    ``secagg_vote_slack`` (malicious-server protocol only) is how many dropped or
    invalid votes each device absorbs at the consistency check before the server
    needs a top-up pass: unset (default), the protocol's design rule (a top-up
    almost never); ``0``, the fewest pairwise key agreements on first meeting
    (≈ 30 % fewer at 100 devices), a top-up round trip whenever a voting peer
    drops at the check.
    """

    secure_aggregation: bool = False
    secagg_precision_bits: int = 24
    secagg_default_bound: float = 1e4
    secagg_neighbours: int = 0
    secagg_sign_advertisements: bool = False
    secagg_active_security: bool = True
    secagg_vote_slack: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    dp_sgd: bool = False
    user_level_dp: bool = False
    delta: float = 1e-5
    accountant: str = "prv"
    user_epsilon: float | None = None
    example_epsilon: float | None = None
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    clipping_norm: float | None = None
    max_grad_norm: float = 1.0
    local_noise_multiplier: float | None = None
    local_target_epsilon: float | None = None
    local_participations: int = 0
    grad_sample_mode: Literal["ghost", "hooks", "functorch", "ew", "sparse"] = "ghost"
    num_colluders: int = 0
    noise_shares: Literal["participants", "threshold"] = "participants"
    dp_scale: float | None = None
    randomness: Literal["secure", "reproducible"] = "secure"
    query_ldp: Literal["off", "gaussian", "randomized_response"] = "off"
    query_ldp_epsilon: float | None = None
    # User-level release mechanism (docs/dp.md, issue 17 B): "gaussian" (DP-FedAvg),
    # "dp_ftrl" (tree aggregation, Kairouz et al. 2021) or "banded_mf" (banded matrix
    # factorization with ``bands`` b, Choquette-Choo et al. 2023); the last two add
    # server noise correlated across rounds and claim no amplification. They count a
    # device in at most ``max_participations`` rounds (0: no limit, z from the public
    # reproducible schedule) at least ``min_separation`` apart.
    user_mechanism: Literal["gaussian", "dp_ftrl", "banded_mf"] = "gaussian"
    bands: int = 1
    tree_efficient: bool = True
    tree_restart_every: int = 0
    max_participations: int = 0
    min_separation: int = 1
    # Adaptive clipping at a target quantile (Andrew et al. 2021; central "gaussian"
    # only): clip_count_stddev σ_b of the noisy count (None: expected participants / 20).
    adaptive_clip: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clip_count_stddev: float | None = None
    # Homomorphic encryption (CKKS) of RelayRec's selector query and CoDA's matching
    # (docs/he.md); a method that has no such flow refuses them.
    he_selector: bool = False
    he_matching: bool = False

    @property
    def differential_privacy(self) -> bool:
        """Whether any DP mechanism is on (the run then keeps a privacy ledger)."""
        return self.dp_sgd or self.user_level_dp or self.query_ldp != "off"

    def _dp_problems(self) -> list[str]:
        problems: list[str] = []
        if self.accountant not in ACCOUNTANTS:
            problems.append(
                f"privacy.accountant must be a registered accountant, one of "
                f"{ACCOUNTANTS.names()}; got {self.accountant!r}"
            )

        def positive(name: str, value: float | None, *, required: bool = False) -> None:
            if value is None:
                if required:
                    problems.append(f"privacy.{name} is required here")
                return
            if not (math.isfinite(value) and value > 0):
                problems.append(f"privacy.{name} must be a finite number > 0; got {value}")

        if not 0 < self.delta < 1:
            problems.append(f"privacy.delta must be in (0, 1); got {self.delta}")
        positive("user_epsilon", self.user_epsilon)
        positive("example_epsilon", self.example_epsilon)
        positive("noise_multiplier", self.noise_multiplier)
        positive("target_epsilon", self.target_epsilon)
        positive("clipping_norm", self.clipping_norm, required=self.user_level_dp)
        positive("max_grad_norm", self.max_grad_norm)
        positive("local_noise_multiplier", self.local_noise_multiplier)
        positive("local_target_epsilon", self.local_target_epsilon)
        positive("dp_scale", self.dp_scale)
        positive("query_ldp_epsilon", self.query_ldp_epsilon, required=self.query_ldp != "off")
        if self.query_ldp == "off" and self.query_ldp_epsilon is not None:
            problems.append("privacy.query_ldp_epsilon is set but privacy.query_ldp is 'off'")
        if self.local_participations < 0:
            problems.append(
                "privacy.local_participations must be >= 0 (0 = the most rounds any device "
                f"is sampled in); got {self.local_participations}"
            )
        if self.num_colluders < 0:
            problems.append(f"privacy.num_colluders must be >= 0; got {self.num_colluders}")
        if self.user_level_dp and (self.noise_multiplier is None) == (self.target_epsilon is None):
            problems.append(
                "privacy.user_level_dp needs exactly one of privacy.noise_multiplier and "
                f"privacy.target_epsilon; got noise_multiplier={self.noise_multiplier}, "
                f"target_epsilon={self.target_epsilon}"
            )
        if self.dp_sgd and (self.local_noise_multiplier is None) == (
            self.local_target_epsilon is None
        ):
            problems.append(
                "privacy.dp_sgd needs exactly one of privacy.local_noise_multiplier and "
                f"privacy.local_target_epsilon; got local_noise_multiplier="
                f"{self.local_noise_multiplier}, local_target_epsilon={self.local_target_epsilon}"
            )
        for target, budget in (
            ("target_epsilon", "user_epsilon"),
            ("local_target_epsilon", "example_epsilon"),
        ):
            t_val, b_val = getattr(self, target), getattr(self, budget)
            if t_val is not None and b_val is not None and t_val > b_val:
                problems.append(
                    f"privacy.{target} = {t_val:g} exceeds its own budget privacy.{budget} = "
                    f"{b_val:g}: noise calibrated to spend {t_val:g} would be refused before "
                    f"the run ends; lower {target} or raise {budget}"
                )
        if not self.user_level_dp:
            for name in ("noise_multiplier", "target_epsilon", "clipping_norm"):
                if getattr(self, name) is not None:
                    problems.append(f"privacy.{name} is set but privacy.user_level_dp is false")
            if self.user_epsilon is not None and self.query_ldp == "off":
                problems.append(
                    "privacy.user_epsilon is set but no user-level mechanism is on "
                    "(privacy.user_level_dp or privacy.query_ldp)"
                )
        if not self.dp_sgd:
            for name in ("local_noise_multiplier", "local_target_epsilon", "example_epsilon"):
                if getattr(self, name) is not None:
                    problems.append(f"privacy.{name} is set but privacy.dp_sgd is false")
        problems.extend(self._mechanism_problems())
        if self.num_colluders and not (self.user_level_dp and self.secure_aggregation):
            problems.append(
                "privacy.num_colluders applies to distributed noise only "
                "(privacy.user_level_dp and privacy.secure_aggregation)"
            )
        return problems

    def _mechanism_problems(self) -> list[str]:
        """Problems of the user-level mechanism and adaptive-clipping keys."""
        problems: list[str] = []
        correlated = self.user_mechanism in ("dp_ftrl", "banded_mf")
        if self.user_mechanism != "gaussian" and not self.user_level_dp:
            problems.append(
                f"privacy.user_mechanism = {self.user_mechanism!r} needs privacy.user_level_dp"
            )
        if self.bands < 1:
            problems.append(f"privacy.bands must be >= 1; got {self.bands}")
        if self.bands != 1 and self.user_mechanism != "banded_mf":
            problems.append("privacy.bands applies to privacy.user_mechanism = 'banded_mf' only")
        if self.tree_restart_every < 0:
            problems.append(
                f"privacy.tree_restart_every must be >= 0 (0: one tree); got {self.tree_restart_every}"
            )
        if self.max_participations < 0 or self.min_separation < 1:
            problems.append(
                "privacy.max_participations must be >= 0 and privacy.min_separation >= 1; got "
                f"{self.max_participations}, {self.min_separation}"
            )
        if not correlated and (self.max_participations or self.min_separation != 1):
            problems.append(
                "privacy.max_participations / min_separation apply to privacy.user_mechanism "
                "'dp_ftrl' or 'banded_mf' only"
            )
        if not 0 < self.target_quantile < 1:
            problems.append(
                f"privacy.target_quantile must be in (0, 1); got {self.target_quantile}"
            )
        if not (math.isfinite(self.clip_lr) and self.clip_lr > 0):
            problems.append(f"privacy.clip_lr must be a finite number > 0; got {self.clip_lr}")
        if self.clip_count_stddev is not None and not (
            math.isfinite(self.clip_count_stddev) and self.clip_count_stddev > 0
        ):
            problems.append(
                f"privacy.clip_count_stddev must be a finite number > 0; got {self.clip_count_stddev}"
            )
        if self.adaptive_clip and not (
            self.user_level_dp and self.user_mechanism == "gaussian" and not self.secure_aggregation
        ):
            problems.append(
                "privacy.adaptive_clip needs privacy.user_level_dp with user_mechanism = "
                "'gaussian' and central noise (privacy.secure_aggregation = false)"
            )
        return problems

    def __post_init__(self) -> None:
        for name in (
            "clip_count_stddev",
            "user_epsilon",
            "example_epsilon",
            "noise_multiplier",
            "target_epsilon",
            "clipping_norm",
            "local_noise_multiplier",
            "local_target_epsilon",
            "dp_scale",
            "query_ldp_epsilon",
        ):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        problems = self._dp_problems()
        if problems:
            raise ConfigError("; ".join(problems))
        if not 8 <= self.secagg_precision_bits <= 32:
            raise ConfigError(
                f"privacy.secagg_precision_bits must be in [8, 32]; got {self.secagg_precision_bits}"
            )
        if not self.secagg_default_bound > 0:
            raise ConfigError(
                f"privacy.secagg_default_bound must be > 0; got {self.secagg_default_bound}"
            )
        if self.secagg_neighbours < 0:
            raise ConfigError(
                f"privacy.secagg_neighbours must be >= 0 (0 = automatic); got {self.secagg_neighbours}"
            )
        if self.secagg_vote_slack is not None and self.secagg_vote_slack < 0:
            raise ConfigError(
                "privacy.secagg_vote_slack must be >= 0 (leave it unset for the protocol's "
                f"default); got {self.secagg_vote_slack}"
            )


@dataclass(frozen=True)
class RunConfig:
    """A whole run: every section, each with defaults."""

    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        privacy = data.get("privacy")
        if isinstance(privacy, Mapping) and "secure_noise" in privacy:
            raise ConfigError(
                "privacy.secure_noise was replaced by privacy.randomness: remove "
                "secure_noise and set randomness = 'secure' (the default: DP noise, "
                "sampling and SecAgg keys from OS entropy) or randomness = 'reproducible' "
                "(everything from run.seed, for research reruns; what secure_noise = false "
                "did)"
            )
        built: RunConfig = parse_options(cls, data)
        return built

    def replace(self, **sections: Mapping[str, Any]) -> RunConfig:
        """A copy with some keys changed: ``cfg.replace(federated={"rounds": 3})``."""
        d = self.to_dict()
        for name, values in sections.items():
            if name not in d:
                raise ConfigError(f"unknown config section {name!r}; valid: {sorted(d)}")
            d[name] = {**d[name], **dict(values)}
        return RunConfig.from_dict(d)


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved configuration of a run directory (``RUN_DIR/config.json``).

    A run written before ``privacy.randomness`` existed recorded
    ``privacy.secure_noise`` instead; it is read as what that run did:
    ``secure_noise = true`` as ``randomness = "secure"``, ``false`` as
    ``"reproducible"`` (its noise and sampling came from ``run.seed``).

    Raises
    ------
    ConfigError
        If ``run_dir`` holds no ``config.json``, or it is not a valid config.
    """
    rd = Path(run_dir)
    path = rd / "config.json"
    if not path.is_file():
        raise ConfigError(f"{str(rd)!r} is not a run directory (no config.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{str(path)!r} is not valid JSON: {e}") from None
    privacy = data.get("privacy") if isinstance(data, dict) else None
    if isinstance(privacy, dict) and "secure_noise" in privacy:
        privacy = dict(privacy)
        legacy = privacy.pop("secure_noise")
        privacy.setdefault("randomness", "secure" if legacy else "reproducible")
        data = {**data, "privacy": privacy}
    return RunConfig.from_dict(data)


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The tables of the TOML file ``path``; a missing or unparsable file is one
    :class:`ConfigError` naming it (``what`` says which file it is)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist")
    try:
        return dict(tomllib.loads(p.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {str(p)!r} is not valid TOML: {e}") from None


def load_config(path: str | Path | None = None, **overrides: Mapping[str, Any]) -> RunConfig:
    """Read a TOML config (or start from defaults) and apply section overrides.

    Raises
    ------
    ConfigError
        For a missing or unparsable file, an unknown section or key, a wrong type
        or an out-of-range value; the message names the key.
    """
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    for section, values in overrides.items():
        data[section] = {**data.get(section, {}), **dict(values)}
    return RunConfig.from_dict(data)
