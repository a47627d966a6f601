"""Packed encrypted linear algebra: what a server computes on a device's ciphertext.

Each computation is a *plan* with three parts that run on different parties:

* ``encode_input(x)`` — the device lays its vector out in the slots (it knows x, so
  any replication or tiling is free);
* ``evaluate(ctx, ct)`` — the server's homomorphic evaluation with a
  :class:`~protocols.he.context.PublicContext`;
* ``decode_output(slots)`` — the device reads its results from the decrypted slots.

``galois_steps`` and ``relin_keys`` say which evaluation keys the server needs, so
the device generates those and nothing else. ``reference(x)`` is the plaintext
computation the tests compare against.

:class:`PackedMatVec` — y = A·x + c for a tall plaintext matrix A (n × m, n ≫ m)
    and an encrypted x, by the diagonal method (Halevi & Shoup, "Algorithms in
    HElib", CRYPTO 2014): the device tiles x with period D = 2^⌈log2 m⌉, the server
    computes the D rotations of the one uploaded ciphertext once (D − 1 rotations by
    one step: one Galois key) and then, for every chunk of N/2 rows, one plaintext
    product per diagonal — no rotation per chunk. Depth 1, no relinearisation key.
:class:`SquareNetwork` — logits_k = b_k + Σ_j a_kj (w_j·x + c_j)² with a ≥ 0: a
    one-hidden-layer network with square activation. The device replicates each
    coordinate of x over the hidden units; the server multiplies by the first-layer
    weights (scaled by √a), sums over the input coordinates by rotate-and-add, adds
    the bias, squares, and sums each output's hidden units by rotate-and-add.
    Depth 2, the relinearisation key and ⌈log_r D⌉ + ⌈log_r H⌉ Galois keys for
    radix r (default 4: each stage adds r − 1 rotations of one key).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols.errors import InvalidParameterError, MessageError
from protocols.he.context import Ciphertext, Plaintext, PublicContext
from protocols.he.params import CKKSParameters

__all__ = [
    "EvaluationStats",
    "MatVecLayout",
    "PackedMatVec",
    "SquareNetwork",
    "SquareNetworkLayout",
    "rotation_stages",
    "sum_slots",
]


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def rotation_stages(count: int, stride: int, radix: int) -> list[tuple[int, int]]:
    """The (rotation step, fan-in) of each stage of a rotate-and-add sum of ``count``
    slots ``stride`` apart (``count`` and ``radix`` powers of two).

    A stage of fan-in f adds f − 1 successive rotations by one step; the steps are
    stride·radix^0, stride·radix^1, …, one Galois key each.

    Examples
    --------
    >>> rotation_stages(64, 1, 4)
    [(1, 4), (4, 4), (16, 4)]
    >>> rotation_stages(32, 8, 4)
    [(8, 4), (32, 4), (128, 2)]
    """
    for name, v in (("count", count), ("radix", radix)):
        if v < 1 or v & (v - 1):
            raise InvalidParameterError(f"`{name}` must be a power of two >= 1; got {v!r}")
    if radix < 2:
        raise InvalidParameterError(f"`radix` must be >= 2; got {radix!r}")
    out = []
    step, left = stride, count
    while left > 1:
        f = min(radix, left)
        out.append((step, f))
        step *= f
        left //= f
    return out


@dataclass
class EvaluationStats:
    """Operation counts of the last evaluation (for benchmarks and metrics)."""

    rotations: int = 0
    plain_products: int = 0
    squares: int = 0
    output_ciphertexts: int = 0


def sum_slots(
    ctx: PublicContext,
    ct: Ciphertext,
    *,
    count: int,
    stride: int,
    radix: int,
    stats: EvaluationStats | None = None,
) -> Ciphertext:
    """Slot s of the result is Σ_{t < count} ct[s + t·stride] (indices mod the slot
    count), by :func:`rotation_stages`."""
    acc = ct
    for step, fan_in in rotation_stages(count, stride, radix):
        y, total = acc, acc
        for _ in range(fan_in - 1):
            y = ctx.rotate(y, step)
            total = ctx.add(total, y)
            if stats is not None:
                stats.rotations += 1
        acc = total
    return acc


def _check_matrix(a: ArrayLike, name: str, ndim: int) -> NDArray[np.float64]:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != ndim or 0 in arr.shape or not np.all(np.isfinite(arr)):
        raise InvalidParameterError(
            f"`{name}` must be a finite non-empty {ndim}-d array; got {arr.shape}"
        )
    return arr


@dataclass(frozen=True)
class MatVecLayout:
    """The public shape of a :class:`PackedMatVec`: all a device needs to lay out its
    input and read its results (no matrix entry).

    Parameters
    ----------
    rows, cols:
        n and m of the matrix.
    params:
        The CKKS parameters.
    """

    rows: int
    cols: int
    params: CKKSParameters

    def __post_init__(self) -> None:
        for name in ("rows", "cols"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InvalidParameterError(f"`{name}` must be an int >= 1; got {v!r}")
        if self.params.depth < 1:
            raise InvalidParameterError("a matrix-vector product needs parameters of depth >= 1")
        if _pow2(self.cols) > self.params.slot_count:
            raise InvalidParameterError(
                f"vectors of dimension {self.cols} do not fit {self.params.slot_count} slots"
            )

    @property
    def width(self) -> int:
        """D: the input padded to a power of two (its tiling period)."""
        return _pow2(self.cols)

    @property
    def chunks(self) -> int:
        """Result ciphertexts: one per N/2 rows."""
        return math.ceil(self.rows / self.params.slot_count)

    @property
    def galois_steps(self) -> tuple[int, ...]:
        return (1,) if self.width > 1 else ()

    relin_keys = False

    def encode_input(self, x: ArrayLike) -> NDArray[np.float64]:
        """Device: x zero-padded to D and tiled over every slot."""
        v = np.asarray(x, dtype=np.float64).ravel()
        if v.shape != (self.cols,) or not np.all(np.isfinite(v)):
            raise InvalidParameterError(f"`x` must be a finite vector of length {self.cols}")
        reps = self.params.slot_count // self.width
        out: NDArray[np.float64] = np.tile(np.pad(v, (0, self.width - v.size)), reps)
        return out

    def decode_output(self, slots: NDArray[np.float64]) -> NDArray[np.float64]:
        """Device: y from the decrypted result ciphertexts ``(chunks, slots)``."""
        arr = np.asarray(slots, dtype=np.float64)
        if arr.shape != (self.chunks, self.params.slot_count):
            raise MessageError(
                f"expected {self.chunks} result ciphertexts of {self.params.slot_count} slots; "
                f"got {arr.shape}"
            )
        out: NDArray[np.float64] = arr.ravel()[: self.rows].copy()
        return out


@dataclass(eq=False)
class PackedMatVec:
    """y = A·x + c on an encrypted x (diagonal method, one Galois key, depth 1).

    Parameters
    ----------
    matrix:
        A, ``(n, m)`` with m ≤ N/2 (rows are e.g. the pool users' vectors).
    offset:
        c, ``(n,)`` (default zeros).
    params:
        The CKKS parameters (depth ≥ 1).
    cache_plaintexts:
        Keep the encoded diagonals after the first evaluation (≈ N·8·(primes − 1)
        bytes each, D per chunk of N/2 rows); off for very large n, which then
        re-encodes per evaluation.

    Examples
    --------
    >>> from protocols.he.context import SecretContext
    >>> from protocols.he.params import MATCHING_PARAMETERS
    >>> a = np.array([[1.0, 2.0], [3.0, 4.0], [0.5, 0.0]])
    >>> plan = PackedMatVec(a, params=MATCHING_PARAMETERS)
    >>> layout = plan.layout  # public: what the device is told
    >>> dev = SecretContext(MATCHING_PARAMETERS, galois_steps=layout.galois_steps)
    >>> srv = dev.public_context()
    >>> ct = srv.load_ciphertexts(dev.encrypt(layout.encode_input([1.0, -1.0])))[0]
    >>> out = srv.dump_ciphertexts(plan.evaluate(srv, ct))
    >>> np.round(layout.decode_output(dev.decrypt(out)), 4).tolist()
    [-1.0, -1.0, 0.5]
    """

    matrix: NDArray[np.float64]
    offset: NDArray[np.float64] | None = None
    params: CKKSParameters = field(kw_only=True)
    cache_plaintexts: bool = field(default=True, kw_only=True)
    last_stats: EvaluationStats = field(default_factory=EvaluationStats, init=False)

    def __post_init__(self) -> None:
        self.matrix = _check_matrix(self.matrix, "matrix", 2)
        n, m = self.matrix.shape
        c = np.zeros(n) if self.offset is None else _check_matrix(self.offset, "offset", 1)
        if c.shape != (n,):
            raise InvalidParameterError(f"`offset` must have shape ({n},); got {c.shape}")
        self.offset = c
        self.layout = MatVecLayout(n, m, self.params)
        s = self.params.slot_count
        empty = [c for c in range(self.layout.chunks) if not self.matrix[c * s : (c + 1) * s].any()]
        if empty:
            raise InvalidParameterError(
                f"rows of chunk(s) {empty} ({s} rows each) are all zero: their product would "
                "be a transparent ciphertext; drop all-zero rows (their result is the offset)"
            )
        self._plain: list[list[Plaintext | None]] | None = None

    @property
    def galois_steps(self) -> tuple[int, ...]:
        return self.layout.galois_steps

    relin_keys = False

    @property
    def width(self) -> int:
        return self.layout.width

    def encode_input(self, x: ArrayLike) -> NDArray[np.float64]:
        return self.layout.encode_input(x)

    def decode_output(self, slots: NDArray[np.float64]) -> NDArray[np.float64]:
        return self.layout.decode_output(slots)

    def reference(self, x: ArrayLike) -> NDArray[np.float64]:
        assert self.offset is not None
        out: NDArray[np.float64] = self.matrix @ np.asarray(x, dtype=np.float64) + self.offset
        return out

    def _diagonals(self, ctx: PublicContext, chunk: int) -> list[Plaintext | None]:
        s, width = self.params.slot_count, self.layout.width
        n, m = self.matrix.shape
        rows = np.arange(chunk * s, (chunk + 1) * s)
        valid = rows < n
        a = np.zeros((s, width))
        a[valid, :m] = self.matrix[rows[valid]]
        out: list[Plaintext | None] = []
        idx = np.arange(s)
        for j in range(width):
            diag = a[idx, (idx + j) % width]
            out.append(ctx.encode(diag, level=0) if diag.any() else None)
        return out

    def evaluate(self, ctx: PublicContext, ct: Ciphertext) -> list[Ciphertext]:
        """Server: one result ciphertext per chunk of N/2 rows (level 1)."""
        if ctx.params != self.params:
            raise InvalidParameterError("the context's parameters differ from the plan's")
        if ct.level != 0:
            raise MessageError("PackedMatVec needs a fresh ciphertext")
        stats = EvaluationStats()
        rots = [ct]
        for _ in range(1, self.layout.width):
            rots.append(ctx.rotate(rots[-1], 1))
            stats.rotations += 1
        chunks = self.layout.chunks
        if self._plain is None or not self.cache_plaintexts:
            plain = [self._diagonals(ctx, c) for c in range(chunks)]
            if self.cache_plaintexts:
                self._plain = plain
        else:
            plain = self._plain
        assert self.offset is not None
        s = self.params.slot_count
        out = []
        for c in range(chunks):
            acc: Ciphertext | None = None
            for j, pt in enumerate(plain[c]):
                if pt is None:
                    continue
                prod = ctx.multiply_plain(rots[j], pt)
                stats.plain_products += 1
                acc = prod if acc is None else ctx.add(acc, prod)
            assert acc is not None  # every chunk has a non-zero entry (__post_init__)
            acc = ctx.rescale(acc)
            off = self.offset[c * s : (c + 1) * s]
            if off.any():
                acc = ctx.add_plain(acc, off)
            out.append(acc)
        stats.output_ciphertexts = len(out)
        self.last_stats = stats
        return out


@dataclass(frozen=True)
class SquareNetworkLayout:
    """The public shape of a :class:`SquareNetwork`: the slot layout, the Galois steps
    and how to read the logits — no weight.

    Parameters
    ----------
    inputs, hidden, outputs:
        d, H and K of the network.
    params:
        CKKS parameters of depth >= 2.
    radix:
        Fan-in of each rotate-and-add stage (a power of two >= 2).
    """

    inputs: int
    hidden: int
    outputs: int
    params: CKKSParameters
    radix: int = 4

    def __post_init__(self) -> None:
        for name in ("inputs", "hidden", "outputs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InvalidParameterError(f"`{name}` must be an int >= 1; got {v!r}")
        if self.params.depth < 2:
            raise InvalidParameterError("a square network needs parameters of depth >= 2")
        if self.radix < 2 or self.radix & (self.radix - 1):
            raise InvalidParameterError(f"`radix` must be a power of two >= 2; got {self.radix!r}")
        if self.units < self.hidden_width:
            raise InvalidParameterError(
                f"input dimension {self.inputs} (padded {self.width}) × hidden units "
                f"{self.hidden} (padded {self.hidden_width}) exceeds "
                f"{self.params.slot_count} slots: use fewer hidden units or N = "
                f"{2 * self.params.poly_modulus_degree}"
            )

    @property
    def width(self) -> int:
        """D: the input padded to a power of two."""
        return _pow2(self.inputs)

    @property
    def hidden_width(self) -> int:
        return _pow2(self.hidden)

    @property
    def units(self) -> int:
        """R: hidden units per group (outputs × padded hidden, capped by the slots)."""
        s = self.params.slot_count
        if self.width > s:
            return 0
        return min(_pow2(self.outputs * self.hidden_width), s // self.width)

    @property
    def outputs_per_group(self) -> int:
        return self.units // self.hidden_width

    @property
    def groups(self) -> int:
        """Result ciphertexts."""
        return math.ceil(self.outputs / self.outputs_per_group)

    def _stages(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        return (
            rotation_stages(self.width, self.units, self.radix),
            rotation_stages(self.hidden_width, 1, self.radix),
        )

    @property
    def galois_steps(self) -> tuple[int, ...]:
        first, second = self._stages()
        return tuple(sorted({s for s, _ in first + second}))

    relin_keys = True

    @property
    def rotations(self) -> int:
        """Rotations per group and evaluation."""
        first, second = self._stages()
        return sum(f - 1 for _, f in first + second)

    def encode_input(self, x: ArrayLike) -> NDArray[np.float64]:
        """Device: slot i·R + r holds x_i for every unit r < R."""
        v = np.asarray(x, dtype=np.float64).ravel()
        if v.shape != (self.inputs,) or not np.all(np.isfinite(v)):
            raise InvalidParameterError(f"`x` must be a finite vector of length {self.inputs}")
        out: NDArray[np.float64] = np.repeat(np.pad(v, (0, self.width - v.size)), self.units)
        return out

    def decode_output(self, slots: NDArray[np.float64]) -> NDArray[np.float64]:
        """Device: the K logits from the decrypted group ciphertexts (slot k·H of each)."""
        arr = np.asarray(slots, dtype=np.float64)
        if arr.shape != (self.groups, self.params.slot_count):
            raise MessageError(
                f"expected {self.groups} result ciphertexts of {self.params.slot_count} slots; "
                f"got {arr.shape}"
            )
        idx = np.arange(self.outputs_per_group) * self.hidden_width
        out: NDArray[np.float64] = arr[:, idx].ravel()[: self.outputs].copy()
        return out

    def to_array(self) -> NDArray[np.int64]:
        """``[inputs, hidden, outputs, radix]`` (with :meth:`CKKSParameters.to_bytes`,
        what a server publishes)."""
        return np.array([self.inputs, self.hidden, self.outputs, self.radix], dtype=np.int64)

    @classmethod
    def from_array(cls, arr: ArrayLike, params: CKKSParameters) -> SquareNetworkLayout:
        a = np.asarray(arr)
        if a.shape != (4,) or a.dtype.kind not in "iu":
            raise MessageError(f"a square-network layout is 4 integers; got {a.dtype} {a.shape}")
        try:
            return cls(int(a[0]), int(a[1]), int(a[2]), params, radix=int(a[3]))
        except InvalidParameterError as exc:
            raise MessageError(f"bad square-network layout: {exc}") from None


@dataclass(eq=False)
class SquareNetwork:
    """logits_k = b_k + Σ_j a_kj (w_j·x + c_j)², with a ≥ 0 (see the module doc).

    Parameters
    ----------
    w1:
        ``(d, H)`` first-layer weights (column j is w_j).
    b1:
        ``(H,)`` first-layer bias c.
    a:
        ``(K, H)`` non-negative output weights.
    b2:
        ``(K,)`` output bias.
    params:
        CKKS parameters of depth >= 2.
    radix:
        Fan-in of each rotate-and-add stage (power of two >= 2): more radix, fewer
        Galois keys and more rotations.

    Use :meth:`from_layers` for a network with signed output weights.
    """

    w1: NDArray[np.float64]
    b1: NDArray[np.float64]
    a: NDArray[np.float64]
    b2: NDArray[np.float64]
    params: CKKSParameters = field(kw_only=True)
    radix: int = field(default=4, kw_only=True)
    last_stats: EvaluationStats = field(default_factory=EvaluationStats, init=False)

    def __post_init__(self) -> None:
        self.w1 = _check_matrix(self.w1, "w1", 2)
        d, h = self.w1.shape
        self.b1 = _check_matrix(self.b1, "b1", 1)
        self.a = _check_matrix(self.a, "a", 2)
        self.b2 = _check_matrix(self.b2, "b2", 1)
        k = self.b2.shape[0]
        if self.b1.shape != (h,) or self.a.shape != (k, h):
            raise InvalidParameterError(
                f"shapes disagree: w1 {self.w1.shape}, b1 {self.b1.shape}, a {self.a.shape}, "
                f"b2 {self.b2.shape}"
            )
        if (self.a < 0).any():
            raise InvalidParameterError("`a` must be non-negative (use SquareNetwork.from_layers)")
        self.layout = SquareNetworkLayout(d, h, k, self.params, radix=self.radix)
        self._weights: list[tuple[Plaintext, NDArray[np.float64], NDArray[np.float64]]] | None = (
            None
        )

    @classmethod
    def from_layers(
        cls,
        w1: ArrayLike,
        b1: ArrayLike,
        w2: ArrayLike,
        b2: ArrayLike,
        *,
        params: CKKSParameters,
        radix: int = 4,
    ) -> SquareNetwork:
        """The network of s(x) = W2ᵀ (W1ᵀx + b1)² + b2 with *signed* W2 ``(H, K)``.

        Every output gets the same extra term g(x) = Σ_j c_j z_j² with
        c_j = max(0, −min_k W2[j, k]), which makes every output weight
        a_kj = W2[j, k] + c_j non-negative: the logits change by a common g(x), so the
        argmax (and every logit difference) is exactly the original network's.
        """
        w2a = _check_matrix(w2, "w2", 2)
        shift = np.maximum(0.0, -w2a.min(axis=1))
        return cls(
            np.asarray(w1, dtype=np.float64),
            np.asarray(b1, dtype=np.float64),
            (w2a + shift[:, None]).T.copy(),
            np.asarray(b2, dtype=np.float64),
            params=params,
            radix=radix,
        )

    @property
    def galois_steps(self) -> tuple[int, ...]:
        return self.layout.galois_steps

    relin_keys = True

    def encode_input(self, x: ArrayLike) -> NDArray[np.float64]:
        return self.layout.encode_input(x)

    def decode_output(self, slots: NDArray[np.float64]) -> NDArray[np.float64]:
        return self.layout.decode_output(slots)

    def reference(self, x: ArrayLike) -> NDArray[np.float64]:
        z = np.asarray(x, dtype=np.float64) @ self.w1 + self.b1
        out: NDArray[np.float64] = (z**2) @ self.a.T + self.b2
        return out

    def _group_weights(
        self, ctx: PublicContext
    ) -> list[tuple[Plaintext, NDArray[np.float64], NDArray[np.float64]]]:
        if self._weights is not None:
            return self._weights
        lay = self.layout
        d, h = self.w1.shape
        out = []
        for g in range(lay.groups):
            m = np.zeros((lay.width, lay.units))
            bias = np.zeros(lay.units)
            b2 = np.zeros(lay.units)
            for kl in range(lay.outputs_per_group):
                kk = g * lay.outputs_per_group + kl
                if kk >= lay.outputs:
                    break
                root = np.sqrt(self.a[kk])
                cols = slice(kl * lay.hidden_width, kl * lay.hidden_width + h)
                m[:d, cols] = self.w1 * root
                bias[cols] = self.b1 * root
                b2[kl * lay.hidden_width] = self.b2[kk]
            out.append((ctx.encode(m.ravel(), level=0), bias, b2))
        self._weights = out
        return out

    def evaluate(self, ctx: PublicContext, ct: Ciphertext) -> list[Ciphertext]:
        """Server: one result ciphertext per output group (level 2)."""
        if ctx.params != self.params:
            raise InvalidParameterError("the context's parameters differ from the plan's")
        if ct.level != 0:
            raise MessageError("SquareNetwork needs a fresh ciphertext")
        lay = self.layout
        stats = EvaluationStats()
        out = []
        for m, bias, b2 in self._group_weights(ctx):
            z = ctx.multiply_plain(ct, m, rescale=True)
            stats.plain_products += 1
            z = sum_slots(ctx, z, count=lay.width, stride=lay.units, radix=lay.radix, stats=stats)
            z = ctx.add_plain(z, bias)
            sq = ctx.square(z)
            stats.squares += 1
            y = sum_slots(ctx, sq, count=lay.hidden_width, stride=1, radix=lay.radix, stats=stats)
            out.append(ctx.add_plain(y, b2))
        stats.output_ciphertexts = len(out)
        self.last_stats = stats
        return out
