"""CoDA's ``[method.options]``: one frozen, validated dataclass.

Parsed by the run's one typed parser (:func:`secrelay.options.parse_options`); the
range and cross-key rules are :func:`option_problems`, which also guards direct
construction, so every :class:`CoDAOptions` is valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocols.errors import ConfigError
from protocols.he import CKKSParameters
from secrelay.options import parse_options
from secrelay.relay.coda.matching import VectorMode

__all__ = ["CoDAOptions", "option_problems"]

_AT_LEAST_ONE = (
    "k",
    "classifier_epochs",
    "batch_size",
    "max_batch_size",
    "max_batches_per_day",
    "days",
    "local_capacity",
    "matched_capacity",
    "ttl_days",
)


@dataclass(frozen=True)
class CoDAOptions:
    """``[method.options]`` of ``method.name = "coda"``.

    Parameters
    ----------
    k:
        Matched pool users per device (paper: 100).
    sigma:
        Classifier threshold σ in [0, 1]: matched samples with p(local) ≥ σ are
        kept (paper: 0.2; 0 keeps every matched sample).
    sigma_sweep:
        Further σ values scored in the same run (``sigma_<σ>/gauc`` ...).
    user_feature:
        Field whose per-user mean is the user vector ("" = the first
        multi-valued item field, else the smallest item field).
    vector_mode:
        ``"onehot"`` (mean one-hot) or ``"embedding"`` (mean cloud-model embedding).
    classifier_fraction:
        Fraction of the matched samples used as the classifier's negatives (1/3).
    classifier_epochs, classifier_lr:
        Adam training of the classifier.
    validation_fraction:
        Latest fraction of the local training rows held out for the gate.
    gate:
        Algorithm 3's validation gate (default on). Off: every σ variant fine-tunes
        M0 on *all* local rows + the kept matched rows, no holdout. Must be off
        under ``privacy.dp_sgd``: the gate's accept/reject decisions compare the
        validation AUC on private held-out rows, which DP-SGD does not cover.
    batch_size, max_batch_size, max_batches_per_day, days:
        Transfer limits (25, 40, 12) and the number of simulated days of fetching.
    local_capacity, matched_capacity, ttl_days:
        On-device table sizes (rows) and row lifetime (days).
    max_devices:
        Score a random subset of this many devices (0 = all), for sweeps.
    baselines:
        Also score Local and Local+gate (off for sweeps that only vary K or σ:
        they do not depend on either).
    ungated:
        Also score, for every σ, plain fine-tuning (no gate) on all local rows +
        the kept matched samples (``sigma_<σ>_nogate``): the augmentation's effect
        without Algorithm 3's gate (only with ``gate = true``).
    privatize_samples, sample_epsilon:
        Send matched samples privatized (:mod:`secrelay.relay.coda.privatize`): handles
        instead of sample IDs, the user fields other than the id randomized at
        ``sample_epsilon`` per released sample (in (0, 50]), batches shuffled. Off:
        only the user-id field is stripped.
    he_poly_modulus_degree, he_coeff_mod_bit_sizes, he_scale_bits:
        CKKS parameters of the encrypted matching (``privacy.he_matching``; default
        N = 8192, primes 60-40-60, Δ = 2^40); refused below 128-bit security.
    he_shuffle_pool:
        Under ``privacy.he_matching``: return each request's scores in a fresh random
        pool order (the device cannot link scores across requests); costs a re-encoding
        of the pool per request.

    Examples
    --------
    >>> CoDAOptions.from_mapping({"k": 10, "sigma_sweep": [0, 1]}).sigma_sweep
    (0.0, 1.0)
    """

    k: int = 100
    sigma: float = 0.2
    sigma_sweep: tuple[float, ...] = ()
    user_feature: str = ""
    vector_mode: VectorMode = "onehot"
    classifier_fraction: float = 1 / 3
    classifier_epochs: int = 5
    classifier_lr: float = 0.01
    validation_fraction: float = 0.2
    gate: bool = True
    batch_size: int = 25
    max_batch_size: int = 40
    max_batches_per_day: int = 12
    days: int = 1
    local_capacity: int = 5000
    matched_capacity: int = 2000
    ttl_days: int = 30
    max_devices: int = 0
    baselines: bool = True
    ungated: bool = False
    privatize_samples: bool = False
    sample_epsilon: float = 1.0
    he_poly_modulus_degree: int = 8192
    he_coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    he_scale_bits: int = 40
    he_shuffle_pool: bool = True

    def __post_init__(self) -> None:
        problems = option_problems(dataclasses.asdict(self))
        if problems:
            raise ConfigError("; ".join(problems))
        object.__setattr__(self, "sigma_sweep", tuple(float(s) for s in self.sigma_sweep))
        object.__setattr__(
            self, "he_coeff_mod_bit_sizes", tuple(int(b) for b in self.he_coeff_mod_bit_sizes)
        )

    def he_parameters(self) -> CKKSParameters:
        """The encrypted matching's CKKS parameters (raises InvalidParameterError)."""
        return CKKSParameters(
            self.he_poly_modulus_degree, self.he_coeff_mod_bit_sizes, self.he_scale_bits
        )

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> CoDAOptions:
        """Validate ``[method.options]``; every problem is reported at once, each
        naming ``method.options.<key>`` (unknown keys included)."""
        return parse_options(cls, options, "method.options", checks=_given_problems)


def option_problems(o: Mapping[str, Any]) -> list[str]:
    """Every range and cross-key problem of a complete set of option values, each
    naming ``method.options.<key>`` and echoing the value."""
    problems: list[str] = []

    def need(cond: bool, key: str, what: str) -> None:
        if not cond:
            problems.append(f"method.options.{key} must be {what}; got {o[key]!r}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key in _AT_LEAST_ONE:
        need(is_int(o[key]) and o[key] >= 1, key, "an int >= 1")
    need(is_int(o["max_devices"]) and o["max_devices"] >= 0, "max_devices", "an int >= 0")
    for key in ("baselines", "ungated", "gate", "privatize_samples", "he_shuffle_pool"):
        need(isinstance(o[key], bool), key, "true or false")
    if o["ungated"] and o["gate"] is False:
        problems.append(
            "method.options.ungated adds ungated variants next to the gated ones; with "
            "method.options.gate = false every variant is already ungated (set ungated = false)"
        )
    need(0 <= o["sigma"] <= 1, "sigma", "in [0, 1]")
    need(
        all(isinstance(s, (int, float)) and 0 <= s <= 1 for s in o["sigma_sweep"]),
        "sigma_sweep",
        "a list of values in [0, 1]",
    )
    need(0 < o["classifier_fraction"] <= 1, "classifier_fraction", "in (0, 1]")
    need(0 < o["validation_fraction"] < 1, "validation_fraction", "in (0, 1)")
    need(o["classifier_lr"] > 0, "classifier_lr", "> 0")
    eps = o["sample_epsilon"]
    need(
        isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps <= 50,
        "sample_epsilon",
        "in (0, 50]",
    )
    need(o["vector_mode"] in ("onehot", "embedding"), "vector_mode", "'onehot' or 'embedding'")
    if is_int(o["batch_size"]) and is_int(o["max_batch_size"]):
        need(o["max_batch_size"] >= o["batch_size"], "max_batch_size", ">= batch_size")
    return problems


_DEFAULTS: dict[str, Any] = dataclasses.asdict(CoDAOptions())


def _given_problems(given: Mapping[str, Any]) -> list[str]:
    return option_problems({**_DEFAULTS, **given})
