"""How the server obtains the round's sums from the devices' contributions.

Every strategy in :mod:`secrelay.federated.strategies` aggregates through *named
sums* of per-device contributions (FedAvg needs Σ n_k·Δ_k and Σ n_k; cluster-keyed
aggregation needs per-slot sums; MetaUA needs the sums listed in DESIGN.md). A
:class:`SumProtocol` turns the contributions into those sums and records what the
server saw: :class:`PlaintextSum` sends every contribution in the clear (the leak);
the secure-aggregation protocol replaces it without touching the strategies.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.dp.ledger import LedgerRecord
from protocols.errors import InvalidParameterError
from secrelay.federated.messages import SERVER, ContributionUpload
from secrelay.federated.transcript import Channel

__all__ = ["PlaintextSum", "SumProtocol", "SumResult", "check_contributions"]


@dataclass(frozen=True)
class SumResult:
    """The named sums over the surviving devices, and who survived."""

    sums: dict[str, np.ndarray]
    survivors: tuple[int, ...]
    # What the sum released under DP (a noising sum protocol fills it), for the ledger.
    privacy_records: tuple[LedgerRecord, ...] = ()
    # True when no device's contribution entered ``sums`` but a DP sum released noise
    # alone (a Poisson round that sampled nobody): the strategy applies it like any
    # release, so whether a round was empty does not show in the model.
    noise_only: bool = False


def check_contributions(
    contributions: Mapping[int, Mapping[str, np.ndarray]],
) -> dict[str, tuple[int, ...]]:
    """Validate that every device contributes the same names with the same shapes.

    Returns the shape of each name. Raises :class:`InvalidParameterError` naming the
    first device that disagrees.
    """
    shapes: dict[str, tuple[int, ...]] | None = None
    for dev, contrib in contributions.items():
        mine = {k: tuple(np.shape(v)) for k, v in contrib.items()}
        if shapes is None:
            shapes = mine
        elif mine != shapes:
            raise InvalidParameterError(
                f"device {dev} contributes {mine}, but other devices contribute {shapes}"
            )
    return shapes or {}


class SumProtocol(abc.ABC):
    """Computes Σ_k contribution_k name by name over the devices that survive.

    Attributes
    ----------
    stages:
        Names of the protocol stages at which a device may drop out. A device that
        drops at a stage is not in the survivors; the protocol either completes
        without it or raises :class:`protocols.errors.ProtocolAbort`.
    always_releases:
        Whether every round must release, whoever took part (a central DP sum under
        Poisson sampling, whose amplification needs the release not to depend on how
        many devices were sampled): the loop then never aborts or skips a round for
        too few survivors, and the protocol releases noise alone when nobody took part.
    """

    stages: tuple[str, ...] = ("upload",)
    always_releases: bool = False

    def check_dropouts(self, dropouts: Mapping[int, str] | None) -> dict[int, str]:
        """Validate that every dropout stage is one of :attr:`stages`; returns a copy."""
        out = dict(dropouts or {})
        unknown = set(out.values()) - set(self.stages)
        if unknown:
            raise InvalidParameterError(
                f"{type(self).__name__} has stages {self.stages}; "
                f"got dropout stages {sorted(unknown)}"
            )
        return out

    @abc.abstractmethod
    def aggregate(
        self,
        round: int,
        contributions: Mapping[int, Mapping[str, np.ndarray]],
        channel: Channel,
        *,
        dropouts: Mapping[int, str] | None = None,
    ) -> SumResult:
        """Sum the contributions of the devices that do not drop out."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue releasing exactly as an uninterrupted
        one would (a stateful DP mechanism's noise stream, clip, participation
        history); empty for a stateless protocol. Checkpointed with the loop."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; a stateless protocol accepts only ``{}``."""
        if state:
            raise InvalidParameterError(
                f"{type(self).__name__} keeps no state, but the checkpoint holds "
                f"{sorted(state)}: it was written by another sum protocol"
            )


class PlaintextSum(SumProtocol):
    """No protection: each device uploads its contribution in the clear."""

    stages = ("upload",)

    def aggregate(
        self,
        round: int,
        contributions: Mapping[int, Mapping[str, np.ndarray]],
        channel: Channel,
        *,
        dropouts: Mapping[int, str] | None = None,
    ) -> SumResult:
        dropouts = self.check_dropouts(dropouts)
        shapes = check_contributions(contributions)
        sums = {k: np.zeros(s, dtype=np.float64) for k, s in shapes.items()}
        survivors = []
        for dev in sorted(contributions):
            if dev in dropouts:
                continue
            msg = channel.send(
                ContributionUpload(
                    sender=dev, receiver=SERVER, round=round, contribution=dict(contributions[dev])
                )
            )
            assert isinstance(msg, ContributionUpload)
            for k, v in msg.contribution.items():
                sums[k] += v
            survivors.append(dev)
        return SumResult(sums, tuple(survivors))
