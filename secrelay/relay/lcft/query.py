"""The query path of LCFT's hard correction: a device's (LDP) local-CTR report.

Instead of downloading the whole correction table, a device may send its local
CTR w_i in a :class:`~secrelay.federated.messages.QueryMessage` and receive its
(α, β) in the reply (DESIGN.md, "LCFT correction": "or sends an LDP-noised w_i").
:class:`CTRQuery` is how the report is privatised (``privacy.query_ldp``) and read;
:func:`query_request` is the device's message and :func:`answer_query` the
server's. The privacy unit is the reporting device (user).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from protocols.dp import (
    DpEvent,
    GaussianEvent,
    LedgerRecord,
    NoOpEvent,
    RandomGenerator,
    RandomizedResponseEvent,
    SelfComposedEvent,
    calibrate_noise_multiplier,
    gaussian_report,
    randomized_response,
    randomized_response_estimate,
)
from protocols.errors import InvalidParameterError, MessageError
from secrelay.federated.messages import SERVER, QueryMessage, ReplyMessage
from secrelay.relay.lcft.corrections import CorrectionTable, check_ctr

__all__ = [
    "QUERY_LDP",
    "QUERY_TOPIC",
    "CTRQuery",
    "QueryLDP",
    "answer_query",
    "query_request",
    "rr_bits_for",
    "rr_report_variance",
]

QUERY_TOPIC = "lcft/correction_query"
QueryLDP = Literal["off", "gaussian", "randomized_response"]
QUERY_LDP: tuple[str, ...] = ("off", "gaussian", "randomized_response")


def _check_epsilon(epsilon: object) -> float:
    if not (
        isinstance(epsilon, (int, float, np.floating))
        and not isinstance(epsilon, bool)
        and math.isfinite(float(epsilon))
        and float(epsilon) > 0
    ):
        raise InvalidParameterError(f"`epsilon` must be a finite number > 0; got {epsilon!r}")
    return float(epsilon)


def _check_bits(bits: object) -> int:
    if not (isinstance(bits, (int, np.integer)) and not isinstance(bits, bool) and bits >= 1):
        raise InvalidParameterError(f"`bits` must be an integer >= 1; got {bits!r}")
    return int(bits)


# The payload key of each report kind (one per mechanism, so a report of the wrong
# kind is rejected rather than misread).
_REPORT_KEY = {"off": "local_ctr", "gaussian": "noisy_ctr", "randomized_response": "bits"}


def rr_report_variance(epsilon: float, bits: int) -> float:
    """Worst-case variance of the server's estimate of w_i from ``bits`` RR bits.

    Each bit is b ~ Bernoulli(w_i) flipped with probability f = 1/(1 + e^{ε/k});
    the mean of the unbiased per-bit estimates (y − f)/(1 − 2f) has variance
    P(1 − P)/(k (1 − 2f)²) ≤ 1/(4k tanh²(ε/2k)), with P = f + (1 − 2f)·w_i.

    Examples
    --------
    >>> round(rr_report_variance(1.0, 1), 3)
    1.171
    >>> rr_report_variance(4.0, 2) < rr_report_variance(4.0, 1)
    True
    """
    eps, k = _check_epsilon(epsilon), _check_bits(bits)
    return 1.0 / (4.0 * k * math.tanh(eps / (2.0 * k)) ** 2)


def rr_bits_for(epsilon: float) -> int:
    """The number of RR bits k that minimises :func:`rr_report_variance` at a total ε.

    Splitting ε over k bits trades the Bernoulli rounding noise (which falls as
    1/k) against the RR noise (which grows as k/ε² once ε/k is small); the best k
    is ≈ ε/2.18, so k = 1 for ε ≲ 3.

    Examples
    --------
    >>> [rr_bits_for(e) for e in (0.5, 1.0, 4.0, 8.0)]
    [1, 1, 2, 4]
    """
    eps = _check_epsilon(epsilon)
    candidates = range(1, max(1, math.ceil(eps)) + 1)
    return min(candidates, key=lambda k: rr_report_variance(eps, k))


@dataclass(frozen=True)
class CTRQuery:
    """How a device reports its local CTR w_i ∈ [0, 1] on the query path, and how
    the server reads the report. Every parameter is public (it follows from the
    config alone), so the privacy cost is known before any device reports.

    Mechanisms (``privacy.query_ldp``; the privacy unit is the reporting device)
    ---------------------------------------------------------------------------
    ``off``
        w_i in the clear: the server learns it exactly. No ledger record.
    ``gaussian``
        w_i + N(0, z²) (:func:`protocols.dp.gaussian_report`, sensitivity 1 on
        [0, 1]) with z the smallest noise multiplier whose single Gaussian release
        is (ε, δ)-DP under ``accountant``
        (:func:`protocols.dp.calibrate_noise_multiplier`, sample rate 1, one step).
        The server clips the report into [0, 1] (post-processing).
    ``randomized_response``
        ``bits`` = k independent reports of :func:`protocols.dp.randomized_response`
        at ε/k each (each one a fresh Bernoulli(w_i) bit, then binary RR); they
        compose to a pure ε-LDP release. The server averages
        :func:`protocols.dp.randomized_response_estimate` over the k bits and clips
        the estimate into [0, 1].

    Parameters
    ----------
    mechanism:
        One of :data:`QUERY_LDP`.
    epsilon:
        Target ε of one device's report (``None`` exactly when ``mechanism`` is ``off``).
    delta:
        δ of the Gaussian report (recorded as 0 for randomized response).
    noise_multiplier:
        z of the Gaussian report (``None`` otherwise).
    bits:
        k, the RR bits per report (1 otherwise).
    bit_epsilon:
        ε of one RR bit, ≤ ε/k (``None`` otherwise).
    """

    mechanism: QueryLDP = "off"
    epsilon: float | None = None
    delta: float = 0.0
    noise_multiplier: float | None = None
    bits: int = 1
    bit_epsilon: float | None = None

    @classmethod
    def plan(
        cls,
        mechanism: str,
        *,
        epsilon: float | None,
        delta: float,
        accountant: str = "prv",
        bits: int = 0,
    ) -> CTRQuery:
        """Calibrate the report to ``epsilon`` (``bits`` = 0: :func:`rr_bits_for`)."""
        if mechanism not in QUERY_LDP:
            raise InvalidParameterError(
                f"`mechanism` must be one of {QUERY_LDP}; got {mechanism!r}"
            )
        if mechanism == "off":
            return cls()
        eps = _check_epsilon(epsilon)
        if mechanism == "gaussian":
            z = calibrate_noise_multiplier(
                target_epsilon=eps,
                target_delta=delta,
                sample_rate=1.0,
                steps=1,
                accountant=accountant,
            )
            return cls("gaussian", eps, float(delta), z)
        k = rr_bits_for(eps) if bits == 0 else _check_bits(bits)
        # ε/k, lowered by a few ulps if rounding would make k bits spend more than ε.
        per_bit = eps / k
        while k * RandomizedResponseEvent.from_epsilon(per_bit).epsilon > eps:
            per_bit = float(np.nextafter(per_bit, 0.0))
        return cls("randomized_response", eps, 0.0, None, k, per_bit)

    @property
    def private(self) -> bool:
        """Whether the report is noised (any mechanism but ``off``)."""
        return self.mechanism != "off"

    @property
    def event(self) -> DpEvent:
        """The privacy event of one device's report."""
        if self.mechanism == "gaussian":
            assert self.noise_multiplier is not None
            return GaussianEvent(noise_multiplier=self.noise_multiplier)
        if self.mechanism == "randomized_response":
            assert self.bit_epsilon is not None
            bit = RandomizedResponseEvent.from_epsilon(self.bit_epsilon)
            return bit if self.bits == 1 else SelfComposedEvent(event=bit, count=self.bits)
        return NoOpEvent()

    def report(self, local_ctr: float, *, generator: RandomGenerator) -> dict[str, np.ndarray]:
        """Device side: the payload of the query (the only thing that leaves the device)."""
        w = np.array([check_ctr("local_ctr", local_ctr)])
        if self.mechanism == "gaussian":
            assert self.noise_multiplier is not None
            noisy, _ = gaussian_report(
                w, noise_multiplier=self.noise_multiplier, generator=generator
            )
            return {"noisy_ctr": noisy}
        if self.mechanism == "randomized_response":
            assert self.bit_epsilon is not None
            bits, _ = randomized_response(
                np.repeat(w, self.bits), epsilon=self.bit_epsilon, generator=generator
            )
            return {"bits": bits}
        return {"local_ctr": w}

    def estimate(self, arrays: Mapping[str, np.ndarray]) -> float:
        """Server side: the report's estimate of w_i, clipped into [0, 1].

        Raises
        ------
        MessageError
            If the payload is not a report of this mechanism.
        """
        key = _REPORT_KEY[self.mechanism]
        size = self.bits if self.mechanism == "randomized_response" else 1
        value = arrays.get(key)
        if set(arrays) != {key} or value is None or np.shape(value) != (size,):
            raise MessageError(
                f"an LCFT {self.mechanism!r} query must carry exactly `{key}` of shape "
                f"({size},); got {{{', '.join(f'{k!r}: {np.shape(v)}' for k, v in arrays.items())}}}"
            )
        x = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise MessageError(f"an LCFT query's `{key}` must be finite; got {x.tolist()}")
        if self.mechanism == "randomized_response":
            assert self.bit_epsilon is not None
            if not np.all((x == 0.0) | (x == 1.0)):
                raise MessageError(f"an LCFT query's `bits` must be 0 or 1; got {x.tolist()}")
            est = float(randomized_response_estimate(x, epsilon=self.bit_epsilon).mean())
        else:
            est = float(x[0])
        if self.mechanism == "off" and not 0.0 <= est <= 1.0:
            raise MessageError(f"an LCFT query's `local_ctr` must be in [0, 1]; got {est!r}")
        return min(max(est, 0.0), 1.0)  # post-processing: clip into [0, 1]

    def record(self, *, run_id: str, round: int, devices: Sequence[int]) -> LedgerRecord | None:
        """One ledger record covering every reporting device (``None`` without LDP).

        Each device's data enter only its own report, so one record listing all of
        them, with the per-report event, is the exact user-level cost: a
        per-device query of the ledger gives ε, and so does the global one (a
        record per device would make the global composition count N reports).
        """
        if not self.private or not devices:
            return None
        gaussian = self.mechanism == "gaussian"
        return LedgerRecord(
            run_id=run_id,
            round=round,
            mechanism=f"lcft_query[{self.mechanism}]",
            event=self.event,
            unit="user",
            devices=tuple(str(d) for d in devices),
            delta=self.delta if gaussian else 0.0,
            adjacency="replace_one",  # a local randomizer: any two values of w_i
            noise_multiplier=self.noise_multiplier,
            sigma=self.noise_multiplier if gaussian else None,
            sensitivity=1.0,
            sample_rate=1.0,
            steps=self.bits,
        )

    def describe(self) -> dict[str, Any]:
        """The public parameters, for the log and ``lcft_report.json``."""
        return {
            "mechanism": self.mechanism,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "bits": self.bits,
            "bit_epsilon": self.bit_epsilon,
        }


def query_request(
    device: int, round: int, local_ctr: float, query: CTRQuery, *, generator: RandomGenerator
) -> QueryMessage:
    """Device side: the query carrying the device's (privatized) local CTR."""
    return QueryMessage(
        sender=device,
        receiver=SERVER,
        round=round,
        topic=QUERY_TOPIC,
        arrays=query.report(local_ctr, generator=generator),
    )


def answer_query(request: QueryMessage, table: CorrectionTable, query: CTRQuery) -> ReplyMessage:
    """Server side: clip the report into [0, 1], look its interval up, answer (α, β).

    Raises
    ------
    MessageError
        For a message that is not an LCFT query of ``query``'s mechanism.
    """
    if not isinstance(request, QueryMessage) or request.topic != QUERY_TOPIC:
        raise MessageError(
            f"expected a QueryMessage on topic {QUERY_TOPIC!r}; got "
            f"{type(request).__name__} on {getattr(request, 'topic', None)!r}"
        )
    a, b = table.lookup(query.estimate(request.arrays))
    return ReplyMessage(
        sender=SERVER,
        receiver=request.sender,
        round=request.round,
        topic=QUERY_TOPIC,
        arrays={"alpha": np.array([a]), "beta": np.array([b])},
    )
