"""The method plug-in contract and what every method shares.

:class:`Method` and :class:`RunContext` are the contract between the runner
(:mod:`secrelay.experiment`) and a method; :data:`METHODS` is their registry.
:class:`LoopMethod` is the base of methods driven by one federated loop, with the
run's :class:`~secrelay.privacy.plan.PrivacyPlan` composed in. The built-in relay
methods live in :mod:`secrelay.relay`, one package each.
"""

from secrelay.methods.base import METHODS, Method, RunContext, register_method
from secrelay.methods.cloud import make_train_config, model_spec_from, train_cloud_model
from secrelay.methods.data import PreparedData, prepare_data
from secrelay.methods.federated import FederatedMethod
from secrelay.methods.loop import LoopMethod

__all__ = [
    "METHODS",
    "FederatedMethod",
    "LoopMethod",
    "Method",
    "PreparedData",
    "RunContext",
    "make_train_config",
    "model_spec_from",
    "prepare_data",
    "register_method",
    "train_cloud_model",
]
