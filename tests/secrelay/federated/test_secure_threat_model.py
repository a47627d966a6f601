"""``[privacy] secagg_active_security``: the config key reaches the secure sum, picks
the protocol the round really runs, and the audit names the threat model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocols.errors import ConfigError
from protocols.secagg import PASSIVE_STAGES, PROTOCOL_STAGES
from secrelay.audit import SECAGG_MALICIOUS_NOTE, SECAGG_PASSIVE_NOTE, audit
from secrelay.config import PrivacyConfig, load_config
from secrelay.experiment import run
from secrelay.federated.messages import MaskedUpload
from secrelay.federated.secure import SecureSum
from secrelay.federated.transcript import Channel
from secrelay.privacy.plan import PrivacyPlan

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _contributions(n: int = 8) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return {d: {"delta": rng.normal(0, 1, 5), "weight": np.array([2.0])} for d in range(n)}


@pytest.mark.parametrize(("active", "stages"), [(True, PROTOCOL_STAGES), (False, PASSIVE_STAGES)])
def test_config_key_selects_the_protocol_the_round_runs(active: bool, stages: tuple) -> None:
    plan = PrivacyPlan(PrivacyConfig(secure_aggregation=True, secagg_active_security=active))
    assert plan.secure_settings().active_security is active
    protocol = plan.sum_protocol()
    assert isinstance(protocol, SecureSum)
    assert protocol.stages == tuple(s.value for s in stages)
    channel = Channel()
    contributions = _contributions()
    result = protocol.aggregate(1, contributions, channel)
    # The messages the server received are exactly those of the chosen protocol's stages.
    sent = {m.stage for m in channel.transcript.messages(kind=MaskedUpload, round=1)}
    assert sent == {s.value for s in stages}
    truth = sum(c["delta"] for c in contributions.values())
    assert np.abs(result.sums["delta"] - truth).max() <= protocol.last_error_bound["delta"]


def test_default_is_the_malicious_server_protocol() -> None:
    cfg = load_config()
    assert cfg.privacy.secagg_active_security is True
    assert PrivacyPlan.from_config(cfg).secure_settings().active_security is True


def test_config_key_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match=r"privacy\.secagg_active_security must be bool"):
        load_config(privacy={"secagg_active_security": "no"})


@pytest.mark.parametrize("slack", [None, 0, 3])
def test_vote_slack_key_reaches_the_protocol(slack: int | None) -> None:
    plan = PrivacyPlan(PrivacyConfig(secure_aggregation=True, secagg_vote_slack=slack))
    settings = plan.secure_settings()
    assert settings.vote_slack == slack
    cfg = settings.protocol_config(
        n_clients=100, vector_length=4, clip_range=1.0, precision_bits=16
    )
    assert cfg.vote_slack == (27 if slack is None else slack)  # None: the design rule
    protocol = plan.sum_protocol()
    contributions = _contributions()
    result = protocol.aggregate(1, contributions, Channel())
    truth = sum(c["delta"] for c in contributions.values())
    assert np.abs(result.sums["delta"] - truth).max() <= protocol.last_error_bound["delta"]


def test_vote_slack_key_must_be_a_non_negative_int() -> None:
    with pytest.raises(ConfigError, match=r"privacy\.secagg_vote_slack must be >= 0"):
        load_config(privacy={"secagg_vote_slack": -1})


def _secure_run_config(active: bool):  # type: ignore[no-untyped-def]
    return load_config(
        run={"name": "secagg-threat-model", "seed": 5, "progress": False},
        data={"name": "synthetic", "options": {"n_users": 12, "samples_per_user": 16}},
        model={"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
        cloud={"epochs": 1},
        local={"epochs": 1, "batch_size": 16},
        federated={"rounds": 1, "clients_per_round": 6},
        privacy={
            "secure_aggregation": True,
            "secagg_active_security": active,
            "randomness": "reproducible",
        },
    )


@pytest.mark.parametrize("active", [True, False])
def test_audit_names_the_threat_model(tmp_path: Path, active: bool) -> None:
    rd = tmp_path / "run"
    run(_secure_run_config(active), rd, progress=False, log=lambda _: None)
    report = audit(rd, write=False)
    note = SECAGG_MALICIOUS_NOTE if active else SECAGG_PASSIVE_NOTE
    assert note in report.notes
    other = SECAGG_PASSIVE_NOTE if active else SECAGG_MALICIOUS_NOTE
    assert other not in report.notes
    # Only the honest-but-curious protocol is a warning: its guarantee needs an honest server.
    assert (SECAGG_PASSIVE_NOTE in report.warnings) is (not active)
