"""The layers MetaUA learns one weight vector and one server scale for.

A layer is the set of parameters of one module: the flat parameter vector of a
:class:`~secrelay.federated.client.ModelSpec` model is cut into consecutive
coordinate ranges, one per owning module, so that a per-layer value (θ_s,l, e_k,l)
can be broadcast to every coordinate with :meth:`LayerPartition.layer_of`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LayerPartition"]


@dataclass(frozen=True)
class LayerPartition:
    """The layers of a flat parameter vector: one layer per owning module.

    Attributes
    ----------
    names:
        Module names (``"cross.layers.0"``), in ``model.parameters()`` order.
    bounds:
        ``[start, stop)`` of each layer's coordinates in the flat vector.

    Examples
    --------
    >>> p = LayerPartition(("emb", "out"), ((0, 3), (3, 5)))
    >>> p.num_layers, p.size, p.layer_of().tolist()
    (2, 5, [0, 0, 0, 1, 1])
    """

    names: tuple[str, ...]
    bounds: tuple[tuple[int, int], ...]

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> LayerPartition:
        """One layer per module owning consecutive parameters of ``model``."""
        names: list[str] = []
        bounds: list[tuple[int, int]] = []
        offset = 0
        for pname, p in model.named_parameters():
            module = pname.rsplit(".", 1)[0] if "." in pname else pname
            n = p.numel()
            if names and names[-1] == module and bounds[-1][1] == offset:
                bounds[-1] = (bounds[-1][0], offset + n)
            else:
                names.append(module)
                bounds.append((offset, offset + n))
            offset += n
        return cls(tuple(names), tuple(bounds))

    @property
    def num_layers(self) -> int:
        """L, the number of layers."""
        return len(self.names)

    @property
    def size(self) -> int:
        """d, the number of coordinates of the flat vector."""
        return self.bounds[-1][1] if self.bounds else 0

    def layer_of(self) -> np.ndarray:
        """The layer index of every coordinate, shape ``(d,)``."""
        out = np.empty(self.size, dtype=np.int64)
        for i, (a, b) in enumerate(self.bounds):
            out[a:b] = i
        return out
