"""The one module that talks to SEAL, through TenSEAL's binding ``tenseal.sealapi``.

Why not TenSEAL's high-level ``Context`` / ``CKKSVector``: ``Context`` can only
generate *every* Galois key (≈ 35 MB at N = 8192) and ``CKKSVector`` exposes no
rotation, so neither "send only the Galois keys the computation uses" nor a packed
layout of our choosing is possible there. TenSEAL ships the complete SEAL API as
``tenseal.sealapi``; this module wraps the part of it the library uses and keeps
every SEAL object out of the public signatures.

``tenseal.sealapi`` (de)serialises only through files. :func:`dump` and :func:`load`
therefore go through one private temporary directory per process (mode 0700, in
``/dev/shm`` — memory, not disk — when it exists), one uniquely named file per call,
removed before the call returns. The secret key passes through it only when a device
explicitly asks to serialise it (``save_secret_key=True``).

Every exception SEAL raises while loading bytes from a peer becomes a
:class:`~protocols.errors.MessageError`; the fuzz tests check that nothing else escapes.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import Any, Final

import tenseal.sealapi as sealapi

from protocols.errors import MessageError
from protocols.he.params import CKKSParameters

__all__ = ["SealContext", "dump", "galois_element", "load", "sealapi"]

_LOCK: Final = threading.Lock()
_DIR: list[str] = []


def _private_dir() -> str:
    with _LOCK:
        if not _DIR:
            base = (
                "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            )
            path = tempfile.mkdtemp(prefix="secrelay-he-", dir=base)
            os.chmod(path, 0o700)
            _DIR.append(path)
            atexit.register(shutil.rmtree, path, True)
        return _DIR[0]


def _temp_path() -> str:
    fd, path = tempfile.mkstemp(dir=_private_dir())
    os.close(fd)
    return path


def dump(obj: Any) -> bytes:
    """SEAL's serialisation of ``obj`` (anything with ``save(path)``)."""
    path = _temp_path()
    try:
        obj.save(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.remove(path)


def load(factory: Callable[[], Any], context: Any, data: bytes, what: str) -> Any:
    """A SEAL object of type ``factory`` loaded (and validated by SEAL against
    ``context``) from ``data``.

    Raises
    ------
    MessageError
        Whatever SEAL refuses (bad header, sizes, compression, parameter mismatch,
        values out of range), naming ``what``.
    """
    if not data:
        raise MessageError(f"{what} is empty")
    path = _temp_path()
    try:
        with open(path, "wb") as f:
            f.write(data)
        obj = factory()
        try:
            obj.load(context, path)
        except Exception as exc:  # SEAL raises ValueError / RuntimeError with a reason
            raise MessageError(f"{what} is malformed: {exc}") from None
        return obj
    finally:
        os.remove(path)


def galois_element(step: int, poly_modulus_degree: int) -> int:
    """SEAL's Galois element of a left rotation by ``step`` slots (3^step mod 2N; a
    right rotation by s is the left rotation by N/2 − s)."""
    slots = poly_modulus_degree // 2
    s = step % slots
    if s == 0:
        raise ValueError("a rotation by 0 (mod the slot count) needs no key")
    return pow(3, s, 2 * poly_modulus_degree)


class SealContext:
    """SEAL's context, encoder and evaluator for one :class:`CKKSParameters` (shared
    by every party that uses the same parameters; holds no key)."""

    def __init__(self, params: CKKSParameters) -> None:
        self.params = params
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_modulus_degree)
        parms.set_coeff_modulus(
            sealapi.CoeffModulus.Create(
                params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)
            )
        )
        # SEAL checks the 128-bit table itself as well (a second guard).
        self.context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise MessageError(
                f"SEAL refused the parameters: {self.context.parameters_error_message()}"
            )
        self.encoder = sealapi.CKKSEncoder(self.context)
        self.evaluator = sealapi.Evaluator(self.context)
        self.first_parms_id = list(self.context.first_parms_id())
        # parms_id -> level (0 = fresh, params.depth = last)
        self.levels: dict[tuple[int, ...], int] = {}
        data = self.context.first_context_data()
        level = 0
        while data is not None:
            self.levels[tuple(data.parms_id())] = level
            data = data.next_context_data()
            level += 1

    def level_of(self, parms_id: Any) -> int:
        key = tuple(parms_id)
        if key not in self.levels:
            raise MessageError("ciphertext is not under these parameters")
        return self.levels[key]

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def of(params: CKKSParameters) -> SealContext:
        """The shared context of ``params`` (memoised: building one costs milliseconds)."""
        return SealContext(params)
