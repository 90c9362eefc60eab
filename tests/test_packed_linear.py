"""Packed weights for batched CPU products: the same logits, used only where they are valid, the model intact."""
from __future__ import annotations

import copy

import pytest
import torch

from engine.backends.packed_linear import MklPackedLinear, OneDnnPackedLinear, pack_for_batches

ROWS = 8
pytestmark = pytest.mark.skipif(not (torch.backends.mkl.is_available() and torch.backends.mkldnn.is_available()),
                                reason="this torch has no MKL or oneDNN")


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def models():
    plain = tiny_llama()
    packed = copy.deepcopy(plain)
    packed.tie_weights()
    added = pack_for_batches(packed, ROWS)
    return plain, packed, added


def logits(model, rows: int, length: int = 1) -> torch.Tensor:
    """One forward of ``rows`` sequences of ``length`` tokens: the layers see rows x length rows (a decode step: 1)."""
    ids = torch.arange(rows * length).reshape(rows, length) % 2048
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_every_large_fp32_layer_is_packed_and_the_model_keeps_its_parameters(models):
    plain, packed, added = models
    assert isinstance(packed.lm_head, OneDnnPackedLinear)
    assert all(isinstance(m, MklPackedLinear) for layer in packed.model.layers
               for m in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj, layer.self_attn.q_proj))
    assert packed.lm_head.weight is packed.model.embed_tokens.weight        # the tie survives
    assert list(packed.state_dict()) == list(plain.state_dict())            # nothing new is saved
    assert added >= sum(m.weight.numel() * 4 for m in packed.modules() if isinstance(m, MklPackedLinear))


@pytest.mark.parametrize("rows, length", [(1, 1), (2, 1), (3, 1), (7, 1), (8, 1), (9, 1), (2, 4), (3, 5)])
def test_logits_match_the_plain_model_at_any_batch_size(models, rows, length):
    plain, packed, _ = models
    torch.testing.assert_close(logits(packed, rows, length), logits(plain, rows, length), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make", [lambda linear: MklPackedLinear(linear, ROWS), OneDnnPackedLinear])
def test_the_packed_products_add_the_bias(make):
    linear = torch.nn.Linear(256, 512, bias=True)
    x = torch.randn(ROWS, 256)
    with torch.inference_mode():
        torch.testing.assert_close(make(linear)(x), linear(x), rtol=1e-4, atol=1e-4)


def test_the_packed_copy_serves_exactly_the_row_counts_it_was_made_for():
    layer = MklPackedLinear(torch.nn.Linear(256, 512, bias=False), ROWS)
    head = OneDnnPackedLinear(torch.nn.Linear(256, 2048, bias=False))
    # A packed copy of zeros: where it is used, the output is zero.
    layer.packed = torch.ops.mkl._mkl_reorder_linear_weight(torch.zeros(512, 256), ROWS)
    head.packed = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(2048, 256), None)
    with torch.inference_mode():
        assert not layer(torch.randn(ROWS, 1, 256)).any()
        assert layer(torch.randn(ROWS - 1, 1, 256)).any() and layer(torch.randn(1, 256)).any()
        assert not head(torch.randn(3, 256)).any() and not head(torch.randn(9, 1, 256)).any()
        assert head(torch.randn(2, 256)).any() and head(torch.randn(1, 256)).any()


def test_training_and_changed_weights_use_the_plain_product():
    linear = torch.nn.Linear(256, 512, bias=True)
    layer = MklPackedLinear(linear, ROWS)
    x = torch.randn(ROWS, 256, requires_grad=True)
    layer(x).sum().backward()                      # autograd (fine-tuning): the packed ops have no backward
    assert x.grad is not None and layer.weight.grad is not None
    with torch.no_grad():
        layer.weight.mul_(2.0)                     # e.g. an adapter merged into the weight
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_a_copy_of_a_packed_model_is_a_plain_one_with_the_same_weights(models):
    plain, packed, _ = models
    copied = copy.deepcopy(packed)        # oneDNN's packed tensors cannot be copied themselves
    assert type(copied.lm_head) is torch.nn.Linear and type(copied.model.layers[0].mlp.up_proj) is torch.nn.Linear
    assert copied.lm_head.weight is copied.model.embed_tokens.weight
    assert copied.lm_head.weight is not packed.lm_head.weight
    torch.testing.assert_close(logits(copied, ROWS), logits(plain, ROWS), rtol=1e-4, atol=1e-4)


def test_nothing_is_packed_when_the_copies_would_not_fit_the_memory_budget():
    model = tiny_llama()
    weights = sum(m.weight.numel() * 4 for m in model.modules() if type(m) is torch.nn.Linear)
    assert pack_for_batches(model, ROWS, budget=weights // 2) == 0
    assert not any(isinstance(m, (MklPackedLinear, OneDnnPackedLinear)) for m in model.modules())
    assert pack_for_batches(model, ROWS, budget=weights * 2) > 0
    assert isinstance(model.lm_head, OneDnnPackedLinear)
