"""The engine's lean forward (agentflow/models/engine/fast_forward.py) against transformers' own.

Tiny random models: what is checked is that both forwards compute the same function
(ids equal, log-probs within 1e-4: oneDNN sums in another order than MKL), for a plain
Llama, a peft LoRA policy (adapter active, updated in place, disabled) and a Qwen2 with
q/k/v biases; and that a model it does not cover falls back to transformers' forward.
"""

from __future__ import annotations

import pytest
import torch

from agentflow.models import GenerationEngine, SamplingParams, mark_weights_updated, tiny_model
from agentflow.models.engine.fast_forward import FastForward
from tests.conftest import reference_logprobs


def _prompts(tokenizer):
    shared = tokenizer.encode("System: plan with tools: calculator, python, search. " * 2)
    return [shared + tokenizer.encode(f" Question {i}: what is {i} * 7?" * (1 + i % 3)) for i in range(5)]


def _check_against_model(engine, model, prompts):
    outs = [f.result() for f in [engine.submit(p, SamplingParams(max_new_tokens=8)) for p in prompts]]
    for prompt, out in zip(prompts, outs):
        assert out.logprobs == pytest.approx(reference_logprobs(model, prompt, out.completion_ids), abs=1e-4)
    return outs


def test_lean_forward_matches_transformers_batched_with_prefix_hits(tokenizer):
    model = tiny_model(vocab_size=len(tokenizer))
    fast = GenerationEngine(model, tokenizer, seed=0, prefix_cache_min=8)
    slow = GenerationEngine(model, tokenizer, seed=0, prefix_cache_min=8, fast_forward=False)
    assert fast._runner.fast is not None and slow._runner.fast is None
    prompts = _prompts(tokenizer)
    a = _check_against_model(fast, model, prompts)
    b = [slow.generate(p, SamplingParams(max_new_tokens=8)) for p in prompts]
    assert [x.completion_ids for x in a] == [x.completion_ids for x in b]
    assert fast.stats["prefix_tokens_reused"] > 0


def test_lora_policy_is_merged_and_follows_updates(tokenizer):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model(vocab_size=len(tokenizer)),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # LoRA B starts at zero: make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    engine = GenerationEngine(model, tokenizer, seed=0, prefix_cache_min=8)
    assert engine._runner.fast is not None
    prompts = _prompts(tokenizer)[:3]
    first = _check_against_model(engine, model, prompts)
    with torch.no_grad():  # an optimizer step on the adapter only
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.add_(torch.randn_like(p) * 0.5)
    second = _check_against_model(engine, model, prompts)
    assert [o.logprobs for o in first] != [o.logprobs for o in second]
    with model.disable_adapter():  # the KL reference view of the same model
        _check_against_model(engine, model, prompts)


def test_weights_a_fused_optimizer_wrote_are_seen_after_mark_weights_updated(tokenizer):
    """A fused AdamW step (the Hugging Face Trainer's default) writes without bumping the
    parameters' version counters; `mark_weights_updated` makes the engine repack."""
    model = tiny_model(vocab_size=len(tokenizer))
    engine = GenerationEngine(model, tokenizer, seed=0, prefix_cache_min=8)
    prompts = _prompts(tokenizer)[:3]
    first = _check_against_model(engine, model, prompts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    mark_weights_updated(model)
    second = _check_against_model(engine, model, prompts)
    assert [o.logprobs for o in first] != [o.logprobs for o in second]


def test_qwen2_biases(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=2, pad_token_id=2)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.normal_()
            layer.self_attn.k_proj.bias.normal_()
    assert FastForward.unsupported(model) is None
    _check_against_model(GenerationEngine(model, tokenizer, seed=0), model, _prompts(tokenizer)[:3])


def test_uncovered_model_falls_back_to_transformers(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4,
                                       eos_token_id=2, pad_token_id=2)).eval()
    assert "gpt2" in FastForward.unsupported(model)
    with pytest.raises(ValueError, match="does not cover"):
        FastForward(model)
    engine = GenerationEngine(model, tokenizer, seed=0)
    assert engine._runner.fast is None
    _check_against_model(engine, model, _prompts(tokenizer)[:2])


