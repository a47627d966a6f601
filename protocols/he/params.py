"""CKKS parameter sets, checked against the 128-bit security table.

A parameter set is the ring degree N (``poly_modulus_degree``), the bit sizes of the
primes of the coefficient modulus q = q_0 · q_1 ⋯ q_L · P (the last one, P, is the
key-switching "special" prime) and the scale Δ = 2^``scale_bits`` at which values are
encoded. The security of RLWE depends on N and on log2 q; the HomomorphicEncryption.org
standard (Albrecht et al., "Homomorphic Encryption Security Standard", v1.1, 2018,
Table 1, classical 128-bit security, ternary/uniform secret) allows at most

=======  ===================
N        max log2 q (bits)
=======  ===================
1024     27
2048     54
4096     109
8192     218
16384    438
32768    881
=======  ===================

and :class:`CKKSParameters` refuses anything beyond, naming the limit. Precision and
depth follow from the primes: each multiplication consumes one middle prime (which
should be close to Δ), and the first prime must exceed Δ by the headroom the largest
decrypted magnitude needs (|value| < 2^(q_0 bits − scale bits − 1)).

Examples
--------
>>> SELECTOR_PARAMETERS.depth, SELECTOR_PARAMETERS.slot_count
(2, 4096)
>>> CKKSParameters(8192, (60, 40, 40, 40, 60), 40)
Traceback (most recent call last):
...
protocols.errors.InvalidParameterError: CKKS parameters are not acceptable: at 128-bit security (HomomorphicEncryption.org standard) N = 8192 allows at most 218 bits of coefficient modulus; got 240 bits (60, 40, 40, 40, 60): use fewer or smaller primes, or N = 16384
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from protocols.errors import InvalidParameterError, MessageError

__all__ = [
    "MATCHING_PARAMETERS",
    "MAX_COEFF_MODULUS_BITS_128",
    "SELECTOR_PARAMETERS",
    "CKKSParameters",
]

#: HomomorphicEncryption.org security standard v1.1, Table 1: the largest total
#: coefficient modulus (bits) at 128-bit classical security for each ring degree N.
MAX_COEFF_MODULUS_BITS_128: Final[Mapping[int, int]] = MappingProxyType(
    {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
)

# SEAL's limits on one prime of the coefficient modulus.
_MIN_PRIME_BITS: Final = 20
_MAX_PRIME_BITS: Final = 60
_WIRE: Final = struct.Struct(">IBB")  # N, scale bits, number of primes


@dataclass(frozen=True)
class CKKSParameters:
    """A CKKS parameter set at 128-bit security.

    Parameters
    ----------
    poly_modulus_degree:
        N, a power of two in [1024, 32768]; N/2 complex slots (used as real slots).
    coeff_mod_bit_sizes:
        Bit sizes of the primes q_0, …, q_L, P (at least two: one data prime and the
        special prime), each in [20, 60]; their sum must not exceed
        :data:`MAX_COEFF_MODULUS_BITS_128` [N]. The special prime P (last) must be at
        least as large as every other prime (key-switching noise).
    scale_bits:
        log2 Δ, in [20, 60]; at most every middle prime and strictly below q_0.

    Raises
    ------
    InvalidParameterError
        Listing every problem at once (e.g. a total modulus over the 128-bit limit,
        naming the limit).
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(self.coeff_mod_bit_sizes))
        problems = self.problems()
        if problems:
            raise InvalidParameterError(
                "CKKS parameters are not acceptable: " + "; ".join(problems)
            )

    def problems(self) -> list[str]:
        """Every reason this parameter set is refused (empty when it is acceptable)."""
        n, bits, scale = self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.scale_bits
        out: list[str] = []
        if isinstance(n, bool) or not isinstance(n, int) or n not in MAX_COEFF_MODULUS_BITS_128:
            out.append(
                f"`poly_modulus_degree` must be one of {sorted(MAX_COEFF_MODULUS_BITS_128)}; "
                f"got {n!r}"
            )
        if len(bits) < 2 or not all(
            isinstance(b, int)
            and not isinstance(b, bool)
            and _MIN_PRIME_BITS <= b <= _MAX_PRIME_BITS
            for b in bits
        ):
            out.append(
                f"`coeff_mod_bit_sizes` must hold at least two prime sizes, each an int in "
                f"[{_MIN_PRIME_BITS}, {_MAX_PRIME_BITS}]; got {bits!r}"
            )
            return out
        if n in MAX_COEFF_MODULUS_BITS_128:
            limit = MAX_COEFF_MODULUS_BITS_128[n]
            if sum(bits) > limit:
                larger = [m for m, lim in MAX_COEFF_MODULUS_BITS_128.items() if lim >= sum(bits)]
                hint = f", or N = {larger[0]}" if larger else ""
                out.append(
                    f"at 128-bit security (HomomorphicEncryption.org standard) N = {n} allows at "
                    f"most {limit} bits of coefficient modulus; got {sum(bits)} bits {bits!r}: "
                    f"use fewer or smaller primes{hint}"
                )
        if bits[-1] < max(bits[:-1]):
            out.append(
                f"the special prime (last of `coeff_mod_bit_sizes`) must be at least as large "
                f"as every other prime; got {bits!r}"
            )
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int)
            or not (_MIN_PRIME_BITS <= scale <= _MAX_PRIME_BITS)
        ):
            out.append(f"`scale_bits` must be an int in [20, 60]; got {scale!r}")
            return out
        if scale >= bits[0]:
            out.append(
                f"`scale_bits` ({scale}) must be below the first prime ({bits[0]} bits): the "
                "first prime holds the decrypted value"
            )
        middle = bits[1:-1]
        if middle and scale > min(middle):
            out.append(
                f"`scale_bits` ({scale}) must not exceed the middle primes {middle!r}: each "
                "rescaling divides by one"
            )
        return out

    # --- derived quantities -----------------------------------------------------------
    @property
    def slot_count(self) -> int:
        """Real values per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Multiplications (rescalings) a fresh ciphertext supports: the middle primes."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def scale(self) -> float:
        """Δ = 2^scale_bits."""
        return float(2**self.scale_bits)

    @property
    def max_magnitude(self) -> float:
        """The largest |value| a fully rescaled ciphertext decrypts correctly (a bound
        with one bit of margin): 2^(q_0 bits − scale bits − 1)."""
        return float(2 ** (self.coeff_mod_bit_sizes[0] - self.scale_bits - 1))

    # --- wire format ---------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """``N:u32 scale_bits:u8 count:u8 bits:u8*count`` (big-endian)."""
        bits = self.coeff_mod_bit_sizes
        return _WIRE.pack(self.poly_modulus_degree, self.scale_bits, len(bits)) + bytes(bits)

    @classmethod
    def from_bytes(cls, data: bytes) -> CKKSParameters:
        """Inverse of :meth:`to_bytes`; the parameters are re-checked (a peer cannot
        hand over a weaker set).

        Raises
        ------
        MessageError
            Malformed bytes, or parameters below 128-bit security (naming the limit).
        """
        if len(data) < _WIRE.size:
            raise MessageError(f"CKKS parameters need {_WIRE.size} header bytes; got {len(data)}")
        n, scale, count = _WIRE.unpack_from(data)
        if len(data) != _WIRE.size + count:
            raise MessageError(
                f"CKKS parameters announce {count} primes but carry {len(data) - _WIRE.size}"
            )
        try:
            return cls(n, tuple(data[_WIRE.size :]), scale)
        except InvalidParameterError as exc:
            raise MessageError(f"refused CKKS parameters from a peer: {exc}") from None


#: RelayRec's encrypted selector: depth 2 (a plaintext product, then the square).
SELECTOR_PARAMETERS: Final = CKKSParameters(8192, (60, 40, 40, 60), 40)
#: CoDA's encrypted matching: depth 1 (one plaintext product per pool chunk).
MATCHING_PARAMETERS: Final = CKKSParameters(8192, (60, 40, 60), 40)
