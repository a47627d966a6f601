"""``method.name = "metaua"``: the MetaUA relay method.

Ties the cloud phase (train the start model on the cloud data) to a federated loop
of :class:`~secrelay.relay.metaua.device.MetaUAProgram` devices aggregated by
:class:`~secrelay.relay.metaua.strategy.MetaUAStrategy`, and states MetaUA's privacy
requirements before any data is loaded (:meth:`MetaUAMethod.strategy_problems`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from secrelay.config import RunConfig
from secrelay.methods import FederatedMethod, make_train_config, train_cloud_model
from secrelay.relay.metaua.device import GLOBAL_KEY
from secrelay.relay.metaua.options import MetaUAOptions
from secrelay.relay.metaua.strategy import MetaUAStrategy

__all__ = ["MetaUAMethod"]


class MetaUAMethod(FederatedMethod):
    """``method.name = "metaua"``: federated relay from the cloud model with MetaUA.

    The cloud model (trained on the pre-regulation cloud data) is the start;
    every round samples devices per ``[federated]``, each runs
    :class:`~secrelay.relay.metaua.device.MetaUAProgram` with the ``[local]``
    trainer, and :class:`~secrelay.relay.metaua.strategy.MetaUAStrategy`
    aggregates the sums. ``[strategy]`` is not used.
    """

    name = "metaua"

    def _make(self) -> MetaUAStrategy:
        return MetaUAStrategy(
            self.ctx.model_spec, MetaUAOptions.from_mapping(self.ctx.config.method.options)
        )

    @classmethod
    def strategy_problems(cls, config: RunConfig) -> list[str]:
        """MetaUA's own strategy replaces ``[strategy]``; its privacy requirements."""
        p, o = config.privacy, MetaUAOptions.from_mapping(config.method.options)
        problems = []
        if p.dp_sgd and not p.user_level_dp:
            problems.append(
                "privacy.dp_sgd alone does not cover MetaUA: the query gradient g_k and the "
                "attributes z_k are computed from device data outside DP-SGD; turn on "
                "privacy.user_level_dp too (it clips and noises every MetaUA sum)"
            )
        if p.dp_sgd and o.train_on != "all":
            problems.append(
                "privacy.dp_sgd with MetaUA needs method.options.train_on = 'all' (the DP-SGD "
                "budget dry run is computed on a device's whole training split)"
            )
        if p.user_level_dp and o.weighting != "uniform":
            problems.append(
                "privacy.user_level_dp with MetaUA needs method.options.weighting = 'uniform' "
                f"(sample-count base weights are device data); got {o.weighting!r}"
            )
        return problems

    def setup(self) -> None:
        """Train the cloud model and start the loop from it."""
        cfg = self.ctx.config
        strategy = self._make()
        cloud_vec = train_cloud_model(
            self.ctx.model_spec,
            self.ctx.data.cloud,
            make_train_config(cfg.cloud),
            seed=self.ctx.seed,
        )
        strategy.initialize({GLOBAL_KEY: cloud_vec})
        self.strategy = strategy
        self._build()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        strategy = self._make()
        strategy.initialize(state["loop"]["strategy"]["models"])
        self.strategy = strategy
        self._build()
        self.loop.load_state_dict(state["loop"])
