"""The ``[attack]`` section of a trade-off config: which protection settings to train
and which attacks to run on each.

A trade-off config is an ordinary ``secrelay`` run config (the base every setting
starts from) plus an ``[attack]`` table, which ``secrelay`` itself never reads::

    [attack]
    attacks = ["items", "difference", "membership", "attributes", "audit"]
    settings = ["none", "secagg", "user_dp_e8", "example_dp_e8", "all"]   # presets
    attributes = ["gender", "age", "occupation"]

    [[attack.setting]]            # or declare a setting in full
    name = "user_dp_e2"
    privacy = { user_level_dp = true, clipping_norm = 0.5, target_epsilon = 2.0 }
    federated = { sampling = "poisson", sample_rate = 0.0265 }
    strategy = { name = "fedavg", params = { weighting = "uniform" } }

A setting is a name and section overrides applied to the base config
(``RunConfig.replace``), so any key of any section may vary. ``settings`` lists the
presets of :data:`PRESETS` by name (or inline tables ``{ name = ..., privacy = ...}``);
``[[attack.setting]]`` tables are appended after them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secrelay import ConfigError, RunConfig, read_toml

__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "PRESETS", "AttackConfig", "Setting", "load_attack_config"]

ATTACKS = (
    "items",
    "difference",
    "membership",
    "attributes",
    "audit",
    "cluster",
    "inversion",
    "lcft",
    "coda",
)
"""Attack names an ``[attack] attacks`` list may hold."""

DEFAULT_ATTACKS = ("items", "difference", "membership", "attributes", "audit", "cluster")
"""What runs when ``attacks`` is not given: the method-specific attacks (``lcft``,
``coda``) and the planted-round inversion (``inversion``, minutes per setting) are
asked for by name."""

_UNIFORM = {"name": "fedavg", "params": {"weighting": "uniform"}}
_DP_SAMPLING = {"sampling": "poisson"}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "none": {},
    "secagg": {"privacy": {"secure_aggregation": True}},
    "user_dp_e8": {
        "privacy": {"user_level_dp": True, "clipping_norm": 0.5, "target_epsilon": 8.0},
        "federated": _DP_SAMPLING,
        "strategy": _UNIFORM,
    },
    "user_dp_e2": {
        "privacy": {"user_level_dp": True, "clipping_norm": 0.5, "target_epsilon": 2.0},
        "federated": _DP_SAMPLING,
        "strategy": _UNIFORM,
    },
    "example_dp_e8": {
        "privacy": {"dp_sgd": True, "max_grad_norm": 1.0, "local_target_epsilon": 8.0},
    },
    "all": {
        "privacy": {
            "secure_aggregation": True,
            "user_level_dp": True,
            "clipping_norm": 0.5,
            "target_epsilon": 8.0,
            "dp_sgd": True,
            "max_grad_norm": 1.0,
            "local_target_epsilon": 8.0,
        },
        "federated": _DP_SAMPLING,
        "strategy": _UNIFORM,
    },
}
"""Protection settings by name. DP presets use uniform weighting (sensitivity = C) and,
for user-level DP, Poisson sampling at ``federated.sample_rate`` (set it in the base
config, e.g. clients_per_round / devices)."""


@dataclass(frozen=True)
class Setting:
    """One protection setting: a name and the section overrides it applies."""

    name: str
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def apply(self, base: RunConfig) -> RunConfig:
        """``base`` with this setting's overrides (every problem reported by secrelay)."""
        merged: dict[str, dict[str, Any]] = {}
        for section, values in self.overrides.items():
            merged[section] = dict(values)
        privacy = dict(merged.pop("privacy", {}))
        if privacy:
            # a setting states its protection in full: start from no protection
            merged["privacy"] = {**_privacy_off(base), **privacy}
        return base.replace(**merged) if merged else base


def _privacy_off(base: RunConfig) -> dict[str, Any]:
    """The base's ``[privacy]`` with every mechanism switched off."""
    p: dict[str, Any] = dict(base.to_dict()["privacy"])
    p.update(
        secure_aggregation=False,
        dp_sgd=False,
        user_level_dp=False,
        noise_multiplier=None,
        target_epsilon=None,
        clipping_norm=None,
        local_noise_multiplier=None,
        local_target_epsilon=None,
        user_epsilon=None,
        example_epsilon=None,
        num_colluders=0,
        query_ldp="off",
        query_ldp_epsilon=None,
    )
    for flag in ("he_selector", "he_matching"):  # CKKS flows (issue 14), when present
        if flag in p:
            p[flag] = False
    return p


