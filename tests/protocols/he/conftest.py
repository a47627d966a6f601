"""Shared fixtures of the CKKS tests: one key set per parameter set and module."""

from __future__ import annotations

import pytest

from protocols.he import (
    MATCHING_PARAMETERS,
    SELECTOR_PARAMETERS,
    PublicContext,
    SecretContext,
)


@pytest.fixture(scope="module")
def device() -> SecretContext:
    """A device with the selector parameters, a relinearisation key and three
    rotation keys."""
    return SecretContext(SELECTOR_PARAMETERS, galois_steps=(1, 2, 5), relin_keys=True)


@pytest.fixture(scope="module")
def server(device: SecretContext) -> PublicContext:
    return PublicContext.from_bytes(device.serialize())


@pytest.fixture(scope="module")
def small_device() -> SecretContext:
    """The matching parameters with one rotation key (a 0.4 MB public context)."""
    return SecretContext(MATCHING_PARAMETERS, galois_steps=(1,))
