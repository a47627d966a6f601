"""Data: schemas, loaders, the synthetic generator, regulation and device splits."""

from secrelay.data._io import LoadResult, Vocabulary
from secrelay.data.dataset import CTRDataset, FilterReport
from secrelay.data.factory import DATASET_LOADERS, load_dataset, register_dataset
from secrelay.data.filters import filter_min_rows_per_user
from secrelay.data.libfm import FieldMap, FieldMapEntry, load_libfm, read_libfm
from secrelay.data.movielens import load_movielens100k, read_movielens100k
from secrelay.data.schema import FIELD_ROLES, Field, FieldRole, Schema
from secrelay.data.splits import (
    DeviceSplit,
    RegulationSplit,
    SupportQuerySplit,
    device_train_test_split,
    global_temporal_split,
    partition_by_user,
    regulation_split,
    shuffle_user_id,
    support_query_split,
)
from secrelay.data.synthetic import (
    SyntheticData,
    SyntheticLatents,
    make_synthetic,
    make_synthetic_with_latents,
)
from secrelay.data.tabular import (
    ColumnField,
    TabularSpec,
    load_csv,
    load_parquet,
    read_csv,
    read_parquet,
)

__all__ = [
    "DATASET_LOADERS",
    "FIELD_ROLES",
    "CTRDataset",
    "ColumnField",
    "DeviceSplit",
    "Field",
    "FieldMap",
    "FieldMapEntry",
    "FieldRole",
    "FilterReport",
    "LoadResult",
    "RegulationSplit",
    "Schema",
    "SupportQuerySplit",
    "SyntheticData",
    "SyntheticLatents",
    "TabularSpec",
    "Vocabulary",
    "device_train_test_split",
    "filter_min_rows_per_user",
    "global_temporal_split",
    "load_csv",
    "load_dataset",
    "load_libfm",
    "load_movielens100k",
    "load_parquet",
    "make_synthetic",
    "make_synthetic_with_latents",
    "partition_by_user",
    "read_csv",
    "read_libfm",
    "read_movielens100k",
    "read_parquet",
    "register_dataset",
    "regulation_split",
    "shuffle_user_id",
    "support_query_split",
]