@dataclass(frozen=True)
class AttackConfig:
    """The parsed ``[attack]`` section.

    Attributes
    ----------
    settings:
        The protection settings, in order.
    attacks:
        Which attacks to run (each runs where it applies; see ``docs/attacks.md``).
    attributes:
        Per-user fields for attribute inference.
    devices:
        At most this many devices per per-device attack (membership shadows are the
        costly part).
    shadows:
        LiRA shadow models per target.
    membership_rows:
        At most this many members and non-members for the global-model attacks.
    canaries:
        Canaries of the one-run audits.
    audit_trials:
        Trials of the many-run audit of the Gaussian sum.
    inversion_batch_sizes, inversion_devices:
        Update inversion: the planted FedSGD round's batch sizes (one round each) and
        devices per round.
    reidentify_samples:
        CoDA re-identification: released pool samples simulated per ε.
    seed:
        Seed of the attacks' own randomness (subsampling, shadows, bootstraps).
    """

    settings: tuple[Setting, ...]
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    attributes: tuple[str, ...] = ("gender", "age", "occupation")
    devices: int = 30
    shadows: int = 4
    membership_rows: int = 2000
    canaries: int = 500
    audit_trials: int = 20_000
    inversion_batch_sizes: tuple[int, ...] = (1, 4)
    inversion_devices: int = 20
    reidentify_samples: int = 2000
    seed: int = 0

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> AttackConfig:
        problems: list[str] = []
        known = {
            "settings",
            "setting",
            "attacks",
            "attributes",
            "devices",
            "shadows",
            "membership_rows",
            "canaries",
            "audit_trials",
            "inversion_batch_sizes",
            "inversion_devices",
            "reidentify_samples",
            "seed",
        }
        for k in section:
            if k not in known:
                problems.append(f"attack.{k} is not a known key; valid: {sorted(known)}")
        settings: list[Setting] = []
        for i, s in enumerate([*section.get("settings", ["none"]), *section.get("setting", [])]):
            if isinstance(s, str):
                if s not in PRESETS:
                    problems.append(
                        f"attack.settings[{i}] {s!r} is not a preset; presets: {sorted(PRESETS)}"
                    )
                    continue
                settings.append(Setting(s, PRESETS[s]))
            elif isinstance(s, Mapping) and isinstance(s.get("name"), str):
                settings.append(Setting(s["name"], {k: v for k, v in s.items() if k != "name"}))
            else:
                problems.append(
                    f"attack.settings[{i}] must be a preset name or a table with a name; got {s!r}"
                )
        names = [s.name for s in settings]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"attack settings have duplicate names {dupes}")
        attacks = tuple(section.get("attacks", DEFAULT_ATTACKS))
        bad = [a for a in attacks if a not in ATTACKS]
        if bad:
            problems.append(f"attack.attacks has unknown attacks {bad}; valid: {list(ATTACKS)}")
        ints = {}
        for k, low in (
            ("devices", 1),
            ("shadows", 2),
            ("membership_rows", 10),
            ("canaries", 10),
            ("audit_trials", 100),
            ("inversion_devices", 2),
            ("reidentify_samples", 10),
            ("seed", 0),
        ):
            v = section.get(k, getattr(cls, k))
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                problems.append(f"attack.{k} must be an int >= {low}; got {v!r}")
            else:
                ints[k] = v
        attributes = section.get("attributes", cls.attributes)
        if not isinstance(attributes, (list, tuple)) or not all(
            isinstance(a, str) for a in attributes
        ):
            problems.append(f"attack.attributes must be a list of field names; got {attributes!r}")
        sizes = section.get("inversion_batch_sizes", cls.inversion_batch_sizes)
        if (
            not isinstance(sizes, (list, tuple))
            or not sizes
            or not all(
                isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 64 for b in sizes
            )
        ):
            problems.append(
                f"attack.inversion_batch_sizes must be a non-empty list of ints in [1, 64]; got {sizes!r}"
            )
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(
            tuple(settings),
            attacks,
            tuple(attributes),
            inversion_batch_sizes=tuple(int(b) for b in sizes),
            **ints,
        )


def load_attack_config(
    path: str | Path, **overrides: Mapping[str, Any]
) -> tuple[RunConfig, AttackConfig]:
    """Read a trade-off TOML: the base run config and its ``[attack]`` section.

    ``overrides`` are section overrides of the base (``federated={"rounds": 5}``).
    Every setting is applied to the base once here, so a bad key in any setting is
    reported before anything trains.

    Raises
    ------
    ConfigError
        For a missing or invalid file, a bad ``[attack]`` key, or a setting that
        makes an invalid run config (naming the setting).
    """
    data = read_toml(path)
    section = data.pop("attack", {})
    for name, values in overrides.items():
        data[name] = {**data.get(name, {}), **dict(values)}
    base = RunConfig.from_dict(data)
    attack = AttackConfig.from_dict(section)
    problems = []
    for s in attack.settings:
        try:
            s.apply(base)
        except ConfigError as e:
            problems.append(f"setting {s.name!r}: {e}")
    if problems:
        raise ConfigError("; ".join(problems))
    return base, attack
