"""DP-SGD for embedding-heavy CTR models without per-example embedding gradients.

Over 500 lines because this docstring carries the privacy argument (about 100
lines, lazy noise included) next to the one optimizer class it constrains; the
per-layer norm maths is apart, in :mod:`secrelay.privacy.ghost_norms`.

Opacus' two modes both pay for the vocabulary ``V`` at every step of a CTR model:

* ``grad_sample_mode="hooks"`` materialises per-example gradients of every
  ``nn.Embedding``, a ``B × V × d`` tensor (16.2 GiB for B = 256, V = 10^6 and the
  16 + 1 columns of DeepFM's two tables);
* ghost clipping (``"ghost"``, after Li et al., ICLR 2022) computes per-example
  norms without them, but its two backward passes still write each
  table's dense ``V × d`` gradient, and its optimizer draws ``V × d`` Gaussian
  numbers and rewrites all ``V`` rows at every step.

:class:`SparseEmbeddingDPSGD` takes one DP-SGD step with a single backward pass and
no ``V``-sized gradient:

1. Forward hooks record each trainable layer's inputs and output; one
   ``torch.autograd.grad`` call returns the loss gradients with respect to those
   *outputs* only, so autograd never computes a parameter gradient (in particular
   never a ``V × d`` table gradient).
2. Per-example gradient norms come from those outputs (ghost norms): for
   ``nn.Linear`` ``‖g‖ ‖a‖`` per example (Goodfellow, arXiv:1510.01799), or the
   Gram form of Li et al. for sequence inputs; for ``nn.Embedding`` the sum over lookups of the same row of an
   example (the grouping of Opacus' embedding norm sampler, done with a ``L × L``
   equality mask); for every other layer, Opacus' registered grad sampler for that
   (small) layer. Their root sum of squares is each example's norm over **all**
   trainable parameters (flat clipping, as Opacus does).
3. The clipped sums are formed from the same recorded tensors ("book-keeping",
   Bu et al., ICML 2023): ``(c ⊙ G)ᵀ A`` for a linear layer, and for a table an
   ``index_add`` into the at most ``B × L`` rows the batch touched.
4. Gaussian noise ``N(0, z² C²)`` goes on **every** coordinate of the summed
   clipped gradient, then the sum is divided by ``expected_batch_size``. The dense
   layers get it and step with the caller's optimizer. The tables take a plain SGD
   step; ``noise="dense"`` (the default) draws their noise for all ``V`` rows at
   every step (in chunks, so memory stays bounded; time is ``O(V d)``), and
   ``noise="lazy"`` defers the noise of the rows a step did not touch (below; it
   keeps an ``int32`` per table row and a ``float64`` per step).

A step's time and extra memory then grow with the batch, the lookups per example and
the dense layers, not with ``V`` (except the dense noise of ``noise="dense"``).

Privacy guarantee
-----------------
Privacy unit: one training example. Each step is the sampled Gaussian mechanism of
DP-SGD (Abadi et al., CCS 2016) on the sum of per-example gradients clipped to L2
norm ``max_grad_norm`` = C over all trainable parameters jointly, with noise
standard deviation ``noise_multiplier × C`` on every coordinate: the same update,
in distribution, as Opacus' DP-SGD (and, without noise, the same update as Opacus'
ghost clipping to float rounding; see the tests). With batches drawn by Poisson
sampling at rate q (e.g. Opacus' ``DPDataLoader``), T steps cost
``SelfComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), T)``
(:meth:`SparseEmbeddingDPSGD.step_event` is one step's event). With fixed-size
batches that accounting does not apply, exactly as for Opacus.

``noise="dense"`` is DP-SGD step by step: every intermediate model may be released.

``noise="lazy"`` gives **the same guarantee for the models it releases**, under
stated conditions. The tables take plain SGD steps (no momentum, no weight decay),
so a row's value after step ``t`` is its initial value minus the learning-rate-scaled
sum of its clipped-gradient and noise terms; a row that no example touched in steps
``s..t-1`` has a zero gradient there, and the sum of its independent noise terms is
one Gaussian whose variance is the sum of theirs. The lazy path draws that single
Gaussian when the row is next read by a forward pass (a forward pre-hook) or when
:meth:`~SparseEmbeddingDPSGD.flush` is called, and keeps a running sum of per-step
variances (so a changing ``embedding_lr`` is handled). One can build the lazy run
from the dense run's noise, value for value, so every value training computes with,
and every flushed model, has exactly the distribution it has under dense DP-SGD;
released flushed models inherit DP-SGD's guarantee by post-processing. Conditions:

* release only models taken after ``flush()`` (``close()`` flushes). Between
  flushes, *which* rows still lack their deferred noise depends on the data (they
  are the rows the sampled examples did not touch), so the raw tables and
  :attr:`~SparseEmbeddingDPSGD.pending_rows` must not leave the trust boundary;
* flush at times that do not depend on the data (e.g. the end of local training);
* nothing else may write to the tables between steps.

This is not DP-FEST / DP-AdaFEST (Ghazi et al., NeurIPS 2023), which add noise only
to rows selected by frequency (AdaFEST: by a separate noisy count) and so change
the mechanism and its accounting; neither is implemented here.

Randomness comes from the ``torch.Generator`` passed in (seeded by the caller): as
with Opacus without ``secure_mode``, it is not a cryptographic generator and the
Gaussian sampler is not hardened against floating-point attacks.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from secrelay.data.schema import Field, Schema
>>> from secrelay.models import make_model
>>> schema = Schema((Field("user_id", "user", 50), Field("item_id", "item", 200)),
...                 user_id_field="user_id")
>>> model = make_model("deepfm", schema, embedding_dim=4, seed=0, hidden_units=(8,))
>>> trainer = SparseEmbeddingDPSGD(
...     model, torch.optim.SGD(dense_parameters(model), lr=0.1),
...     loss_fn=lambda out, y: nn.functional.binary_cross_entropy_with_logits(
...         out, y, reduction="none"),
...     embedding_lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0,
...     expected_batch_size=8, generator=torch.Generator().manual_seed(0))
>>> x = torch.stack([torch.randint(1, 50, (8,)), torch.randint(1, 200, (8,))], dim=1)
>>> loss = trainer.step(x, torch.ones(8))
>>> trainer.steps
1
>>> model is trainer.close()
True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, Literal

import torch
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.hooks import RemovableHandle

from protocols.dp.events import GaussianEvent, PoissonSampledEvent
from protocols.errors import InvalidParameterError
from secrelay.privacy.ghost_norms import (
    RecordedLayer,
    classify_layers,
    embedding_norms,
    linear_norms,
    sampled_norms,
)

__all__ = [
    "NOISE_MODES",
    "LossFn",
    "NoiseMode",
    "SparseEmbeddingDPSGD",
    "dense_parameters",
    "embedding_tables",
]

NoiseMode = Literal["dense", "lazy"]
NOISE_MODES: tuple[NoiseMode, ...] = ("dense", "lazy")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Opacus' clipping factor is C / (norm + 1e-6), capped at 1; the same constant makes
# the noiseless update equal to Opacus' to float rounding.
_CLIP_EPS = 1e-6


def embedding_tables(module: nn.Module) -> list[nn.Embedding]:
    """The ``nn.Embedding`` modules of ``module`` with a trainable weight."""
    return [m for m in module.modules() if isinstance(m, nn.Embedding) and m.weight.requires_grad]


def dense_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of ``module`` outside its embedding tables.

    Build the optimizer given to :class:`SparseEmbeddingDPSGD` over these.
    """
    tables = {id(m.weight) for m in embedding_tables(module)}
    return [p for p in module.parameters() if p.requires_grad and id(p) not in tables]


