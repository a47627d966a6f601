"""The tuning protocol (issue 17): ``[split] evaluate_on = "validation"`` evaluates on
the last rows of each device's training split and never lets a test row into the run."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.errors import ConfigError
from secrelay.config import RunConfig, SplitConfig
from secrelay.methods.data import prepare_data


def _config(**split: object) -> RunConfig:
    return RunConfig.from_dict(
        {
            "data": {"name": "synthetic", "options": {"n_users": 60, "samples_per_user": 25}},
            "split": split,
        }
    )


def _keys(ds) -> set[tuple[int, int, bytes]]:  # type: ignore[no-untyped-def]
    return {
        (int(u), int(t), x.tobytes()) for u, t, x in zip(ds.user, ds.timestamp, ds.x, strict=True)
    }


def test_validation_rows_come_from_training_rows_and_test_rows_never_enter():
    plain = prepare_data(_config())
    tuned = prepare_data(_config(evaluate_on="validation", validation_fraction=0.25))
    test_rows = _keys(plain.device_test)
    train_rows = _keys(plain.device_train)
    assert not test_rows & (_keys(tuned.device_train) | _keys(tuned.device_test))
    assert _keys(tuned.device_train) | _keys(tuned.device_test) == train_rows
    assert len(tuned.device_test) > 0
    for u, dev in tuned.devices.items():
        if len(dev.test):  # validation rows are the device's latest training rows
            assert dev.train.timestamp.max() <= dev.test.timestamp.min()
            assert len(dev.test) <= np.ceil(0.25 * len(plain.devices[u].train)) + 1
    assert "the test split is not used" in tuned.notes[0]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("evaluate_on", "dev", "split.evaluate_on must be 'test' or 'validation'"),
        ("validation_fraction", 1.0, "split.validation_fraction must be in (0, 1)"),
    ],
)
def test_bad_validation_settings_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SplitConfig(**{key: value})  # type: ignore[arg-type]
