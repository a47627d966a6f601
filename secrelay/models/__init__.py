"""CTR models over one shared embedding layout (see :mod:`secrelay.models.base`).

Importing this package registers the six models with :func:`make_model`:

========== ======================================== ==============================
name       class                                    paper
========== ======================================== ==============================
``lr``       :class:`LogisticRegression`              McMahan et al., KDD 2013
``dnn``      :class:`DNN`                             Covington et al., RecSys 2016
``widedeep`` :class:`WideDeep`                        Cheng et al., DLRS 2016
``deepfm``   :class:`DeepFM`                          Guo et al., IJCAI 2017
``dcnv2``    :class:`DCNV2`                           Wang et al., WWW 2021
``xdeepfm``  :class:`XDeepFM`                         Lian et al., KDD 2018
========== ======================================== ==============================

Every model is Opacus-ready as built: ``ModuleValidator.validate(model,
strict=True)`` finds nothing, and each trainable leaf module has a registered
per-sample gradient (and, where Opacus has one, a ghost-clipping norm sampler).
"""

from secrelay.models.base import (
    MODEL_REGISTRY,
    CTRModel,
    FieldEmbedding,
    make_model,
    register_model,
)
from secrelay.models.dcnv2 import DCNV2
from secrelay.models.deepfm import DeepFM
from secrelay.models.dnn import DNN
from secrelay.models.lr import LogisticRegression
from secrelay.models.utils import (
    count_parameters,
    flat_parameter_slices,
    flatten_parameters,
    load_flat_parameters,
    numpy_dict_to_parameters,
    parameters_to_numpy_dict,
)
from secrelay.models.widedeep import WideDeep
from secrelay.models.xdeepfm import XDeepFM

__all__ = [
    "DCNV2",
    "DNN",
    "MODEL_REGISTRY",
    "CTRModel",
    "DeepFM",
    "FieldEmbedding",
    "LogisticRegression",
    "WideDeep",
    "XDeepFM",
    "count_parameters",
    "flat_parameter_slices",
    "flatten_parameters",
    "load_flat_parameters",
    "make_model",
    "numpy_dict_to_parameters",
    "parameters_to_numpy_dict",
    "register_model",
]
