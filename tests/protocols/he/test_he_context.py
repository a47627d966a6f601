"""Key separation: the device holds the secret key; the server's context has only the
evaluation keys it needs, cannot decrypt, and refuses a context carrying a secret key."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from protocols.errors import InvalidParameterError, MessageError
from protocols.he import (
    MATCHING_PARAMETERS,
    SELECTOR_PARAMETERS,
    EnvelopeKind,
    PublicContext,
    SecretContext,
)
from protocols.he.envelope import pack, unpack


def test_public_context_has_only_the_requested_keys(device: SecretContext) -> None:
    server = PublicContext.from_bytes(device.serialize())
    assert server.galois_steps == {1, 2, 5} and server.has_relin_keys
    assert server.has_secret_key is False
    ct = server.load_ciphertexts(device.encrypt(np.arange(8.0)))[0]
    for step in (1, 2, 5):  # keys are for these *steps* (not Galois elements 1, 2, 5)
        out = device.decrypt(server.dump_ciphertexts([server.rotate(ct, step)]))[0]
        np.testing.assert_allclose(out[:3], np.roll(np.arange(8.0), -step)[:3], atol=1e-5)
    with pytest.raises(InvalidParameterError, match=r"no Galois key for rotation step 3"):
        server.rotate(ct, 3)
    plain = SecretContext(MATCHING_PARAMETERS)
    srv = plain.public_context()
    with pytest.raises(InvalidParameterError, match="relinearisation"):
        srv.square(srv.load_ciphertexts(plain.encrypt([1.0]))[0])


def test_server_cannot_decrypt(device: SecretContext, server: PublicContext) -> None:
    """The server-side object has no secret key and no way to decrypt; the public
    envelope holds no secret-key bytes; another party's secret key decrypts noise."""
    assert not hasattr(server, "decrypt") and not hasattr(server, "_secret")
    secret_blob = unpack(
        device.serialize(save_secret_key=True), expected=EnvelopeKind.SECRET_CONTEXT
    )[4]
    assert secret_blob[64:200] not in server.to_bytes()
    x = np.linspace(-1, 1, 16)
    blob = device.encrypt(x)
    with pytest.raises(MessageError, match=r"kind SECRET_CONTEXT"):
        SecretContext.deserialize(server.to_bytes())
    other = SecretContext(SELECTOR_PARAMETERS)
    wrong = other.decrypt(blob)[0, :16]
    assert np.abs(wrong - x).max() > 1e3
    np.testing.assert_allclose(device.decrypt(blob)[0, :16], x, atol=1e-6)


def test_a_context_carrying_a_secret_key_is_refused(device: SecretContext) -> None:
    with pytest.raises(MessageError, match="carries a secret key"):
        PublicContext.from_bytes(device.serialize(save_secret_key=True))
    # ... also when relabelled as public: the part count gives it away.
    parts = unpack(device.serialize(save_secret_key=True), expected=EnvelopeKind.SECRET_CONTEXT)
    with pytest.raises(MessageError, match="4 parts"):
        PublicContext.from_bytes(pack(EnvelopeKind.PUBLIC_CONTEXT, parts))


def test_secret_context_round_trip_and_no_pickling(device: SecretContext) -> None:
    again = SecretContext.deserialize(device.serialize(save_secret_key=True))
    x = np.array([0.25, -3.0, 7.5])
    np.testing.assert_allclose(again.decrypt(device.encrypt(x))[0, :3], x, atol=1e-6)
    assert again.galois_steps == device.galois_steps
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(device)
    assert "secret" not in repr(device).lower() or "SecretContext(" in repr(device)


def test_ciphertexts_are_checked_on_load(device: SecretContext, server: PublicContext) -> None:
    ct = server.load_ciphertexts(device.encrypt([1.0, 2.0]))[0]
    processed = server.dump_ciphertexts([server.multiply_plain(ct, [1.0], rescale=True)])
    with pytest.raises(MessageError, match="not at the top level"):
        server.load_ciphertexts(processed)
    with pytest.raises(MessageError, match="expected 2 ciphertexts"):
        server.load_ciphertexts(device.encrypt([1.0]), count=2)
    other = SecretContext(MATCHING_PARAMETERS)
    with pytest.raises(MessageError, match="malformed"):
        server.load_ciphertexts(other.encrypt([1.0]))


def test_values_are_validated(device: SecretContext) -> None:
    with pytest.raises(InvalidParameterError, match="holds 4096"):
        device.encrypt(np.zeros(4097))
    with pytest.raises(InvalidParameterError, match="finite"):
        device.encrypt([np.nan])
    with pytest.raises(InvalidParameterError, match="rotation step 4096 is 0"):
        SecretContext(SELECTOR_PARAMETERS, galois_steps=(4096,))


def test_public_context_sizes(device: SecretContext) -> None:
    """Seeded keys: ≈ 0.7 MB per key at N = 8192 with four primes; the server needs
    no public key."""
    size = len(device.serialize())
    assert 4 * 0.6e6 < size < 4 * 0.75e6
    assert len(SecretContext(MATCHING_PARAMETERS, galois_steps=(1,)).serialize()) < 0.5e6
