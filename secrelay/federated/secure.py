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

Device encodings (exact integer sums). A :class:`DeviceEncoding` replaces the
per-name float encoding: each device turns its contribution into a *signed integer*
vector (e.g. its quantised update plus its share of distributed discrete Gaussian
noise, :mod:`secrelay.privacy`) before masking, and the server gets the exact
integer sum of the survivors' vectors. The vectors ride on the SecAgg+ fixed-point
encoder with ``clip_range R = (2^q − 1)/2`` and step ``2R/(2^q − 1) = 1``: a device
sends ``x = v + 1/2``, which the encoder maps to the integer ``v + 2^(q−1)`` in
``[0, 2^q − 1]`` with no rounding (every value is a multiple of 1/2 below 2^52, so
float64 is exact), the words are summed modulo ``2^b`` with
``b = q + ⌈log2 n⌉``, which never wraps (``m (2^q − 1) < 2^b``), and the server
recovers ``Σ v = decoded − m/2`` exactly. A device refuses (raises) to send a vector
outside ``[−2^(q−1), 2^(q−1))`` instead of letting the encoder clip it, so an
encoding's headroom (its choice of ``q``) is a hard guarantee, never a silent clip.

Randomness and keys. By default (``SecureSumSettings.deterministic = False``) every
protocol key, mask seed, Shamir coefficient, nonce and stochastic rounding of every
device, the round id, the graph beacon and the devices' long-term signing keys come
from the operating system's entropy (:class:`~protocols.secagg.SecureRandom` keyed
from ``os.urandom``); ``seed`` is then not used at all. ``deterministic = True``
(``[privacy] randomness = "reproducible"``) derives all of them from ``seed`` and the
round number, so a run can be repeated bit for bit — and anyone who knows ``seed``
(it is written in ``config.json``) can unmask every input: research reruns only.

