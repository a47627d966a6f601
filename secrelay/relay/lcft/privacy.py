"""What LCFT cannot honour of ``[privacy]``, from the config alone.

LCFT uploads nothing but the optional local-CTR query, so user-level DP has
nothing to protect; DP-SGD protects a correction only when its (α, β) does not
come from the device's raw local CTR; ``privacy.query_ldp`` needs the query path.
:meth:`~secrelay.relay.lcft.method.LCFTMethod.privacy_problems` reports these
before any data is loaded.
"""

from __future__ import annotations

from secrelay.config import PrivacyConfig
from secrelay.relay.lcft.options import LCFTOptions

__all__ = ["privacy_problems"]


def privacy_problems(options: LCFTOptions, privacy: PrivacyConfig) -> list[str]:
    """LCFT's checks of ``[privacy]`` (every problem, each naming its keys)."""
    problems = []
    if privacy.user_level_dp:
        problems.append(
            "method.name 'lcft' does not apply privacy.user_level_dp: nothing is aggregated "
            "(privacy.query_ldp protects LCFT's only upload, the local-CTR query); turn it off"
        )
    if privacy.dp_sgd:
        raw = [
            c
            for c in options.corrections
            if c in ("soft1", "soft2")
            or (c == "hard" and (options.correction_path != "query" or privacy.query_ldp == "off"))
        ]
        if raw:
            problems.append(
                f"privacy.dp_sgd cannot make LCFT's corrections {raw} example-level private: "
                "their (α, β) come from the device's raw local CTR, so one example changes every "
                "label. Use corrections = ['none'], or 'hard' with correction_path = 'query' and "
                "privacy.query_ldp on (the pair is then a function of a DP report)"
            )
    if privacy.query_ldp != "off":
        if "hard" not in options.corrections:
            problems.append(
                f"privacy.query_ldp = {privacy.query_ldp!r} protects the hard correction's "
                f"local-CTR query, but method.options.corrections = {list(options.corrections)!r} "
                "has no 'hard' and the soft corrections send nothing (they need only the "
                "downloaded w_g); set privacy.query_ldp = 'off'"
            )
        elif options.correction_path != "query":
            problems.append(
                f"privacy.query_ldp = {privacy.query_ldp!r} protects a local-CTR query, but "
                "method.options.correction_path = 'table' sends nothing up (the device downloads "
                "the whole table, so the server learns nothing already); set "
                "method.options.correction_path = 'query' or privacy.query_ldp = 'off'"
            )
    if options.query_rr_bits and privacy.query_ldp != "randomized_response":
        problems.append(
            f"method.options.query_rr_bits = {options.query_rr_bits} applies to "
            "privacy.query_ldp = 'randomized_response' only; got privacy.query_ldp = "
            f"{privacy.query_ldp!r}"
        )
    return problems
