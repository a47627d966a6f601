"""A Python API for research without TOML: :func:`simulate`.

``simulate`` builds a :class:`~secrelay.config.RunConfig` from keyword arguments
and runs it with the same runner as ``secrelay run`` (privacy checks first, ledger,
checkpoints, resume). Custom parts plug in by class — a
:class:`~secrelay.methods.Method`, a :class:`~secrelay.federated.strategies.Strategy`,
a data set as a :class:`~secrelay.data.dataset.CTRDataset` — so a new idea needs no
registration ceremony and no config file::

    import secrelay
    from secrelay.config import PrivacyConfig

    result = secrelay.simulate(
        method="federated",
        strategy="fedavg",
        strategy_params={"weighting": "uniform"},
        privacy=PrivacyConfig(user_level_dp=True, clipping_norm=0.5, noise_multiplier=1.0),
        data="synthetic",
        rounds=3,
        federated={"sampling": "poisson", "sample_rate": 0.2},
    )
    result.final["final"]["gauc"]

``examples/extending/`` has one runnable example per extension point.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from protocols.errors import ConfigError
from secrelay.config import PrivacyConfig, RunConfig, load_config
from secrelay.data.dataset import CTRDataset
from secrelay.experiment import RunResult, run
from secrelay.federated.strategies import STRATEGY_REGISTRY, Strategy
from secrelay.methods import Method
from secrelay.methods.data import IN_MEMORY
from secrelay.privacy.plan import PrivacyPlan

__all__ = ["simulate"]


def _privacy_section(
    privacy: PrivacyPlan | PrivacyConfig | Mapping[str, Any] | None,
) -> dict[str, Any]:
    if privacy is None:
        return {}
    if isinstance(privacy, PrivacyPlan):
        privacy = privacy.privacy
    if isinstance(privacy, PrivacyConfig):
        return dataclasses.asdict(privacy)
    if isinstance(privacy, Mapping):
        return dict(privacy)
    raise ConfigError(
        "privacy must be a PrivacyPlan, a PrivacyConfig or a mapping of [privacy] keys; "
        f"got {type(privacy).__name__}"
    )


def _strategy_name(strategy: str | type[Strategy]) -> str:
    if isinstance(strategy, str):
        return strategy
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        if STRATEGY_REGISTRY.get(strategy.name, None) is not strategy:
            # Passing a class is the explicit request to use it: register it, refusing
            # a name taken by another class.
            STRATEGY_REGISTRY.register(strategy.name, strategy)
        return strategy.name
    raise ConfigError(f"strategy must be a name or a Strategy subclass; got {strategy!r}")


def simulate(
    method: str | type[Method] = "federated",
    *,
    strategy: str | type[Strategy] = "fedavg",
    strategy_params: Mapping[str, Any] | None = None,
    method_options: Mapping[str, Any] | None = None,
    privacy: PrivacyPlan | PrivacyConfig | Mapping[str, Any] | None = None,
    data: str | CTRDataset = "synthetic",
    data_options: Mapping[str, Any] | None = None,
    model: str = "dnn",
    model_options: Mapping[str, Any] | None = None,
    rounds: int | None = None,
    seed: int = 0,
    config: RunConfig | str | Path | None = None,
    run_dir: str | Path | None = None,
    overwrite: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **sections: Mapping[str, Any],
) -> RunResult:
    """Run a simulated relay / federated experiment and return its :class:`RunResult`.

    Parameters
    ----------
    method:
        A registered method name (``"federated"``, ``"relayrec"``, ``"lcft"``,
        ``"coda"``, ``"metaua"``) or a :class:`~secrelay.methods.Method` subclass
        (used as is; it need not be registered).
    strategy, strategy_params:
        The federated strategy (``method = "federated"``): a registered name or a
        :class:`Strategy` subclass (registered under its ``name`` if it is not), and
        its constructor keywords.
    method_options:
        ``[method.options]``.
    privacy:
        The ``[privacy]`` section as a :class:`~secrelay.privacy.plan.PrivacyPlan`
        (its ``privacy``; sampling comes from ``federated=``), a
        :class:`~secrelay.config.PrivacyConfig` or a mapping of keys.
    data, data_options:
        A registered data set name and its loader keywords, or an in-memory
        :class:`CTRDataset` (such a run cannot be resumed from its directory alone).
    model, model_options:
        A registered model name and its keywords (``hidden_units``, ...).
    rounds:
        ``federated.rounds``.
    seed:
        ``run.seed``.
    config:
        A base :class:`RunConfig` or TOML path; the other arguments override it.
    run_dir:
        Where the run directory goes (default: a new temporary directory).
    overwrite:
        Replace a run already in ``run_dir``.
    progress, log:
        Show a progress bar; where notes go (default: nowhere).
    **sections:
        Other config sections as mappings (``federated={...}``, ``local={...}``,
        ``cloud={...}``, ``split={...}``, ``run={...}``).

    Raises
    ------
    ConfigError
        For an unknown name, a bad key or value, or every privacy problem at once.
    """
    base = config if isinstance(config, RunConfig) else load_config(config)
    method_cls = method if isinstance(method, type) else None
    if method_cls is not None and not issubclass(method_cls, Method):
        raise ConfigError(f"method must be a name or a Method subclass; got {method!r}")
    dataset = data if isinstance(data, CTRDataset) else None
    overrides: dict[str, dict[str, Any]] = {k: dict(v) for k, v in sections.items()}
    overrides.setdefault("run", {}).update(seed=seed, progress=progress)
    overrides["method"] = {
        "name": method_cls.name if method_cls is not None else str(method),
        "options": dict(method_options or {}),
    }
    overrides["strategy"] = {
        "name": _strategy_name(strategy),
        "params": dict(strategy_params or {}),
    }
    overrides["model"] = {"name": model, **overrides.get("model", {})}
    if model_options is not None:
        overrides["model"]["options"] = dict(model_options)
    overrides["data"] = {
        "name": IN_MEMORY if dataset is not None else str(data),
        **overrides.get("data", {}),
    }
    if data_options is not None:
        overrides["data"]["options"] = dict(data_options)
    if rounds is not None:
        overrides.setdefault("federated", {})["rounds"] = rounds
    priv = _privacy_section(privacy)
    if priv:
        overrides["privacy"] = priv
    cfg = base.replace(**overrides)
    rd = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="secrelay-"))
    return run(
        cfg,
        rd,
        overwrite=overwrite,
        progress=progress,
        log=log or (lambda _: None),
        method=method_cls,
        dataset=dataset,
    )
