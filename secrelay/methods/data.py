"""A run's data after the regulation split and the per-device train/test split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.errors import ConfigError
from secrelay.config import RunConfig
from secrelay.data import device_train_test_split, load_dataset, regulation_split
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import DeviceData

__all__ = ["IN_MEMORY", "PreparedData", "prepare_data"]

# data.name of a run whose data set was given as an object, not loaded by name.
IN_MEMORY = "in-memory"


@dataclass(frozen=True, eq=False)
class PreparedData:
    """The data of a run after the regulation and device splits."""

    full: CTRDataset
    cloud: CTRDataset
    devices: dict[int, DeviceData]
    notes: tuple[str, ...] = ()

    @property
    def device_test(self) -> CTRDataset:
        return CTRDataset.concat([d.test for d in self.devices.values() if len(d.test)])

    @property
    def device_train(self) -> CTRDataset:
        return CTRDataset.concat([d.train for d in self.devices.values() if len(d.train)])


def prepare_data(config: RunConfig, dataset: CTRDataset | None = None) -> PreparedData:
    """Load the data set (or take ``dataset``, already in memory) and apply the
    regulation and per-device splits."""
    if dataset is None and config.data.name == IN_MEMORY:
        raise ConfigError(
            "this run's data set was passed in memory (data.name = 'in-memory'); pass it "
            "again: resume(run_dir, dataset=...)"
        )
    if dataset is None:
        opts = dict(config.data.options)
        if config.data.name == "synthetic":
            opts.setdefault("seed", config.run.seed)
        ds = load_dataset(config.data.name, config.data.path or None, **opts)
    else:
        ds = dataset
    split = regulation_split(
        ds, mode=config.split.mode, alpha=config.split.alpha, seed=config.run.seed
    )
    dsplit = device_train_test_split(
        split.device,
        train_fraction=config.split.train_fraction,
        min_rows=max(2, config.split.min_device_rows),
        too_few="drop",
    )
    train, test = dsplit.train, dsplit.test
    held_out = ""
    if config.split.evaluate_on == "validation":
        # The tuning protocol: the test rows never enter the run.
        vsplit = device_train_test_split(
            train,
            train_fraction=1.0 - config.split.validation_fraction,
            min_rows=2,
            too_few="train",
        )
        train, test = vsplit.train, vsplit.test
        held_out = (
            f"; evaluating on a validation split (the last {config.split.validation_fraction:g}"
            f" of each device's training rows, {len(test)} rows): the test split is not used"
        )
    train_by_user = train.split_by_user()
    test_by_user = test.split_by_user()
    devices = {
        u: DeviceData(u, tr, test_by_user.get(u, tr.subset(np.zeros(0, dtype=np.int64))))
        for u, tr in sorted(train_by_user.items())
    }
    notes = (
        f"cloud rows {len(split.cloud)} ({split.cloud.n_users} users); device rows "
        f"{len(split.device)} on {len(devices)} devices; {len(dsplit.users_too_few)} devices "
        f"({dsplit.rows_too_few} rows) dropped with fewer than "
        f"{max(2, config.split.min_device_rows)} rows{held_out}",
    )
    return PreparedData(ds, split.cloud, devices, notes)
