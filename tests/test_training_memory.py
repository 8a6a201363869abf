"""The memory estimate of a single-node run, its refusal, and the bf16 optimizer that makes 4B fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

from benchmarks.gpu_ppo_check import QWEN3_0_6B, qwen3_config
from pacore_agent.exceptions import UsageError
from tests.helpers import one_problem_run
from training.memory import (
    BYTES_PER_PARAMETER,
    HEADROOM,
    BF16AdamW,
    check_fits,
    count_parameters,
    estimate_memory,
)
from training.ppo import PPOConfig, PPOTrainer, ValueModel

H200 = 141 * 10**9  # bytes of one H200


def _llama(tied: bool) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )


def _qwen3(hidden: int, layers: int, intermediate: int, tied: bool) -> Qwen3Config:
    """A Qwen3 config with the published shape (vocabulary 151936, 32 query and 8 key/value heads of 128)."""
    shape = dataclasses.replace(
        QWEN3_0_6B,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=intermediate,
        num_attention_heads=32,
    )
    return qwen3_config(shape, tied=tied)


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_counts_match_the_built_models(tied: bool) -> None:
    config = _llama(tied)
    actor_count, critic_count = count_parameters(config)
    torch.manual_seed(0)
    actor = AutoModelForCausalLM.from_config(config)
    critic = ValueModel.from_actor(actor)
    assert actor_count == sum(p.numel() for p in actor.parameters())
    assert critic_count == sum(p.numel() for p in critic.parameters())
    # the critic has no LM head: untied, it is smaller than the actor by vocab x hidden, less the head
    if not tied:
        assert actor_count - critic_count == 97 * 32 - 33


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_estimate_is_bytes_per_parameter_times_parameters(precision: str) -> None:
    actor_count, critic_count = count_parameters(_llama(tied=False))
    estimate = estimate_memory(actor_count, critic_count, precision, model="tiny")  # type: ignore[arg-type]
    per = {"fp32": 4 + 4 + 8, "bf16": 2 + 2 + 8 + 2}[precision]  # weights, gradients, moments (+ Kahan)
    assert sum(BYTES_PER_PARAMETER[precision].values()) == per
    assert estimate.total == per * (actor_count + critic_count)
    assert estimate.parts["actor/optimizer"] == BYTES_PER_PARAMETER[precision]["optimizer"] * actor_count
    assert estimate.parts["critic/weights"] == BYTES_PER_PARAMETER[precision]["weights"] * critic_count
    assert f"in {precision}" in estimate.describe() and "before activations" in estimate.describe()
    with pytest.raises(UsageError, match="--precision must be one of"):
        estimate_memory(1, 1, "fp16")  # type: ignore[arg-type]


def test_qwen3_sizes_against_one_h200() -> None:
    # Qwen3-4B (tied embeddings): about 4.02B parameters; bf16 fits one H200, fp32 does not
    four = estimate_memory(*count_parameters(_qwen3(2560, 36, 9728, tied=True)), "bf16", model="Qwen3-4B")
    assert 3.9e9 < four.actor_parameters < 4.1e9
    assert four.total == 14 * (four.actor_parameters + four.critic_parameters)
    check_fits(four, H200, where="cuda:0")
    fp32 = estimate_memory(four.actor_parameters, four.critic_parameters, "fp32", model="Qwen3-4B")
    with pytest.raises(UsageError) as refused:
        check_fits(fp32, H200, where="cuda:0")
    message = str(refused.value)
    assert f"more than {HEADROOM:.0%} of the 141.0 GB of cuda:0" in message
    assert "--precision bf16 needs 112." in message and "fits" in message
    # Qwen3-8B (untied): about 8.2B parameters, 221 GB in bf16: refused, pointing at verl
    eight = estimate_memory(*count_parameters(_qwen3(4096, 36, 12288, tied=False)), "bf16", model="Qwen3-8B")
    assert 8.1e9 < eight.actor_parameters < 8.3e9
    with pytest.raises(UsageError) as refused:
        check_fits(eight, H200, where="cuda:0")
    message = str(refused.value)
    assert message.startswith("memory of Qwen3-8B in bf16: actor 8.19B params")
    assert "train with verl (training/verl/README.md)" in message and "--precision bf16" not in message


def test_bf16_adamw_matches_adamw_on_fp32_and_keeps_tiny_steps_on_bf16() -> None:
    torch.manual_seed(0)
    start = torch.randn(64)
    grads = [torch.randn(64) for _ in range(5)]
    ours, reference = start.clone().requires_grad_(), start.clone().requires_grad_()
    optimizers = [
        BF16AdamW([ours], lr=1e-2, weight_decay=0.1),
        torch.optim.AdamW([reference], lr=1e-2, weight_decay=0.1),
    ]
    for grad in grads:
        for param, optimizer in zip((ours, reference), optimizers, strict=True):
            param.grad = grad.clone()
            optimizer.step()
    assert torch.allclose(ours, reference, atol=1e-6)

    # the paper's lr 2e-6 on weights of 0.02 is 60 times below bf16's spacing there (2^-13 = 1.2e-4):
    # plain AdamW loses every step, the Kahan term keeps them
    weights = torch.full((8,), 0.02, dtype=torch.bfloat16)
    plain, kahan = weights.clone().requires_grad_(), weights.clone().requires_grad_()
    plain_opt, kahan_opt = torch.optim.AdamW([plain], lr=2e-6), BF16AdamW([kahan], lr=2e-6)
    for _ in range(400):
        for param, optimizer in ((plain, plain_opt), (kahan, kahan_opt)):
            param.grad = torch.ones(8, dtype=torch.bfloat16)  # Adam's step is then -lr each time
            optimizer.step()
    assert torch.equal(plain.detach(), weights)  # every update rounded away
    held = kahan.detach().float() + kahan_opt.state[kahan]["compensation"].float()
    moved = (weights.float() - held).double()
    assert torch.allclose(moved, torch.full((8,), 400 * 2e-6, dtype=torch.float64), rtol=0.03)  # 800e-6 +- 3%
    assert kahan_opt.state[kahan]["exp_avg"].dtype == torch.float32


def test_a_bf16_trainer_updates_and_checkpoints(tmp_path: Path) -> None:
    from training.checkpoint import load_checkpoint, save_checkpoint
    from training.rollout import Sample
    from training.toy import make_policy

    actor = make_policy(0).to(torch.bfloat16)
    trainer = PPOTrainer(actor, config=PPOConfig(actor_lr=1e-3, critic_lr=1e-3))
    assert isinstance(trainer.actor_optimizer, BF16AdamW) and isinstance(trainer.critic_optimizer, BF16AdamW)
    assert trainer.critic.value_head.weight.dtype == torch.bfloat16
    before = [p.detach().clone() for p in actor.parameters()]
    samples = [Sample([13, 1, 10, 2, 12], [3, 14], [-2.0, -1.0], "stop") for _ in range(4)]
    metrics = trainer.step(samples, [1.0, 0.0, 1.0, 0.0])
    assert metrics["losses/value_loss"] == metrics["losses/value_loss"]  # not NaN
    assert any(not torch.equal(a, b) for a, b in zip(before, actor.parameters(), strict=True))
    save_checkpoint(tmp_path / "ckpt", trainer, 1)
    again = PPOTrainer(make_policy(1).to(torch.bfloat16), config=trainer.config)
    assert load_checkpoint(tmp_path / "ckpt", again) == 1
    assert (
        again.actor_optimizer.state_dict()["state"].keys()
        == trainer.actor_optimizer.state_dict()["state"].keys()
    )


def test_the_driver_states_the_estimate_and_refuses_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import training.train
    from pacore_agent.evaluation.store import PoolMessage

    messages = [PoolMessage(message="\\boxed{3}", correct=True, score=1.0)] * 2
    config = one_problem_run(tmp_path, messages, min_messages=2, max_messages=2, device="cpu")
    model = config.model
    loaded: list[str] = []
    monkeypatch.setattr(
        "transformers.AutoModelForCausalLM.from_pretrained", lambda *a, **k: loaded.append("x")
    )
    monkeypatch.setattr(training.train, "device_memory", lambda device: 10**6)  # a 1 MB device
    with pytest.raises(UsageError, match=r"of the 0\.0 GB of cpu\. .*train with verl"):
        training.train.train(config)
    assert loaded == []  # refused before any weight was loaded
    actor, critic = count_parameters(Qwen3Config.from_pretrained(model))
    estimate = estimate_memory(actor, critic, "fp32", model=str(model))
    assert estimate.describe() in capsys.readouterr().out  # stated before the refusal
