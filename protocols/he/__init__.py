"""Homomorphic encryption (CKKS) on TenSEAL: keys, envelopes, packed linear algebra.

Pure protocol code, like :mod:`protocols.secagg`: arrays and bytes in, arrays and
bytes out; it never imports :mod:`secrelay`. See ``docs/he.md``.

Public API
----------
:class:`CKKSParameters`, :data:`SELECTOR_PARAMETERS`, :data:`MATCHING_PARAMETERS`
    Parameter sets, refused below 128-bit security (HomomorphicEncryption.org table).
:class:`SecretContext`
    A device's keys: generates them, encrypts, decrypts, serialises (the secret key
    only with ``save_secret_key=True``).
:class:`PublicContext`
    A server's context (public evaluation keys only, exactly the Galois keys a
    computation uses); refuses a context that carries a secret key; cannot decrypt.
:class:`PackedMatVec`, :class:`SquareNetwork`
    Packed plans: a tall plaintext matrix times an encrypted vector (CoDA's matching),
    and a square-activation network (RelayRec's selector); their public shapes
    :class:`MatVecLayout`, :class:`SquareNetworkLayout` are all a device needs.
:mod:`protocols.he.envelope`
    The versioned, length-checked, digest-protected envelope every object travels in.

Every malformed, truncated or corrupted byte string raises
:class:`~protocols.errors.MessageError`; nothing from SEAL escapes.
"""

from protocols.he.context import Ciphertext, Plaintext, PublicContext, SecretContext
from protocols.he.envelope import MAX_ENVELOPE_BYTES, EnvelopeKind
from protocols.he.linalg import (
    EvaluationStats,
    MatVecLayout,
    PackedMatVec,
    SquareNetwork,
    SquareNetworkLayout,
    rotation_stages,
    sum_slots,
)
from protocols.he.params import (
    MATCHING_PARAMETERS,
    MAX_COEFF_MODULUS_BITS_128,
    SELECTOR_PARAMETERS,
    CKKSParameters,
)

__all__ = [
    "MATCHING_PARAMETERS",
    "MAX_COEFF_MODULUS_BITS_128",
    "MAX_ENVELOPE_BYTES",
    "SELECTOR_PARAMETERS",
    "CKKSParameters",
    "Ciphertext",
    "EnvelopeKind",
    "EvaluationStats",
    "MatVecLayout",
    "PackedMatVec",
    "Plaintext",
    "PublicContext",
    "SecretContext",
    "SquareNetwork",
    "SquareNetworkLayout",
    "rotation_stages",
    "sum_slots",
]
