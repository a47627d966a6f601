"""CKKS keys held by the party that owns them, and the server's encrypted arithmetic.

* :class:`SecretContext` — a device's keys. It generates the secret key, encrypts
  (symmetric encryption under the secret key: the uploaded ciphertext carries a seed
  for its uniform half, so it is half the size of a public-key ciphertext) and
  decrypts. Its keys never leave it unless asked for:
  :meth:`SecretContext.serialize` writes the secret key only with
  ``save_secret_key=True`` (TenSEAL's convention), and
  :meth:`SecretContext.public_context` is TenSEAL's ``make_context_public()``.
* :class:`PublicContext` — what a server holds: the parameters, the relinearisation
  key (only if the computation squares) and the Galois keys of exactly the rotation
  steps the computation uses, nothing else. It evaluates on
  :class:`Ciphertext` objects and cannot decrypt: it has no secret key, and a
  secret context sent to it is refused (:meth:`PublicContext.from_bytes`).

Public context envelope parts (:mod:`protocols.he.envelope`, kind
``PUBLIC_CONTEXT``): ``params``, ``galois_steps`` (``count:u16`` then ``step:i32`` *
count), ``relin_keys`` (empty when absent), ``galois_keys`` (empty when absent); a
``SECRET_CONTEXT`` has the secret key as a fifth part.

Examples
--------
>>> from protocols.he.params import MATCHING_PARAMETERS
>>> device = SecretContext(MATCHING_PARAMETERS, galois_steps=(1,))
>>> server = PublicContext.from_bytes(device.serialize())
>>> ct = server.load_ciphertexts(device.encrypt([1.0, 2.0, 3.0]))[0]
>>> out = server.rescale(server.multiply_plain(ct, [2.0, 2.0, 2.0]))
>>> np.round(device.decrypt(server.dump_ciphertexts([out]))[0, :3], 4).tolist()
[2.0, 4.0, 6.0]
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols.errors import InvalidParameterError, MessageError
from protocols.he import _seal
from protocols.he._seal import SealContext, sealapi
from protocols.he.envelope import EnvelopeKind, pack, peek_kind, unpack
from protocols.he.params import CKKSParameters

__all__ = ["Ciphertext", "Plaintext", "PublicContext", "SecretContext"]

_COUNT: Final = struct.Struct(">H")
_STEP: Final = struct.Struct(">i")


def _steps_to_bytes(steps: Sequence[int]) -> bytes:
    return _COUNT.pack(len(steps)) + b"".join(_STEP.pack(s) for s in steps)


def _steps_from_bytes(data: bytes) -> tuple[int, ...]:
    if len(data) < _COUNT.size:
        raise MessageError("the Galois step list is truncated")
    (n,) = _COUNT.unpack_from(data)
    if len(data) != _COUNT.size + n * _STEP.size:
        raise MessageError(f"the Galois step list announces {n} steps in {len(data)} bytes")
    return tuple(_STEP.unpack_from(data, _COUNT.size + i * _STEP.size)[0] for i in range(n))


def _normalise_steps(steps: Iterable[int], params: CKKSParameters) -> tuple[int, ...]:
    out = set()
    slots = params.slot_count
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise InvalidParameterError(f"a rotation step must be an int; got {s!r}")
        r = int(s) % slots
        if r == 0:
            raise InvalidParameterError(
                f"rotation step {s} is 0 modulo {slots} slots: no key needed"
            )
        out.add(r)
    return tuple(sorted(out))


def _slots(values: ArrayLike, slots: int, what: str) -> list[float]:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size > slots:
        raise InvalidParameterError(f"`{what}` has {v.size} values; a ciphertext holds {slots}")
    if not np.all(np.isfinite(v)):
        raise InvalidParameterError(f"`{what}` must be finite")
    out: list[float] = np.pad(v, (0, slots - v.size)).tolist()
    return out


class Ciphertext:
    """A ciphertext in an evaluating party's hands (opaque; serialise with
    :meth:`PublicContext.dump_ciphertexts`)."""

    __slots__ = ("_ct", "level")

    def __init__(self, ct: Any, level: int) -> None:
        self._ct = ct
        self.level = level

    @property
    def scale(self) -> float:
        return float(self._ct.scale)

    def __repr__(self) -> str:
        return f"Ciphertext(level={self.level}, scale=2^{math.log2(self.scale):.2f})"


class Plaintext:
    """A plaintext encoded for one level and scale (pre-encode what is reused)."""

    __slots__ = ("_pt", "level", "scale")

    def __init__(self, pt: Any, level: int, scale: float) -> None:
        self._pt = pt
        self.level = level
        self.scale = scale


def _seal_call(what: str, fn: Any, *args: Any) -> None:
    """Run one SEAL evaluator call; SEAL's refusals (e.g. a transparent result from a
    forged ciphertext) become :class:`MessageError`."""
    try:
        fn(*args)
    except (RuntimeError, ValueError) as exc:
        raise MessageError(f"homomorphic {what} failed: {exc}") from None


class PublicContext:
    """The evaluating (server) side: parameters and public evaluation keys only.

    Build it from a device's bytes with :meth:`from_bytes`. It never holds a secret
    key, so it cannot decrypt; every operation that needs a key it was not given
    (a rotation step, relinearisation) fails with :class:`InvalidParameterError`
    naming what is missing.
    """

    has_secret_key: Final = False

    def __init__(
        self,
        params: CKKSParameters,
        *,
        galois_steps: tuple[int, ...],
        relin_keys: Any,
        galois_keys: Any,
        envelope: bytes,
    ) -> None:
        self.params = params
        self.galois_steps = frozenset(galois_steps)
        self._relin = relin_keys
        self._galois = galois_keys
        self._envelope = envelope
        self._seal = SealContext.of(params)

    # --- (de)serialisation -------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes) -> PublicContext:
        """A server's context from a device's public-context envelope.

        Raises
        ------
        MessageError
            A corrupted or truncated envelope, parameters below 128-bit security, keys
            that do not load under the parameters or that disagree with the declared
            rotation steps — or a context that carries a secret key (a server must
            never hold one; the device should send ``serialize()`` without
            ``save_secret_key``).
        """
        if peek_kind(data) is EnvelopeKind.SECRET_CONTEXT:
            raise MessageError(
                "refused an HE context that carries a secret key: a server must never hold "
                "the device's secret key; send SecretContext.serialize() (save_secret_key=False)"
            )
        parts = unpack(data, expected=EnvelopeKind.PUBLIC_CONTEXT)
        if len(parts) != 4:
            raise MessageError(f"a public HE context has 4 parts; got {len(parts)}")
        params = CKKSParameters.from_bytes(parts[0])
        seal = SealContext.of(params)
        steps = _steps_from_bytes(parts[1])
        try:
            norm = _normalise_steps(steps, params)
        except InvalidParameterError as exc:
            raise MessageError(f"bad Galois step list: {exc}") from None
        if len(norm) != len(steps):
            raise MessageError(
                f"the Galois step list {steps} has duplicates or non-canonical steps"
            )
        relin = (
            _seal.load(sealapi.RelinKeys, seal.context, parts[2], "relinearisation keys")
            if parts[2]
            else None
        )
        galois = None
        if parts[3]:
            galois = _seal.load(sealapi.GaloisKeys, seal.context, parts[3], "Galois keys")
            n = params.poly_modulus_degree
            missing = [s for s in steps if not galois.has_key(_seal.galois_element(s, n))]
            if missing or int(galois.size()) != len(steps):
                raise MessageError(
                    f"the Galois keys do not match the declared rotation steps {list(steps)} "
                    f"(missing {missing}, {int(galois.size())} keys)"
                )
        elif steps:
            raise MessageError(f"rotation steps {list(steps)} are declared but no Galois keys sent")
        return cls(
            params, galois_steps=steps, relin_keys=relin, galois_keys=galois, envelope=bytes(data)
        )

    def to_bytes(self) -> bytes:
        """The envelope this context was built from (what a server may forward)."""
        return self._envelope

    @property
    def nbytes(self) -> int:
        return len(self._envelope)

    @property
    def has_relin_keys(self) -> bool:
        return self._relin is not None

    def __repr__(self) -> str:
        return (
            f"PublicContext(N={self.params.poly_modulus_degree}, "
            f"primes={list(self.params.coeff_mod_bit_sizes)}, galois_steps="
            f"{sorted(self.galois_steps)}, relin_keys={self.has_relin_keys}, {self.nbytes} bytes)"
        )

    def load_ciphertexts(self, data: bytes, *, count: int | None = None) -> list[Ciphertext]:
        """Fresh ciphertexts from a device (top level, scale Δ, two polynomials).

        Raises
        ------
        MessageError
            A malformed envelope or ciphertext, one under other parameters or keys'
            parameters, not fresh, or not exactly ``count`` of them.
        """
        parts = unpack(data, expected=EnvelopeKind.CIPHERTEXTS)
        if not parts or (count is not None and len(parts) != count):
            raise MessageError(f"expected {count or 'at least 1'} ciphertexts; got {len(parts)}")
        out = []
        for i, p in enumerate(parts):
            ct = _seal.load(sealapi.Ciphertext, self._seal.context, p, f"ciphertext {i}")
            if int(ct.size()) != 2 or not ct.is_ntt_form() or ct.is_transparent():
                raise MessageError(f"ciphertext {i} is not a fresh two-polynomial CKKS ciphertext")
            if self._seal.level_of(ct.parms_id()) != 0:
                raise MessageError(f"ciphertext {i} is not at the top level (not fresh)")
            if float(ct.scale) != self.params.scale:
                raise MessageError(
                    f"ciphertext {i} has scale {ct.scale!r}; expected 2^{self.params.scale_bits}"
                )
            out.append(Ciphertext(ct, 0))
        return out

    def dump_ciphertexts(self, cts: Sequence[Ciphertext]) -> bytes:
        """Serialise results for the device (one envelope)."""
        return pack(EnvelopeKind.CIPHERTEXTS, [_seal.dump(c._ct) for c in cts])

    # --- arithmetic -------------------------------------------------------------
    def _check_level(self, level: int, need: int, op: str) -> None:
        if level + need > self.params.depth:
            raise InvalidParameterError(
                f"{op} needs {need} more level(s) at level {level}; the parameters have depth "
                f"{self.params.depth}"
            )

    def encode(self, values: ArrayLike, *, level: int, scale: float | None = None) -> Plaintext:
        """Encode ``values`` (zero-padded to the slot count) for ``level`` at ``scale``
        (default Δ)."""
        sc = self.params.scale if scale is None else float(scale)
        pt = sealapi.Plaintext()
        parms_id = self._parms_id(level)
        self._seal.encoder.encode(
            _slots(values, self.params.slot_count, "values"), parms_id, sc, pt
        )
        return Plaintext(pt, level, sc)

    def _parms_id(self, level: int) -> Any:
        data = self._seal.context.first_context_data()
        for _ in range(level):
            data = data.next_context_data()
        return data.parms_id()

    def multiply_plain(
        self, ct: Ciphertext, values: ArrayLike | Plaintext, *, rescale: bool = False
    ) -> Ciphertext:
        """Slot-wise ``ct ⊙ values`` (the plaintext at scale Δ; the result's scale is
        the product — :meth:`rescale` it, here or after summing several products)."""
        self._check_level(ct.level, 1, "multiply_plain")
        pt = values if isinstance(values, Plaintext) else self.encode(values, level=ct.level)
        if pt.level != ct.level:
            raise InvalidParameterError(f"plaintext at level {pt.level}, ciphertext at {ct.level}")
        out = sealapi.Ciphertext()
        _seal_call("multiply_plain", self._seal.evaluator.multiply_plain, ct._ct, pt._pt, out)
        res = Ciphertext(out, ct.level)
        return self.rescale(res) if rescale else res

    def rescale(self, ct: Ciphertext) -> Ciphertext:
        """Divide by the current level's prime: the next level, scale / q."""
        self._check_level(ct.level, 1, "rescale")
        out = sealapi.Ciphertext()
        _seal_call("rescale", self._seal.evaluator.rescale_to_next, ct._ct, out)
        return Ciphertext(out, ct.level + 1)

    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        """``a + b`` (same level and scale)."""
        if a.level != b.level or a.scale != b.scale:
            raise InvalidParameterError("add needs ciphertexts of the same level and scale")
        out = sealapi.Ciphertext()
        _seal_call("add", self._seal.evaluator.add, a._ct, b._ct, out)
        return Ciphertext(out, a.level)

    def add_plain(self, ct: Ciphertext, values: ArrayLike | Plaintext) -> Ciphertext:
        """``ct + values`` (encoded at the ciphertext's level and scale)."""
        pt = (
            values
            if isinstance(values, Plaintext)
            else self.encode(values, level=ct.level, scale=ct.scale)
        )
        if pt.level != ct.level or pt.scale != ct.scale:
            raise InvalidParameterError(
                "add_plain needs a plaintext at the ciphertext's level and scale"
            )
        out = sealapi.Ciphertext()
        _seal_call("add_plain", self._seal.evaluator.add_plain, ct._ct, pt._pt, out)
        return Ciphertext(out, ct.level)

    def rotate(self, ct: Ciphertext, step: int) -> Ciphertext:
        """Left rotation by ``step`` slots (slot s receives slot s + step)."""
        r = int(step) % self.params.slot_count
        if r not in self.galois_steps:
            raise InvalidParameterError(
                f"no Galois key for rotation step {step}; this context has keys for "
                f"{sorted(self.galois_steps)}"
            )
        out = sealapi.Ciphertext()
        _seal_call("rotation", self._seal.evaluator.rotate_vector, ct._ct, r, self._galois, out)
        return Ciphertext(out, ct.level)

    def square(self, ct: Ciphertext) -> Ciphertext:
        """Slot-wise ``ct²``, relinearised and rescaled (one level)."""
        if self._relin is None:
            raise InvalidParameterError("square needs relinearisation keys; this context has none")
        self._check_level(ct.level, 1, "square")
        out = sealapi.Ciphertext()
        _seal_call("square", self._seal.evaluator.square, ct._ct, out)
        _seal_call("relinearisation", self._seal.evaluator.relinearize_inplace, out, self._relin)
        return self.rescale(Ciphertext(out, ct.level))


