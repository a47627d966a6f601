"""A method whose devices run in one :class:`~secrelay.federated.loop.FederatedLoop`.

:class:`LoopMethod` builds its loop through the run's
:class:`~secrelay.privacy.plan.PrivacyPlan` (so DP-SGD, update clipping and the
user-level DP sum are composed in at build time) and takes each round's ledger
records from the loop's typed :attr:`RoundRecord.privacy_records`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from protocols.dp.ledger import LedgerRecord
from secrelay.config import FederatedConfig
from secrelay.federated.aggregation import SumProtocol
from secrelay.federated.client import ClientProgram
from secrelay.federated.loop import FederatedLoop, RoundConfig, RoundRecord
from secrelay.federated.strategies import Strategy
from secrelay.methods.base import Method
from secrelay.methods.cloud import local_train_config
from secrelay.privacy.plan import PrivacyPlan
from secrelay.training import TrainConfig

__all__ = ["LoopMethod", "round_config_from"]


def round_config_from(fed: FederatedConfig, **overrides: Any) -> RoundConfig:
    """The loop's :class:`RoundConfig` from ``[federated]``'s sampling, dropout and
    evaluation settings, with ``overrides``."""
    settings: dict[str, Any] = dict(
        clients_per_round=fed.clients_per_round,
        sampling=fed.sampling,
        sample_rate=fed.sample_rate,
        dropout_rate=fed.dropout_rate,
        min_survivors=fed.min_survivors,
        on_abort=fed.on_abort,
        eval_every=fed.eval_every,
        eval_devices=fed.eval_devices,
    )
    settings.update(overrides)
    return RoundConfig(**settings)


class LoopMethod(Method):
    """Base of methods driven by one federated loop (``self.loop``).

    Subclasses build the loop with :meth:`build_loop` and run a round with
    :meth:`run_loop_round`; the budget dry run, the ledger records and closing the
    executor then come for free.
    """

    supports_privacy: ClassVar[bool] = True
    loop: FederatedLoop
    _round_records: tuple[LedgerRecord, ...] = ()

    def local_train_config(self) -> TrainConfig:
        """``[local]`` as the devices' :class:`TrainConfig`; with ``trainable = "seen"``
        the embedding rows the cloud's data uses are the ones that may train (public:
        the cloud's own data, sent with the model)."""
        return local_train_config(self.ctx.config, self.ctx.data.cloud)

    def round_config(self, **overrides: Any) -> RoundConfig:
        """The ``[federated]`` sampling, dropout and evaluation settings."""
        return round_config_from(self.ctx.config.federated, **overrides)

    def build_loop(
        self,
        strategy: Strategy,
        program: ClientProgram,
        *,
        config: RoundConfig,
        rounds: int,
        sum_protocol: SumProtocol | None = None,
        **loop_kwargs: Any,
    ) -> FederatedLoop:
        """The loop over the run's devices, with the privacy plan composed in."""
        self._round_records = ()
        return self.ctx.privacy.build_loop(
            strategy,
            program,
            self.ctx.data.devices,
            self.ctx.model_spec,
            config=config,
            seed=self.ctx.seed,
            rounds=rounds,
            sum_protocol=sum_protocol,
            channel=self.ctx.channel,
            executor=self.ctx.executor,
            **loop_kwargs,
        )

    def run_loop_round(self, round: int, *, evaluate: bool | None = None) -> RoundRecord:
        """One round of ``self.loop``; keeps its ledger records for the runner."""
        self._round_records = ()
        record = self.loop.run_round(round, evaluate=evaluate)
        self._round_records = record.privacy_records
        return record

    def planned_privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        if not self.ctx.privacy.differential_privacy:
            return ()
        return PrivacyPlan.planned_records(self.loop, round)

    def privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        return self._round_records

    def close(self) -> None:
        if hasattr(self, "loop"):
            self.loop.close()
