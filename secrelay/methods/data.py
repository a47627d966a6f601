"""A run's data after the regulation split and the per-device train/test split.

``[data] name = "population"`` (a :class:`~secrelay.data.population.SyntheticPopulation`)
is prepared lazily: every device is a :class:`~secrelay.federated.lazy.LazyDeviceData`
whose rows are drawn in the executor's worker that trains it, so the server's memory
does not grow with the rows of the population. Its regulation split is by user, not
by row: the cloud data set is every row of ``cloud_devices`` separate pre-regulation
users drawn from the same model (ids above ``n_devices``), and the devices are the
post-regulation users; ``split.mode`` and ``split.alpha`` do not apply (no row moves
from a device to the cloud, no user-id shuffle), each device's last
``1 - split.train_fraction`` of rows by time are its test split. Only methods whose
server never reads every device's data accept it (:data:`LAZY_METHODS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.errors import ConfigError, InvalidParameterError
from secrelay.config import RunConfig
from secrelay.data import device_train_test_split, load_dataset, regulation_split
from secrelay.data.dataset import CTRDataset
from secrelay.data.population import SyntheticPopulation, population_from_options
from secrelay.federated.client import DeviceData
from secrelay.federated.lazy import PopulationSource, lazy_devices
from secrelay.federated.strategies import make_strategy

__all__ = [
    "IN_MEMORY",
    "LAZY_METHODS",
    "POPULATION",
    "PreparedData",
    "population_problems",
    "prepare_data",
]

# data.name of a run whose data set was given as an object, not loaded by name.
IN_MEMORY = "in-memory"
# data.name of a lazily prepared synthetic population.
POPULATION = "population"
# Methods whose server reads devices' data only through the loop (sampled devices in
# the workers, the evaluation sample in the server), so a lazy population serves them.
LAZY_METHODS = frozenset({"federated", "metaua", "relayrec"})
# Why the others cannot: each reads every device's data in the server.
_NEEDS_EVERY_DEVICE = {
    "lcft": "LCFT reads every device's training CTR and test rows in the server",
    "coda": "CoDA reads every device's rows to build its matching pool",
}


@dataclass(frozen=True, eq=False)
class PreparedData:
    """The data of a run after the regulation and device splits."""

    full: CTRDataset
    cloud: CTRDataset
    devices: dict[int, DeviceData]
    notes: tuple[str, ...] = ()
    # Set for a lazy population: ``devices`` are LazyDeviceData over it, and ``full``
    # is the cloud data set (the schema; the whole population is never built).
    population: SyntheticPopulation | None = None

    @property
    def device_test(self) -> CTRDataset:
        return CTRDataset.concat([d.test for d in self._every_device().values() if len(d.test)])

    @property
    def device_train(self) -> CTRDataset:
        return CTRDataset.concat([d.train for d in self._every_device().values() if len(d.train)])

    def _every_device(self) -> dict[int, DeviceData]:
        if self.population is not None:
            raise InvalidParameterError(
                "a lazy population's devices are never gathered in the server; evaluate "
                "through the loop (federated.eval_devices)"
            )
        return self.devices


def population_problems(config: RunConfig) -> list[str]:
    """Why ``config`` cannot run on ``data.name = "population"`` (empty if it can)."""
    if config.data.name != POPULATION:
        return []
    problems = []
    method = config.method.name
    if method in _NEEDS_EVERY_DEVICE:
        problems.append(
            f"method {method!r} cannot run on data.name = 'population': "
            f"{_NEEDS_EVERY_DEVICE[method]}, which a lazy population never materializes "
            f"in the server; use one of {sorted(LAZY_METHODS)}, or data.name = 'synthetic'"
        )
    elif method not in LAZY_METHODS:
        problems.append(
            f"method {method!r} is not known to read devices' data only through the "
            f"federated loop; data.name = 'population' supports {sorted(LAZY_METHODS)}"
        )
    if method == "relayrec" and config.method.options.get("collaboration") == "standalone":
        problems.append(
            "RelayRec's 'standalone' collaboration trains and evaluates every device in "
            "one round, which reads the whole population; data.name = 'population' needs "
            "a shared or clustered collaboration (e.g. clustered_fedprox)"
        )
    if method == "federated":
        try:
            personal = make_strategy(config.strategy.name, **config.strategy.params).personalized
        except InvalidParameterError:
            personal = False  # reported by the method's own check
        if personal:
            problems.append(
                f"strategy {config.strategy.name!r} is personalized: every device trains "
                "and is evaluated in one round, which reads the whole population; "
                "data.name = 'population' needs a global-model strategy (e.g. fedavg)"
            )
    if config.data.path:
        problems.append(
            f"data set 'population' is generated, not read: data.path must be empty; "
            f"got {config.data.path!r}"
        )
    if config.split.evaluate_on == "validation":
        problems.append(
            "split.evaluate_on = 'validation' is not supported for data.name = 'population'"
        )
    return problems


def _prepare_population(config: RunConfig) -> PreparedData:
    opts = dict(config.data.options)
    opts.setdefault("seed", config.run.seed)
    opts.setdefault("test_fraction", 1.0 - config.split.train_fraction)
    try:
        pop, n_cloud = population_from_options(opts)
    except InvalidParameterError as exc:
        raise ConfigError(f"data.options: {exc}") from None
    n = pop.n_devices
    cloud = pop.with_devices(n + n_cloud).rows(range(n + 1, n + n_cloud + 1))
    devices = lazy_devices(PopulationSource(pop), pop.device_ids)
    eval_n = config.federated.eval_devices or n
    notes = (
        f"population of {n} devices ({pop.samples_per_device} rows each, drawn lazily in "
        f"the workers); cloud rows {len(cloud)} from {n_cloud} separate pre-regulation "
        f"users; evaluating on {min(eval_n, n)} devices",
    )
    return PreparedData(cloud, cloud, devices, notes, population=pop)


def prepare_data(config: RunConfig, dataset: CTRDataset | None = None) -> PreparedData:
    """Load the data set (or take ``dataset``, already in memory) and apply the
    regulation and per-device splits."""
    if dataset is None and config.data.name == IN_MEMORY:
        raise ConfigError(
            "this run's data set was passed in memory (data.name = 'in-memory'); pass it "
            "again: resume(run_dir, dataset=...)"
        )
    if dataset is None and config.data.name == POPULATION:
        problems = population_problems(config)
        if problems:
            raise ConfigError("; ".join(problems))
        return _prepare_population(config)
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