class SecretContext:
    """A device's CKKS keys: encrypts, decrypts, and hands out a public context.

    Parameters
    ----------
    params:
        The parameter set (128-bit security is checked by :class:`CKKSParameters`).
    galois_steps:
        The rotation steps the server's computation uses; only their keys are
        generated (each ≈ 0.7 MB at N = 8192 with four primes).
    relin_keys:
        Generate the relinearisation key (the computation multiplies two ciphertexts).

    The secret key comes from SEAL's key generator, seeded by the OS CSPRNG; it is
    never derived from a run seed. Pickling is refused (use :meth:`serialize` with
    ``save_secret_key=True`` if a device must store its keys).
    """

    def __init__(
        self,
        params: CKKSParameters,
        *,
        galois_steps: Iterable[int] = (),
        relin_keys: bool = False,
        _secret: Any = None,
        _public_parts: tuple[bytes, bytes, bytes, bytes] | None = None,
    ) -> None:
        if not isinstance(params, CKKSParameters):
            raise InvalidParameterError(f"`params` must be CKKSParameters; got {params!r}")
        self.params = params
        self._seal = SealContext.of(params)
        ctx = self._seal.context
        if _secret is None:
            keygen = sealapi.KeyGenerator(ctx)
            self._secret = keygen.secret_key()
            steps = _normalise_steps(galois_steps, params)
            n = params.poly_modulus_degree
            relin = _seal.dump(keygen.create_relin_keys()) if relin_keys else b""
            galois = (
                _seal.dump(keygen.create_galois_keys([_seal.galois_element(s, n) for s in steps]))
                if steps
                else b""
            )
            self._public_parts = (params.to_bytes(), _steps_to_bytes(steps), relin, galois)
        else:
            assert _public_parts is not None
            self._secret = _secret
            self._public_parts = _public_parts
        self.galois_steps = _steps_from_bytes(self._public_parts[1])
        self.has_relin_keys = bool(self._public_parts[2])
        self._encryptor = sealapi.Encryptor(ctx, self._secret)
        self._decryptor = sealapi.Decryptor(ctx, self._secret)

    def __repr__(self) -> str:  # never show key material
        return (
            f"SecretContext(N={self.params.poly_modulus_degree}, "
            f"primes={list(self.params.coeff_mod_bit_sizes)}, galois_steps="
            f"{list(self.galois_steps)}, relin_keys={self.has_relin_keys})"
        )

    def __reduce__(self) -> Any:
        raise TypeError(
            "a SecretContext holds a secret key and is not pickled; use "
            "serialize(save_secret_key=True) explicitly"
        )

    # --- keys ---------------------------------------------------------------------
    def serialize(self, *, save_secret_key: bool = False) -> bytes:
        """The context as bytes: public (what a server may receive) by default; with
        ``save_secret_key=True`` a secret context for the device's own storage, which
        :meth:`PublicContext.from_bytes` refuses."""
        if not save_secret_key:
            return pack(EnvelopeKind.PUBLIC_CONTEXT, self._public_parts)
        return pack(EnvelopeKind.SECRET_CONTEXT, [*self._public_parts, _seal.dump(self._secret)])

    @classmethod
    def deserialize(cls, data: bytes) -> SecretContext:
        """A device's own keys back from ``serialize(save_secret_key=True)``.

        Raises
        ------
        MessageError
            Not a secret context (a public context cannot decrypt), or malformed.
        """
        parts = unpack(data, expected=EnvelopeKind.SECRET_CONTEXT)
        if len(parts) != 5:
            raise MessageError(f"a secret HE context has 5 parts; got {len(parts)}")
        params = CKKSParameters.from_bytes(parts[0])
        # Validates the public parts as a server would.
        PublicContext.from_bytes(pack(EnvelopeKind.PUBLIC_CONTEXT, parts[:4]))
        secret = _seal.load(
            sealapi.SecretKey, SealContext.of(params).context, parts[4], "secret key"
        )
        return cls(params, _secret=secret, _public_parts=(parts[0], parts[1], parts[2], parts[3]))

    def public_context(self) -> PublicContext:
        """The server's view of these keys (TenSEAL's ``make_context_public()``)."""
        return PublicContext.from_bytes(self.serialize())

    # --- data ---------------------------------------------------------------------
    def encrypt(self, *rows: ArrayLike) -> bytes:
        """One fresh ciphertext per row (each ≤ slot count values, zero-padded), in one
        envelope. Symmetric (secret-key) encryption: half the bytes of a public-key
        ciphertext, since the uniform polynomial travels as a seed."""
        if not rows:
            raise InvalidParameterError("encrypt() needs at least one row")
        parts = []
        for i, row in enumerate(rows):
            pt = sealapi.Plaintext()
            self._seal.encoder.encode(
                _slots(row, self.params.slot_count, f"rows[{i}]"), self.params.scale, pt
            )
            parts.append(_seal.dump(self._encryptor.encrypt_symmetric(pt)))
        return pack(EnvelopeKind.CIPHERTEXTS, parts)

    def decrypt(self, data: bytes, *, count: int | None = None) -> NDArray[np.float64]:
        """The slot values of every ciphertext in ``data``: ``(n_ciphertexts, slots)``.

        Raises
        ------
        MessageError
            A malformed envelope or ciphertext, not ``count`` of them, or one that does
            not decrypt to finite values within the parameters' range.
        """
        parts = unpack(data, expected=EnvelopeKind.CIPHERTEXTS)
        if not parts or (count is not None and len(parts) != count):
            raise MessageError(f"expected {count or 'at least 1'} ciphertexts; got {len(parts)}")
        out = np.empty((len(parts), self.params.slot_count))
        for i, p in enumerate(parts):
            ct = _seal.load(sealapi.Ciphertext, self._seal.context, p, f"ciphertext {i}")
            scale = float(ct.scale)
            if int(ct.size()) not in (2, 3) or not (math.isfinite(scale) and scale >= 1.0):
                raise MessageError(f"ciphertext {i} has size {ct.size()} and scale {scale!r}")
            pt = sealapi.Plaintext()
            try:
                self._decryptor.decrypt(ct, pt)
                vals = np.asarray(self._seal.encoder.decode_double(pt), dtype=np.float64)
            except Exception as exc:
                raise MessageError(f"ciphertext {i} does not decrypt: {exc}") from None
            if not np.all(np.isfinite(vals)):
                raise MessageError(f"ciphertext {i} decrypts to non-finite values")
            out[i] = vals
        return out