def _check_real(name: str, value: object, *, low: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterError(f"`{name}` must be a real number; got {value!r}")
    x = float(value)
    if math.isnan(x) or math.isinf(x) or (x <= low if low_open else x < low):
        bracket = "(" if low_open else "["
        raise InvalidParameterError(f"`{name}` must be in {bracket}{low:g}, inf); got {value!r}")
    return x


class SparseEmbeddingDPSGD:
    """Example-level DP-SGD with ghost norms, one backward pass and sparse table updates.

    See the module docstring for the algorithm and the exact privacy guarantee.

    Parameters
    ----------
    module:
        The model (e.g. from :func:`secrelay.models.make_model`); batch-first inputs.
        It must pass ``ModuleValidator.validate`` and own its trainable parameters
        only on leaf modules that are ``nn.Embedding``, ``nn.Linear``, or have a
        grad sampler registered with Opacus (all models in :mod:`secrelay.models`
        qualify). No layer may mix examples of a batch. ``nn.Embedding`` options
        that change the lookup or its gradient (``padding_idx``, ``max_norm``,
        ``scale_grad_by_freq``) are refused. Hooks are added until :meth:`close`.
    optimizer:
        Optimizer of the dense parameters (:func:`dense_parameters`), any
        ``torch.optim`` optimizer; it receives the noisy averaged gradient, as under
        Opacus. It must hold every dense parameter and nothing else; ``None`` when
        the model has none (only embedding tables).
    loss_fn:
        ``loss_fn(output, target)`` → per-example losses, shape ``(B,)`` (e.g.
        ``binary_cross_entropy_with_logits(..., reduction="none")``).
    embedding_lr:
        SGD learning rate of the tables, > 0 (settable between steps).
    noise_multiplier:
        z >= 0: the noise standard deviation is ``z × max_grad_norm``. ``0`` adds no
        noise and gives **no** privacy (for tests and noiseless references).
    max_grad_norm:
        Per-example clipping norm C > 0 over all trainable parameters jointly.
    expected_batch_size:
        The averaging denominator, ``q × N`` under Poisson sampling (>= 1), as in
        Opacus with ``loss_reduction="mean"``.
    generator:
        Source of all noise (required; the global RNG is never used).
    noise:
        ``"dense"`` (default; DP-SGD noise on every row at every step, ``O(V d)``
        time per step) or ``"lazy"`` (deferred noise for untouched rows: ``O(B L d)``
        per step and ``O(V d)`` per :meth:`flush`; same guarantee for models released
        after :meth:`flush`, see the module docstring).
    noise_chunk_rows:
        Rows per chunk when drawing a whole table's noise (bounds the extra memory
        of ``"dense"`` steps and of :meth:`flush` to ``noise_chunk_rows × d`` floats).

    Raises
    ------
    InvalidParameterError
        On an invalid argument; every problem is reported at once, before the model
        is touched.
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        loss_fn: LossFn,
        embedding_lr: float,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        generator: torch.Generator,
        noise: NoiseMode = "dense",
        noise_chunk_rows: int = 1 << 16,
    ) -> None:
        problems: list[str] = []
        reals: dict[str, float] = {}
        for name, value, low, low_open in (
            ("embedding_lr", embedding_lr, 0.0, True),
            ("noise_multiplier", noise_multiplier, 0.0, False),
            ("max_grad_norm", max_grad_norm, 0.0, True),
        ):
            try:
                reals[name] = _check_real(name, value, low=low, low_open=low_open)
            except InvalidParameterError as exc:
                problems.append(str(exc))
        for name, count in (
            ("expected_batch_size", expected_batch_size),
            ("noise_chunk_rows", noise_chunk_rows),
        ):
            if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
                problems.append(f"`{name}` must be an integer >= 1; got {count!r}")
        if noise not in NOISE_MODES:
            problems.append(f"`noise` must be one of {list(NOISE_MODES)}; got {noise!r}")
        if not isinstance(generator, torch.Generator):
            problems.append(f"`generator` must be a torch.Generator; got {generator!r}")
        if not callable(loss_fn):
            problems.append(f"`loss_fn` must be callable; got {loss_fn!r}")
        if not isinstance(module, nn.Module):
            problems.append(f"`module` must be an nn.Module; got {module!r}")
            raise InvalidParameterError("; ".join(problems))
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            problems.append(
                f"`optimizer` must be a torch.optim.Optimizer or None; got {optimizer!r}"
            )
            raise InvalidParameterError("; ".join(problems))
        problems += [f"ModuleValidator: {e}" for e in ModuleValidator.validate(module)]
        layers = classify_layers(module, problems)
        if not any(layer.kind == "embedding" for layer in layers):
            problems.append("`module` has no trainable nn.Embedding; use Opacus' ghost clipping")
        dense = dense_parameters(module)
        groups = optimizer.param_groups if optimizer is not None else []
        held = [p for group in groups for p in group["params"]]
        held_ids = {id(p) for p in held}
        dense_ids = {id(p) for p in dense}
        missing = [tuple(p.shape) for p in dense if id(p) not in held_ids]
        if missing:
            problems.append(f"`optimizer` lacks dense parameters of shapes {missing}")
        extra = [tuple(p.shape) for p in held if id(p) not in dense_ids]
        if extra:
            problems.append(
                f"`optimizer` holds parameters that are not dense parameters of `module` "
                f"(shapes {extra}); build it over dense_parameters(module)"
            )
        if problems:
            raise InvalidParameterError("; ".join(problems))

        self.module = module
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self._lr = reals["embedding_lr"]
        self.noise_multiplier = reals["noise_multiplier"]
        self.max_grad_norm = reals["max_grad_norm"]
        self.expected_batch_size = int(expected_batch_size)
        self.generator = generator
        self.noise: NoiseMode = noise
        self.noise_chunk_rows = int(noise_chunk_rows)
        self._dense = dense
        self._layers = layers
        self._steps = 0
        self._recording = False
        self._closed = False
        # Lazy noise: _cum_variance[s] = sum over steps u < s of the per-coordinate
        # noise variance of that step's table update, (lr_u · z · C / B_expected)².
        self._cum_variance = torch.zeros(1024, dtype=torch.float64)
        self._handles: list[RemovableHandle] = []
        for layer in layers:
            if layer.kind == "embedding":
                assert isinstance(layer.module, nn.Embedding)
                if noise == "lazy":
                    layer.noised_through = torch.zeros(
                        layer.module.num_embeddings, dtype=torch.int32
                    )
                self._handles.append(
                    layer.module.register_forward_pre_hook(self._make_lookup_hook(layer))
                )
            self._handles.append(layer.module.register_forward_hook(self._make_record_hook(layer)))

    # ------------------------------------------------------------------ properties
    @property
    def steps(self) -> int:
        """Steps taken (each one is one accounted DP-SGD step)."""
        return self._steps

    @property
    def embedding_lr(self) -> float:
        """SGD learning rate of the embedding tables (> 0)."""
        return self._lr

    @embedding_lr.setter
    def embedding_lr(self, value: float) -> None:
        self._lr = _check_real("embedding_lr", value, low=0.0, low_open=True)

    @property
    def tables(self) -> tuple[nn.Embedding, ...]:
        """The embedding tables this trainer updates."""
        return tuple(x.module for x in self._layers if isinstance(x.module, nn.Embedding))

    @property
    def pending_rows(self) -> int:
        """Table rows whose deferred noise is not applied yet (``"lazy"``; else 0).

        Data-dependent: never release it (see the module docstring).
        """
        now = self._cum_variance[self._steps]
        return sum(
            int((self._cum_variance[x.noised_through.long()] < now).sum())
            for x in self._layers
            if x.noised_through is not None
        )

    def step_event(self, *, sample_rate: float) -> PoissonSampledEvent:
        """The privacy event of one step under Poisson sampling at ``sample_rate``."""
        return PoissonSampledEvent(
            sample_rate=sample_rate, event=GaussianEvent(noise_multiplier=self.noise_multiplier)
        )

    # ------------------------------------------------------------------ hooks
    def _make_lookup_hook(self, layer: RecordedLayer) -> Callable[..., None]:
        def hook(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
            if not (self._recording or layer.noised_through is not None):
                return
            idx = inputs[0].detach()
            rows, position = torch.unique(idx.reshape(-1), return_inverse=True)
            if layer.noised_through is not None:
                # Every read sees the value dense DP-SGD would have: catch up first.
                self._apply_deferred_noise(layer, rows)
            if self._recording:
                layer.lookups.append((rows, position))

        return hook

    def _make_record_hook(self, layer: RecordedLayer) -> Callable[..., None]:
        def hook(mod: nn.Module, inputs: tuple[Any, ...], out: torch.Tensor) -> None:
            if self._recording:
                layer.calls.append((tuple(t.detach() for t in inputs), out))

        return hook

    # ------------------------------------------------------------------ noise
    def _randn(self, rows: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(rows, dim, generator=self.generator, dtype=dtype)

    @torch.no_grad()
    def _apply_deferred_noise(self, layer: RecordedLayer, rows: torch.Tensor) -> None:
        """Add to ``rows`` of a table the noise deferred since they last got theirs."""
        assert layer.noised_through is not None and isinstance(layer.module, nn.Embedding)
        weight = layer.module.weight
        since = self._cum_variance[layer.noised_through[rows].long()]
        variance = self._cum_variance[self._steps] - since
        due = variance > 0
        if not bool(due.any()):
            return
        rows, variance = rows[due], variance[due]
        noise = self._randn(len(rows), weight.shape[1], weight.dtype)
        noise.mul_(variance.sqrt().to(weight.dtype).unsqueeze(1))
        weight.index_add_(0, rows, noise)
        layer.noised_through[rows] = self._steps

    @torch.no_grad()
    def flush(self) -> None:
        """Apply all deferred noise (``"lazy"``); afterwards the model may be released.

        ``O(V d)`` time and ``noise_chunk_rows × d`` extra memory; a no-op for
        ``"dense"``.
        """
        for layer in self._layers:
            if layer.noised_through is not None:
                n = layer.noised_through.shape[0]
                for start in range(0, n, self.noise_chunk_rows):
                    rows = torch.arange(start, min(n, start + self.noise_chunk_rows))
                    self._apply_deferred_noise(layer, rows)

    # ------------------------------------------------------------------ step
    def step(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One DP-SGD step on the batch ``(x, target)``; returns the mean loss (detached).

        Forward, one backward pass to the recorded layer outputs, per-example norms,
        clipping, noise, ``optimizer.step()`` on the dense parameters and an SGD
        update of the table rows. An empty batch (possible under Poisson sampling)
        takes a noise-only step.
        """
        if self._closed:
            raise RuntimeError("this SparseEmbeddingDPSGD is closed")
        batch = int(x.shape[0])
        sigma = self.noise_multiplier * self.max_grad_norm
        for layer in self._layers:
            layer.calls.clear()
            layer.lookups.clear()
        dense_sums: dict[int, torch.Tensor] = {}
        table_sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        loss_value = torch.zeros(())
        if batch > 0:
            self._recording = True
            try:
                losses = self.loss_fn(self.module(x), target)
            finally:
                self._recording = False
            if losses.shape != (batch,):
                raise InvalidParameterError(
                    f"`loss_fn` must return per-example losses of shape ({batch},); "
                    f"got {tuple(losses.shape)}"
                )
            used = [layer for layer in self._layers if layer.calls]
            outputs = [out for layer in used for _, out in layer.calls]
            grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
            parts = []
            k = 0
            for layer in used:
                n = len(layer.calls)
                layer_grads = [
                    g if g is not None else torch.zeros_like(out)
                    for g, (_, out) in zip(grads[k : k + n], layer.calls)
                ]
                k += n
                parts.append((layer, layer_grads))
            sq_norm = torch.zeros(batch, dtype=losses.dtype)
            dense_fns = []
            table_fns = []
            for layer, layer_grads in parts:
                if layer.kind == "embedding":
                    sq, table_fn = embedding_norms(layer, layer_grads, batch)
                    table_fns.append((layer, table_fn))
                else:
                    rule = linear_norms if layer.kind == "linear" else sampled_norms
                    sq, dense_fn = rule(layer, layer_grads, batch)
                    dense_fns.append((layer, dense_fn))
                sq_norm += sq.to(sq_norm.dtype)
            coef = (self.max_grad_norm / (sq_norm.sqrt() + _CLIP_EPS)).clamp(max=1.0).detach()
            for layer, dense_fn in dense_fns:
                params = [p for p in layer.module.parameters(recurse=False) if p.requires_grad]
                for p, s in zip(params, dense_fn(coef)):
                    dense_sums[id(p)] = dense_sums[id(p)] + s if id(p) in dense_sums else s
            for layer, table_fn in table_fns:
                table_sums[id(layer.module)] = table_fn(coef)
            loss_value = losses.detach().mean()
        for layer in self._layers:
            layer.calls.clear()
            layer.lookups.clear()
        with torch.no_grad():
            for p in self._dense:
                grad = dense_sums.get(id(p))
                grad = grad.to(p.dtype) if grad is not None else torch.zeros_like(p)
                if sigma > 0:
                    grad = grad + sigma * torch.randn(
                        p.shape, generator=self.generator, dtype=p.dtype
                    )
                p.grad = grad / self.expected_batch_size
            self._update_tables(table_sums, sigma)
        if self.optimizer is not None:
            self.optimizer.step()
        self._steps += 1
        return loss_value

    def _update_tables(
        self, table_sums: dict[int, tuple[torch.Tensor, torch.Tensor]], sigma: float
    ) -> None:
        scale = -self._lr / self.expected_batch_size
        step_variance = (scale * sigma) ** 2
        for layer in self._layers:
            if not isinstance(layer.module, nn.Embedding):
                continue
            weight = layer.module.weight
            dim = weight.shape[1]
            touched = table_sums.get(id(layer.module))
            if touched is not None:
                rows, sums = touched
                if self.noise == "lazy" and sigma > 0:
                    sums = sums + sigma * self._randn(len(rows), dim, weight.dtype)
                weight.index_add_(0, rows, sums.to(weight.dtype), alpha=scale)
                if layer.noised_through is not None:
                    # These rows got this step's noise; the others owe it.
                    layer.noised_through[rows] = self._steps + 1
            if self.noise == "dense" and sigma > 0:
                n = weight.shape[0]
                for start in range(0, n, self.noise_chunk_rows):
                    stop = min(n, start + self.noise_chunk_rows)
                    weight[start:stop].add_(
                        self._randn(stop - start, dim, weight.dtype), alpha=scale * sigma
                    )
        if self.noise == "lazy":
            if self._steps + 1 >= len(self._cum_variance):
                grown = torch.zeros(2 * len(self._cum_variance), dtype=torch.float64)
                grown[: len(self._cum_variance)] = self._cum_variance
                self._cum_variance = grown
            self._cum_variance[self._steps + 1] = self._cum_variance[self._steps] + step_variance

    # ------------------------------------------------------------------ teardown
    def close(self) -> nn.Module:
        """Flush deferred noise and remove the hooks; returns the module (idempotent)."""
        if not self._closed:
            self.flush()
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._closed = True
        return self.module
