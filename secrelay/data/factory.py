"""``load_dataset(name, path, **kw)``: one entry point for every data source.

The CLI's ``--data NAME --path DIR`` and run configs resolve data through this
registry. Third-party loaders plug in with :func:`register_dataset`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocols.errors import InvalidParameterError
from protocols.registry import Registry
from secrelay.data._io import PathLike
from secrelay.data.dataset import CTRDataset
from secrelay.data.libfm import load_libfm
from secrelay.data.movielens import load_movielens100k
from secrelay.data.options import field_map_from_options, tabular_spec_from_options
from secrelay.data.population import population_from_options
from secrelay.data.synthetic import make_synthetic
from secrelay.data.tabular import load_csv, load_parquet

__all__ = ["DATASET_LOADERS", "DatasetLoader", "load_dataset", "register_dataset"]

#: A loader: ``loader(path, **kw) -> CTRDataset`` (``path`` may be ``None``).
DatasetLoader = Callable[..., CTRDataset]


def _synthetic(path: PathLike | None, **kw: Any) -> CTRDataset:
    if path is not None:
        raise InvalidParameterError(
            f"the 'synthetic' data set is generated, not read: `path` must be None; got {path!r}"
        )
    return make_synthetic(**kw)


def _population(path: PathLike | None, **kw: Any) -> CTRDataset:
    """Every row of a :class:`SyntheticPopulation` and its cloud users, materialized
    (for small populations; ``secrelay run`` keeps a population lazy instead)."""
    if path is not None:
        raise InvalidParameterError(
            f"the 'population' data set is generated, not read: `path` must be None; got {path!r}"
        )
    pop, cloud = population_from_options(kw)
    return pop.with_devices(pop.n_devices + cloud).rows(range(1, pop.n_devices + cloud + 1))


def _movielens100k(path: PathLike | None, **kw: Any) -> CTRDataset:
    return load_movielens100k(path, **kw)


def _needs_path(name: str, fn: Callable[..., CTRDataset]) -> DatasetLoader:
    def loader(path: PathLike | None, **kw: Any) -> CTRDataset:
        if path is None:
            raise InvalidParameterError(
                f"data set {name!r} is read from a file: set data.path (or --path / `path`)"
            )
        return fn(path, **kw)

    loader.__name__ = f"load_{name}"
    loader.__doc__ = fn.__doc__
    return loader


DATASET_LOADERS: Registry[DatasetLoader] = Registry("data set")


def _libfm(path: PathLike, **kw: Any) -> CTRDataset:
    """libFM/libSVM: ``field_map=`` a :class:`FieldMap`, or plain options (a declared
    ``fields`` table, or a map inferred from a libFM file; :mod:`secrelay.data.options`)."""
    if "field_map" not in kw:
        field_map, kw = field_map_from_options(path, kw)
        kw["field_map"] = field_map
    return load_libfm(path, **kw)


def _tabular(reader: Callable[..., CTRDataset]) -> Callable[..., CTRDataset]:
    def load(path: PathLike, **kw: Any) -> CTRDataset:
        if "spec" not in kw:
            spec, kw = tabular_spec_from_options(kw)
            kw["spec"] = spec
        return reader(path, **kw)

    load.__doc__ = (
        f"{reader.__name__}: ``spec=`` a :class:`TabularSpec`, or the columns as plain "
        "options (:mod:`secrelay.data.options`)."
    )
    return load


for _name, _loader in (
    ("synthetic", _synthetic),
    ("population", _population),
    ("movielens100k", _movielens100k),
    ("libfm", _needs_path("libfm", _libfm)),
    ("csv", _needs_path("csv", _tabular(load_csv))),
    ("parquet", _needs_path("parquet", _tabular(load_parquet))),
):
    DATASET_LOADERS.register(_name, _loader)


def register_dataset(name: str, loader: DatasetLoader, *, force: bool = False) -> None:
    """Make ``load_dataset(name, ...)`` call ``loader(path, **kw)``.

    Refuses to replace an existing name unless ``force=True``.
    """
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(f"dataset `name` must be a non-empty string; got {name!r}")
    DATASET_LOADERS.register(name, loader, force=force)


def load_dataset(name: str, path: PathLike | None = None, **kw: Any) -> CTRDataset:
    """Load a data set by name.

    Parameters
    ----------
    name:
        ``"synthetic"`` (keywords of :func:`make_synthetic`; no path),
        ``"population"`` (keywords of
        :func:`~secrelay.data.population.population_from_options`; no path),
        ``"movielens100k"`` (``path`` = directory, or ``$SECRELAY_ML100K``),
        ``"libfm"`` (``field_map=`` a :class:`FieldMap`), ``"csv"`` / ``"parquet"``
        (``spec=`` a :class:`TabularSpec`), or a name added by
        :func:`register_dataset`.
    path:
        File or directory to read.
    **kw:
        Passed to the loader.

    Examples
    --------
    >>> load_dataset("synthetic", n_users=5, samples_per_user=4).n_users
    5
    >>> load_dataset("imagenet")
    Traceback (most recent call last):
    ...
    protocols.errors.InvalidParameterError: unknown data set 'imagenet'; valid names: csv, libfm, movielens100k, parquet, population, synthetic
    """
    if name not in DATASET_LOADERS:
        raise InvalidParameterError(
            f"unknown data set {name!r}; valid names: {', '.join(DATASET_LOADERS.names())}"
        )
    return DATASET_LOADERS.get(name)(path, **kw)
