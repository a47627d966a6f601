"""CTR models over one shared embedding layout (see :mod:`secrelay.models.base`)."""

from secrelay.models.base import MODEL_REGISTRY, CTRModel, FieldEmbedding, make_model, register_model

__all__ = ["MODEL_REGISTRY", "CTRModel", "FieldEmbedding", "make_model", "register_model"]
