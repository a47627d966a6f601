"""The plug-in contract of a relay / federated learning method.

A method is a :class:`Method` subclass registered in :data:`METHODS` under its
``name``. The runner (:mod:`secrelay.experiment`) builds a :class:`RunContext` and
drives the method round by round; methods never import the runner. A method states,
before any data is loaded, which privacy settings it cannot honour
(:meth:`Method.privacy_problems`); the runner reports them all at once with those of
the :class:`~secrelay.privacy.plan.PrivacyPlan`.

To add a method::

    from secrelay.methods import Method, register_method

    @register_method
    class MyMethod(Method):  # or register_method(MyMethod) later
        name = "mine"
        ...

``docs/architecture.md`` walks through the contract and ``examples/extending`` has a
runnable example of each extension point.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from protocols.registry import Registry
from secrelay.config import RunConfig
from secrelay.federated.client import ModelSpec
from secrelay.federated.executor import Executor
from secrelay.federated.transcript import Channel
from secrelay.methods.data import PreparedData
from secrelay.metrics import Metrics
from secrelay.privacy.plan import PrivacyPlan

if TYPE_CHECKING:
    from protocols.dp.ledger import LedgerRecord

__all__ = ["METHODS", "Method", "RunContext", "register_method"]


@dataclass
class RunContext:
    """What a method gets from the runner: its config, data, model, channel,
    executor, privacy plan and run directory."""

    config: RunConfig
    data: PreparedData
    model_spec: ModelSpec
    channel: Channel
    executor: Executor
    run_dir: Path
    privacy: PrivacyPlan
    log: Callable[[str], None] = print
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.config.run.seed


class Method(abc.ABC):
    """A relay / federated learning method, driven round by round by the runner.

    Subclasses set ``name`` and implement the abstract methods. A method that applies
    ``[privacy]``'s DP mechanisms sets ``supports_privacy = True``, returns each round's
    ledger records from :meth:`privacy_records` and what a round *could* spend from
    :meth:`planned_privacy_records` (the budget dry run).
    """

    name: ClassVar[str] = "method"
    # Whether the method applies privacy.dp_sgd / privacy.user_level_dp /
    # privacy.query_ldp (a run that asks for them with a method that does not is
    # refused before anything runs).
    supports_privacy: ClassVar[bool] = False
    # Whether devices send small queries that privacy.query_ldp protects (LCFT).
    makes_queries: ClassVar[bool] = False
    # The flows the method can run under CKKS (docs/he.md): "selector" for
    # privacy.he_selector (RelayRec), "matching" for privacy.he_matching (CoDA).
    he_flows: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    @classmethod
    def privacy_problems(cls, config: RunConfig) -> list[str]:
        """Every ``[privacy]`` / ``[method]`` combination this method cannot honour,
        each naming the keys to change; checked before any data is loaded."""
        p = config.privacy
        problems = []
        if p.differential_privacy and not cls.supports_privacy:
            problems.append(
                f"method.name {cls.name!r} does not apply privacy.dp_sgd / "
                "privacy.user_level_dp yet; turn them off or use method.name = 'federated'"
            )
        if p.query_ldp != "off" and not cls.makes_queries:
            problems.append(
                "privacy.query_ldp protects the device queries of methods that make them; "
                f"method.name {cls.name!r} makes none (set privacy.query_ldp = 'off')"
            )
        for key, flow, owner in (
            ("he_selector", "selector", "relayrec"),
            ("he_matching", "matching", "coda"),
        ):
            if getattr(p, key) and flow not in cls.he_flows:
                problems.append(
                    f"privacy.{key} encrypts the {flow} flow, which method.name {cls.name!r} "
                    f"does not have (only method.name = {owner!r} does); set privacy.{key} = false"
                )
        return problems

    @abc.abstractmethod
    def setup(self) -> None:
        """The cloud phase (pre-training, clustering, …); deterministic by seed."""

    @abc.abstractmethod
    def num_rounds(self) -> int: ...

    @abc.abstractmethod
    def run_round(self, round: int) -> dict[str, Any]:
        """Run one round; return its record (metrics flattened into the dict)."""

    @abc.abstractmethod
    def evaluate(self) -> Metrics: ...

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def close(self) -> None:
        """Release resources (worker pools)."""

    def planned_privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        """The DP records ``round`` could spend, computed before it runs (budget dry run)."""
        return ()

    def privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        """The DP records the last :meth:`run_round` (of ``round``) released — also
        when it raised: what was released before the failure (the runner charges it)."""
        return ()


def _is_method(cls: object) -> str | None:
    if isinstance(cls, type) and issubclass(cls, Method):
        return None
    return f"expected a Method subclass; got {cls!r}"


METHODS: Registry[type[Method]] = Registry("method", check=_is_method)


def register_method(cls: type[Method], *, force: bool = False) -> type[Method]:
    """Register a :class:`Method` under ``cls.name`` (usable as a class decorator);
    refuses to replace a registered name unless ``force``."""
    return METHODS.register(cls.name, cls, force=force)