def test_unpacked_path_for_other_dtypes(tokenizer):
    """Weights are packed for oneDNN in fp32 on CPU, and in bf16 where bf16 is fast; other
    dtypes/devices (float64, emulated bf16, CUDA) use the fused weights with F.linear.
    float64 checks that path exactly."""
    model = tiny_model(vocab_size=len(tokenizer)).to(torch.float64)
    engine = GenerationEngine(model, tokenizer, seed=0, prefix_cache_min=8)
    _check_against_model(engine, model, _prompts(tokenizer)[:3])
    assert engine._runner.fast is not None and not any(p.packed for p in engine._runner.fast.projections)


def test_engines_over_one_model_share_packed_weights(tokenizer):
    """Several engines over one model (the benchmark, an eval) hold one packed copy of its
    weights, not one each; an update repacks once and every engine follows it; a second
    model with equal values but its own tensors gets its own copy; the copy is freed with
    the last engine that holds it."""
    import gc
    import weakref

    model = tiny_model(vocab_size=len(tokenizer))
    a = GenerationEngine(model, tokenizer, seed=0, prefix_cache_min=8)
    b = GenerationEngine(model, tokenizer, seed=0, prefix_cache_min=8)
    prompts = _prompts(tokenizer)[:2]
    _check_against_model(a, model, prompts)
    _check_against_model(b, model, prompts)
    pa, pb = a._runner.fast.projections, b._runner.fast.projections
    assert all(x.current is y.current for x, y in zip(pa, pb))
    with torch.no_grad():  # an optimizer step, in place
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    _check_against_model(a, model, prompts)
    _check_against_model(b, model, prompts)
    assert all(x.current is y.current for x, y in zip(pa, pb))

    other = tiny_model(vocab_size=len(tokenizer))
    other.load_state_dict(model.state_dict())
    c = GenerationEngine(other, tokenizer, seed=0)
    _check_against_model(c, other, prompts)
    assert not any(x.current is z.current for x, z in zip(pa, c._runner.fast.projections))

    held = weakref.ref(pa[0].current)
    a.close()
    b.close()
    del a, b, pa, pb
    gc.collect()
    assert held() is None


def test_bf16_weights_are_packed_where_bf16_is_fast(tokenizer, monkeypatch):
    """bf16 weights are packed for oneDNN on CPUs with bf16 matrix units (AMX, AVX512-BF16)
    and left to F.linear elsewhere; packed or not, the engine's tokens and log-probs agree."""
    import weakref

    from agentflow.models import bf16_is_fast
    from agentflow.models.engine import fast_forward

    model = tiny_model(vocab_size=len(tokenizer)).to(torch.bfloat16)
    prompts = _prompts(tokenizer)[:3]
    params = SamplingParams(max_new_tokens=8)
    engine = GenerationEngine(model, tokenizer, seed=0, prefix_cache_tokens=0)
    packed = [f.result() for f in [engine.submit(p, params) for p in prompts]]
    assert all(p.packed for p in engine._runner.fast.projections) == bf16_is_fast("cpu")
    # the same model with packing off (and a table of its own, or it would share the packed copy)
    monkeypatch.setattr(fast_forward, "_packs", lambda weight: False)
    monkeypatch.setattr(fast_forward, "_SHARED", weakref.WeakValueDictionary())
    plain = GenerationEngine(model, tokenizer, seed=0, prefix_cache_tokens=0)
    unpacked = [f.result() for f in [plain.submit(p, params) for p in prompts]]
    assert not any(p.packed for p in plain._runner.fast.projections)
    for a, b in zip(packed, unpacked):
        assert a.completion_ids == b.completion_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)