Threat model. ``active_security`` (default) runs the malicious-server protocol: the
devices authenticate their key advertisements and sign the survivor set with
long-term identity keys from a PKI (here a key directory made when a device first
takes part; each device keeps its key, and the pairwise keys derived from it,
across rounds), and a round aborts rather than reveal anything beyond the sum of
all survivors (``docs/secagg.md``). ``[privacy] secagg_active_security = false``
selects the honest-but-curious protocol instead (``PrivacyPlan.secure_settings``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from protocols.errors import InvalidParameterError
from protocols.secagg import (
    PASSIVE_STAGES,
    PROTOCOL_STAGES,
    IdentityKey,
    SecAggConfig,
    SecureRandom,
    SecureSumResult,
    Stage,
    simulate_secure_sum,
)
from secrelay.federated.aggregation import SumProtocol, SumResult, check_contributions
from secrelay.federated.messages import SERVER, MaskedUpload
from secrelay.federated.transcript import Channel

__all__ = ["DeviceEncoding", "SecureSum", "SecureSumSettings"]

# SecAgg+ decodes in float64: q + ⌈log2 n⌉ must stay below 2^52 to be exact.
_MAX_EXACT_BITS = 52


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
        Authenticated key advertisements (PKI tags); always on under
        ``active_security`` (``False`` then only means "not requested here").
    max_dropout_rate:
        Design dropout rate used to size the default neighbourhood.
    deterministic:
        ``False`` (default, secure): every key, mask seed and rounding comes from OS
        entropy and ``seed`` is unused. ``True`` (``[privacy] randomness =
        "reproducible"``): derive them all from the seed and the round (bit-for-bit
        reruns and resume-equals-uninterrupted); the guarantees then hold only
        against parties who do not know the seed.
    active_security:
        The malicious-server protocol (signed advertisements, the consistency
        check, the surviving-graph rule); ``False`` is the cheaper
        honest-but-curious protocol, which also tolerates more dropouts
        (``[privacy] secagg_active_security``).
    vote_slack:
        Active security: dropped or invalid votes each device absorbs at the
        consistency check before a top-up pass (``None``: the protocol's design
        rule; ``0``: the fewest key agreements); :class:`SecAggConfig`
        (``[privacy] secagg_vote_slack``).
    """

    bounds: Mapping[str, float] = field(default_factory=dict)
    default_bound: float = 1e4
    precision_bits: int = 24
    neighbours: int | None = None
    threshold: int | None = None
    sign_advertisements: bool = False
    max_dropout_rate: float = 0.1
    deterministic: bool = False
    active_security: bool = True
    vote_slack: int | None = None

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
        for name in ("deterministic", "active_security", "sign_advertisements"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidParameterError(f"`{name}` must be a bool; got {getattr(self, name)!r}")
        slack = self.vote_slack
        if slack is not None and (
            isinstance(slack, bool) or not isinstance(slack, int) or slack < 0
        ):
            raise InvalidParameterError(
                f"`vote_slack` must be an integer >= 0 or None; got {slack!r}"
            )

    def bound(self, name: str) -> float:
        return float(self.bounds.get(name, self.default_bound))

    def protocol_config(
        self, *, n_clients: int, vector_length: int, clip_range: float, precision_bits: int
    ) -> SecAggConfig:
        """The SecAgg+ parameters of one round with these settings."""
        return SecAggConfig(
            n_clients=n_clients,
            vector_length=vector_length,
            neighbours=self.neighbours,
            threshold=self.threshold,
            clip_range=clip_range,
            precision_bits=precision_bits,
            sign_advertisements=True if self.sign_advertisements else None,
            max_dropout_rate=self.max_dropout_rate,
            active_security=self.active_security,
            vote_slack=self.vote_slack,
        )


class DeviceEncoding(abc.ABC):
    """Device-side exact integer encoding of contributions, applied before masking.

    The three methods are the public round parameters (:meth:`precision_bits`), what
    each device computes on its own contribution (:meth:`encode`), and what the
    server computes from the exact integer sum (:meth:`decode`). Implementations
    are stateless given ``(round, num_devices)``, so every party derives the same
    public parameters.
    """

    @abc.abstractmethod
    def precision_bits(
        self, *, round: int, num_devices: int, shapes: Mapping[str, tuple[int, ...]]
    ) -> int:
        """``q`` in [2, 32]: every encoded coordinate lies in ``[−2^(q−1), 2^(q−1))``."""

    @abc.abstractmethod
    def encode(
        self, contribution: Mapping[str, np.ndarray], *, round: int, device: int, num_devices: int
    ) -> np.ndarray:
        """Device side: the signed int64 vector this device contributes."""

    @abc.abstractmethod
    def decode(
        self,
        total: np.ndarray,
        *,
        round: int,
        survivors: tuple[int, ...],
        num_devices: int,
        shapes: Mapping[str, tuple[int, ...]],
    ) -> dict[str, np.ndarray]:
        """Server side: the named sums from the exact int64 sum of the survivors' vectors."""


class SecureSum(SumProtocol):
    """SecAgg+ over the named contributions of the surviving devices.

    Parameters
    ----------
    settings:
        Public parameters (bounds, precision, graph, threat model, randomness).
    seed:
        Root of the per-round protocol seeds when ``settings.deterministic``;
        unused otherwise (it is published with the run).
    device_encoding:
        Optional exact integer encoding done on each device before masking (see
        the module doc); the per-name bounds and ``precision_bits`` of
        ``settings`` are then not used.
    """

    #: The dropout stages of the default (active-security) protocol; an instance
    #: built with ``active_security=False`` has the four honest-but-curious ones.
    stages = tuple(s.value for s in PROTOCOL_STAGES)

    def __init__(
        self,
        settings: SecureSumSettings | None = None,
        *,
        seed: int = 0,
        device_encoding: DeviceEncoding | None = None,
    ) -> None:
        self.settings = settings or SecureSumSettings()
        self.seed = int(seed)
        self.device_encoding = device_encoding
        self.stages = tuple(
            s.value for s in (PROTOCOL_STAGES if self.settings.active_security else PASSIVE_STAGES)
        )
        self.last_error_bound: dict[str, float] = {}
        self.last_bytes_per_client: float = 0.0
        # The PKI: each device's long-term signing key, made the first time it takes
        # part (in a deployment it lives on the device; only public keys travel).
        self._identity_keys: dict[int, IdentityKey] = {}

    def check_dropouts(self, dropouts: Mapping[int, str] | None) -> dict[int, str]:
        """Validate dropout stages. Under the honest-but-curious protocol, which has no
        consistency check, a device planned to drop there drops at unmasking instead."""
        out = dict(dropouts or {})
        if not self.settings.active_security:
            check = Stage.CONSISTENCY_CHECK.value
            out = {d: Stage.UNMASKING.value if s == check else s for d, s in out.items()}
        return super().check_dropouts(out)

    def aggregate(
        self,
        round: int,
        contributions: Mapping[int, Mapping[str, np.ndarray]],
        channel: Channel,
        *,
        dropouts: Mapping[int, str] | None = None,
        device_encoding: DeviceEncoding | None = None,
    ) -> SumResult:
        """Sum ``contributions`` under SecAgg+; ``device_encoding`` overrides the
        configured encoding for this round (a DP wrapper's noisy integer shares)."""
        dropouts = self.check_dropouts(dropouts)
        shapes = check_contributions(contributions)
        names = sorted(shapes)
        devices = sorted(contributions)
        if len(devices) < 2:
            raise InvalidParameterError(
                f"secure aggregation needs at least 2 devices in a round; got {len(devices)}"
            )
        enc = device_encoding or self.device_encoding
        if enc is not None:
            return self._aggregate_encoded(round, contributions, channel, dropouts, shapes, enc)
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
        config = s.protocol_config(
            n_clients=len(devices),
            vector_length=vectors[0].size,
            clip_range=1.0,
            precision_bits=s.precision_bits,
        )
        result = self._run(round, devices, vectors, config, dropouts, channel)
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

    def _run(
        self,
        round: int,
        devices: list[int],
        vectors: list[np.ndarray],
        config: SecAggConfig,
        dropouts: Mapping[int, str],
        channel: Channel,
    ) -> SecureSumResult:
        position = {dev: i for i, dev in enumerate(devices)}
        stage_drops: dict[str, set[int]] = {}
        for dev, stage in dropouts.items():
            if dev in position:
                stage_drops.setdefault(stage, set()).add(position[dev])
        round_seed = (
            int(np.random.SeedSequence([self.seed, round, 3]).generate_state(1)[0])
            if self.settings.deterministic
            else None
        )
        identity = (
            [self._identity_key(dev) for dev in devices] if config.sign_advertisements else None
        )
        result = simulate_secure_sum(
            vectors, config=config, dropouts=stage_drops, seed=round_seed, identity_keys=identity
        )
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
        return result

    def _identity_key(self, device: int) -> IdentityKey:
        key = self._identity_keys.get(device)
        if key is None:
            rng = (
                SecureRandom.from_seed(self.seed, b"secure-sum/identity", device.to_bytes(8, "big"))
                if self.settings.deterministic
                else SecureRandom()
            )
            key = IdentityKey.generate(rng)
            self._identity_keys[device] = key
        return key

    def _aggregate_encoded(
        self,
        round: int,
        contributions: Mapping[int, Mapping[str, np.ndarray]],
        channel: Channel,
        dropouts: Mapping[int, str],
        shapes: Mapping[str, tuple[int, ...]],
        enc: DeviceEncoding,
    ) -> SumResult:
        devices = sorted(contributions)
        n = len(devices)
        bits = int(enc.precision_bits(round=round, num_devices=n, shapes=shapes))
        if not 2 <= bits <= 32 or bits + (n - 1).bit_length() > _MAX_EXACT_BITS:
            raise InvalidParameterError(
                f"device encoding precision_bits must be in [2, 32] with "
                f"precision_bits + ceil(log2 n) <= {_MAX_EXACT_BITS}; got {bits} for n = {n}"
            )
        half = 1 << (bits - 1)
        vectors: list[np.ndarray] = []
        length: int | None = None
        for dev in devices:  # device side
            v = np.asarray(
                enc.encode(contributions[dev], round=round, device=dev, num_devices=n)
            ).ravel()
            if not np.issubdtype(v.dtype, np.integer):
                raise InvalidParameterError(
                    f"device encoding must return integers; got dtype {v.dtype} for device {dev}"
                )
            if length is None:
                length = v.size
            if v.size != length or v.size == 0:
                raise InvalidParameterError(
                    f"device {dev} encoded {v.size} coordinates; expected {length}"
                )
            lo, hi = int(v.min()), int(v.max())
            if lo < -half or hi >= half:
                # Never let the encoder clip a (noisy) share: refuse instead.
                raise InvalidParameterError(
                    f"device {dev}: encoded values [{lo}, {hi}] exceed the "
                    f"{bits}-bit range [{-half}, {half}); the encoding's headroom is too small"
                )
            vectors.append(v.astype(np.float64) + 0.5)
        clip_range = ((1 << bits) - 1) / 2.0  # step 2R/(2^q - 1) = 1: the encoder is exact
        config = self.settings.protocol_config(
            n_clients=n, vector_length=int(length or 1), clip_range=clip_range, precision_bits=bits
        )
        result = self._run(round, devices, vectors, config, dropouts, channel)
        m = len(result.survivors)
        exact = np.asarray(result.sum, dtype=np.float64) - 0.5 * m
        total = np.rint(exact).astype(np.int64)
        if not np.array_equal(total.astype(np.float64), exact):  # pragma: no cover - invariant
            raise AssertionError("secure sum of integer encodings is not exact")
        survivors = tuple(devices[i] for i in result.survivors)
        sums = enc.decode(total, round=round, survivors=survivors, num_devices=n, shapes=shapes)
        self.last_error_bound = {k: 0.0 for k in sums}
        self.last_bytes_per_client = float(np.mean(list(result.bytes_sent.values())))
        return SumResult(sums, survivors)
