"""Secure aggregation under every strategy: a :class:`SumProtocol` over SecAgg+.

Because every strategy aggregates through named sums
(:mod:`secrelay.federated.strategies`), replacing :class:`PlaintextSum` by
:class:`SecureSum` puts secure aggregation under FedAvg, FedProx, FedAdagrad,
FedNova, cluster-keyed aggregation (whose K slots then hide which cluster a device
chose) and MetaUA without touching them. The transcript then holds only the
SecAgg+ protocol messages (:class:`~secrelay.federated.messages.MaskedUpload`),
never an individual contribution.

Encoding. The contributions' named arrays have very different ranges (a
sample-weighted update, a sample count, a one-hot cluster count), so each name is
divided by a public bound ``B_name`` before encoding and multiplied back after
decoding: every coordinate is clipped to ``[-B_name, B_name]`` and quantised with
step ``2·B_name / (2^precision_bits − 1)`` (stochastic rounding, unbiased), so the
decoded sum of ``m`` survivors is within ``m · 2·B_name / (2^precision_bits − 1)``
of the exact sum per coordinate (the bound :func:`protocols.secagg` guarantees,
rescaled). With the defaults (B = 10⁴, 24 bits) that is ≈ 1.2·10⁻³·m — far below
the scale of sample-weighted sums of hundreds of rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from protocols.errors import InvalidParameterError
from protocols.secagg import PROTOCOL_STAGES, SecAggConfig, simulate_secure_sum
from secrelay.federated.aggregation import SumProtocol, SumResult, check_contributions
from secrelay.federated.messages import SERVER, MaskedUpload
from secrelay.federated.transcript import Channel

__all__ = ["SecureSum", "SecureSumSettings"]


@dataclass(frozen=True)
class SecureSumSettings:
    """Public parameters of the secure sum.

    Parameters
    ----------
    bounds:
        Per-name clipping bound ``B_name`` (> 0); names not listed use
        ``default_bound``. Contributions beyond the bound are clipped on the device.
    default_bound:
        Bound for unlisted names (> 0).
    precision_bits:
        Fixed-point precision per coordinate, in [8, 32].
    neighbours:
        SecAgg+ graph degree (None: the protocol's O(log n) default; n − 1 gives
        plain SecAgg).
    threshold:
        Shamir threshold (None: the protocol's default for the degree).
    sign_advertisements:
        Ed25519-signed key advertisements (malicious-server hardening).
    max_dropout_rate:
        Design dropout rate used to size the default neighbourhood.
    deterministic:
        Derive every protocol key from the round seed (reproducible simulations and
        the resume-equals-uninterrupted guarantee). ``False`` keys every client
        from the OS CSPRNG, as a deployment must.
    """

    bounds: Mapping[str, float] = field(default_factory=dict)
    default_bound: float = 1e4
    precision_bits: int = 24
    neighbours: int | None = None
    threshold: int | None = None
    sign_advertisements: bool = False
    max_dropout_rate: float = 0.1
    deterministic: bool = True

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.bounds.items() if not (np.isfinite(v) and v > 0)}
        if bad:
            raise InvalidParameterError(f"secure-sum `bounds` must be finite and > 0; got {bad}")
        if not (np.isfinite(self.default_bound) and self.default_bound > 0):
            raise InvalidParameterError(
                f"`default_bound` must be finite and > 0; got {self.default_bound!r}"
            )
        if not 8 <= self.precision_bits <= 32:
            raise InvalidParameterError(
                f"`precision_bits` must be in [8, 32]; got {self.precision_bits!r}"
            )

    def bound(self, name: str) -> float:
        return float(self.bounds.get(name, self.default_bound))


class SecureSum(SumProtocol):
    """SecAgg+ over the named contributions of the surviving devices.

    Parameters
    ----------
    settings:
        Public parameters (bounds, precision, graph).
    seed:
        Root of the per-round protocol seeds when ``settings.deterministic``.
    """

    stages = tuple(s.value for s in PROTOCOL_STAGES)

    def __init__(self, settings: SecureSumSettings | None = None, *, seed: int = 0) -> None:
        self.settings = settings or SecureSumSettings()
        self.seed = int(seed)
        self.last_error_bound: dict[str, float] = {}
        self.last_bytes_per_client: float = 0.0

    def aggregate(
        self,
        round: int,
        contributions: Mapping[int, Mapping[str, np.ndarray]],
        channel: Channel,
        *,
        dropouts: Mapping[int, str] | None = None,
    ) -> SumResult:
        dropouts = dict(dropouts or {})
        unknown = set(dropouts.values()) - set(self.stages)
        if unknown:
            raise InvalidParameterError(
                f"SecureSum has stages {self.stages}; got dropout stages {sorted(unknown)}"
            )
        shapes = check_contributions(contributions)
        names = sorted(shapes)
        devices = sorted(contributions)
        if len(devices) < 2:
            raise InvalidParameterError(
                f"secure aggregation needs at least 2 devices in a round; got {len(devices)}"
            )
        # Device side: scale each name into [-1, 1] (clipping at the public bound).
        vectors = []
        for dev in devices:
            parts = [
                np.clip(
                    np.asarray(contributions[dev][k], dtype=np.float64).ravel()
                    / self.settings.bound(k),
                    -1.0,
                    1.0,
                )
                for k in names
            ]
            vectors.append(np.concatenate(parts) if parts else np.zeros(1))
        s = self.settings
        config = SecAggConfig(
            n_clients=len(devices),
            vector_length=vectors[0].size,
            neighbours=s.neighbours,
            threshold=s.threshold,
            clip_range=1.0,
            precision_bits=s.precision_bits,
            sign_advertisements=s.sign_advertisements,
            max_dropout_rate=s.max_dropout_rate,
        )
        position = {dev: i for i, dev in enumerate(devices)}
        stage_drops: dict[str, set[int]] = {}
        for dev, stage in dropouts.items():
            if dev in position:
                stage_drops.setdefault(stage, set()).add(position[dev])
        round_seed = (
            int(np.random.SeedSequence([self.seed, round, 3]).generate_state(1)[0])
            if s.deterministic
            else None
        )
        result = simulate_secure_sum(vectors, config=config, dropouts=stage_drops, seed=round_seed)
        # Record exactly what the server received, as the transcript's ground truth.
        for msg in result.server_view.received:
            channel.send(
                MaskedUpload(
                    sender=devices[msg.sender],
                    receiver=SERVER,
                    round=round,
                    stage=msg.stage.value,
                    payload=msg.data,
                )
            )
        sums: dict[str, np.ndarray] = {}
        pos = 0
        for k in names:
            size = int(np.prod(shapes[k], dtype=np.int64))
            sums[k] = result.sum[pos : pos + size].reshape(shapes[k]) * s.bound(k)
            pos += size
        m = len(result.survivors)
        self.last_error_bound = {k: m * 2.0 * s.bound(k) / (2**s.precision_bits - 1) for k in names}
        self.last_bytes_per_client = float(np.mean(list(result.bytes_sent.values())))
        return SumResult(sums, tuple(devices[i] for i in result.survivors))
