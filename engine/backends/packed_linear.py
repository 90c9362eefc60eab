"""Faster batched CPU products for the chat model: its fp32 linear layers keep a copy of their weights pre-packed."""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# LoRA's A and B matrices and other small layers gain nothing from a second copy.
MIN_WEIGHTS = 1 << 16
# From 3 rows on, oneDNN's packed product of the output layer is faster than torch's default (MKL sgemm):
# SmolLM2's 49,152 x 576 layer, 2 cores: 4.4 vs 6.1-10.1 ms for 4-8 rows, 3.7 ms both for 3.
HEAD_FROM_ROWS = 3


class _PackedLinear(torch.nn.Linear):
    """An ``nn.Linear`` with the same weight and bias Parameters (ties, ``state_dict`` and adapters stay as they
    were) plus a packed copy of the weight, used only where it computes the same product: inference (no
    autograd through the packed ops), on the CPU, while the weight is still the one that was packed."""

    def __init__(self, linear: torch.nn.Linear, packed: torch.Tensor):
        torch.nn.Module.__init__(self)     # not Linear.__init__: it would allocate a new weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.packed = packed               # a plain attribute: not saved, not moved by .to()
        self._packed_version = linear.weight._version

    def __deepcopy__(self, memo: dict) -> torch.nn.Linear:
        # oneDNN's packed tensor cannot be copied; a copy (e.g. to wrap in an adapter) is a plain layer.
        plain = torch.nn.Linear.__new__(torch.nn.Linear)
        torch.nn.Module.__init__(plain)
        plain.in_features, plain.out_features = self.in_features, self.out_features
        plain.weight, plain.bias = copy.deepcopy(self.weight, memo), copy.deepcopy(self.bias, memo)
        plain.train(self.training)
        memo[id(self)] = plain
        return plain

    def _packed_valid(self, x: torch.Tensor) -> bool:
        """Whether the packed copy computes this product (asked only once the row count fits: one reply's
        decode step, 1 row, pays a single comparison per layer)."""
        return not (torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu"
                    or self.weight.device.type != "cpu" or self.weight._version != self._packed_version)


class MklPackedLinear(_PackedLinear):
    """MKL's packed sgemm (``cblas_sgemm_pack``): laid out for one row count, used only for exactly that many."""

    def __init__(self, linear: torch.nn.Linear, rows: int):
        super().__init__(linear, torch.ops.mkl._mkl_reorder_linear_weight(linear.weight.detach(), rows))
        self.rows = rows
        # torch allocates as many floats as MKL asks bytes for, and only those bytes are written. What MKL asks
        # can exceed what stays resident: SmolLM2's layers ask 597 MiB, RSS grows by about 390.
        self.packed_bytes = self.packed.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == self.rows * self.in_features and self._packed_valid(x):
            return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, self.bias, self.rows)
        return F.linear(x, self.weight, self.bias)


class OneDnnPackedLinear(_PackedLinear):
    """oneDNN's blocked layout: one copy for every row count."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__(linear, torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None))
        self.packed_bytes = self.packed.numel() * self.packed.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() >= HEAD_FROM_ROWS * self.in_features and self._packed_valid(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def _packable(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    # Exactly nn.Linear: bitsandbytes' and GPTQ's layers subclass it with weights of their own format.
    return (type(module) is torch.nn.Linear and weight is not None and weight.dtype == torch.float32
            and weight.device.type == "cpu" and weight.numel() >= MIN_WEIGHTS
            and not module._forward_hooks and not module._forward_pre_hooks
            and getattr(module, "_hf_hook", None) is None)


def pack_for_batches(model: torch.nn.Module, rows: int, budget: int | None = None) -> int:
    """Swap the model's fp32 CPU ``nn.Linear`` layers for packed ones; the bytes the packed copies take.

    With ``budget`` (bytes), nothing is packed where the copies would take more than that (they take about the
    weights' size): a model that barely fits the machine is served slower rather than killed for memory.

    The output layer (the widest) gets oneDNN's layout, for every batch of ``HEAD_FROM_ROWS`` rows or more;
    the others MKL's, for a full batch of ``rows`` (MKL's packed product wins only at the row count it was
    packed for: 28-32 vs 35-40 ms for SmolLM2's 210 layers at 8 rows, 2 cores). A torch built without MKL or
    oneDNN leaves those layers as they were. Runs parallel work: call it in a thread that ends
    (``torch_threads.in_own_thread``).
    """
    layers = [(name, module) for name, module in model.named_modules() if _packable(module)]
    need = sum(module.weight.numel() * module.weight.element_size() for _, module in layers)
    if budget is not None and need > budget:
        log.warning("weights not packed for batches: the copies need about %d MiB, more than the %d MiB allowed",
                    need >> 20, budget >> 20)
        return 0
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    kinds = {"mkl": torch.backends.mkl.is_available(), "onednn": torch.backends.mkldnn.is_available()}
    added = 0
    for name, module in layers:
        kind = "onednn" if module is head else "mkl"
        if not kinds[kind]:
            continue
        try:
            packed = OneDnnPackedLinear(module) if kind == "onednn" else MklPackedLinear(module, rows)
        except RuntimeError as e:     # the op is not in this torch's build, or memory ran out: keep the plain layer
            log.warning("%s: no %s packing (%s); batched products use torch's default", name, kind, e)
            kinds[kind] = False
            continue
        model.set_submodule(name, packed)
        added += packed.packed_bytes
    return added
