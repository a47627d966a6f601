"""Data: schemas, loaders, the synthetic generator, regulation and device splits."""

from secrelay.data.dataset import CTRDataset, FilterReport
from secrelay.data.schema import FIELD_ROLES, Field, FieldRole, Schema

__all__ = ["FIELD_ROLES", "CTRDataset", "Field", "FieldRole", "FilterReport", "Schema"]
