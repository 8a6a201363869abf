"""A tiny Hugging Face chat model built offline in a second or two, for tests.

`build_tiny_model` writes a folder that ``AutoTokenizer.from_pretrained`` and
``AutoModelForCausalLM.from_pretrained`` load like any hub model: a Qwen3 architecture a few hundred
kilobytes big, a byte-level BPE tokenizer trained in-process on a small corpus, and a Qwen3-style chat
template (ChatML with ``enable_thinking``). By default the random model is then trained for a few dozen
steps on chat-formatted additions, so that it answers in a reasoning model's shape::

    <think>
    2+3=7
    </think>

    \\boxed{7}<|im_end|>

Its arithmetic is wrong more often than not; what matters is that completions carry ``</think>``, an
end-of-sequence token and a boxed conclusion, so every path of a backend is exercised. Everything is
seeded and needs no network.
"""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import Any

__all__ = ["CHAT_TEMPLATE", "THINK_END", "THINK_START", "build_tiny_model"]

THINK_START = "<think>"
THINK_END = "</think>"

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)
"""ChatML as Qwen3 writes it; ``enable_thinking=False`` pre-fills an empty thought, as Qwen3 does."""

_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _examples(rng: random.Random, count: int) -> list[tuple[str, str]]:
    examples = []
    for _ in range(count):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        examples.append((f"What is {a}+{b}?", f"<think>\n{a}+{b}={a + b}\n</think>\n\n\\boxed{{{a + b}}}"))
    return examples


def build_tiny_model(
    folder: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 320,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_position_embeddings: int = 2048,
    train_steps: int = 40,
) -> Path:
    """Write a tiny random (lightly trained) Qwen3 chat model and its tokenizer to ``folder``.

    Runs offline in about a second (plus the one-off import of ``transformers``); the folder holds
    well under 1 MB.

    Args:
        folder: Where to save; created when missing.
        seed: Seed of the tokenizer corpus, the weights and the training batches.
        vocab_size: Size of the BPE vocabulary before the special and thinking tokens are added.
        hidden_size: Width of the model (4 attention heads, 2 of them key/value heads).
        num_layers: Decoder layers.
        max_position_embeddings: Context window of the model.
        train_steps: Optimisation steps on ``What is a+b?`` chats; 0 leaves the weights random, so the
            model babbles until ``max_tokens``.

    Returns:
        The folder, ready for ``from_pretrained``.
    """
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    from pacore_agent.prompts import SYNTHESIS_TEMPLATE

    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    examples = _examples(rng, 256)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(_SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The synthesis template is in the corpus so that PaCoRe's second-round prompts stay short.
    corpus = [f"{q} {a}" for q, a in examples] + [SYNTHESIS_TEMPLATE] * 4
    bpe.train_from_iterator(corpus, trainer)
    # Like Qwen3: the thinking tags are single added tokens that decoding keeps (not special).
    bpe.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in (THINK_START, THINK_END)])
    hf: Any = importlib.import_module("transformers")  # loosely typed: its stubs are partial
    tokenizer = hf.PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=max_position_embeddings,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = hf.Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
    )
    threads = torch.get_num_threads()
    # One thread: on a shared, busy machine OpenMP's spinning threads make these tiny steps 30x slower.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = hf.Qwen3ForCausalLM(config)
            if train_steps > 0:
                _train(model, tokenizer, examples, train_steps, seed)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.generation_config = hf.GenerationConfig(eos_token_id=[eos], pad_token_id=pad, do_sample=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _train(model: Any, tokenizer: Any, examples: list[tuple[str, str]], steps: int, seed: int) -> None:
    import torch

    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False
        )
        for q, a in examples
    ]
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in chats]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (N, T)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, -100)  # no loss on padding
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    batches = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, len(rows), (8,), generator=batches)
        loss = model(input_ids=ids[pick], attention_mask=mask[pick], labels=labels[pick]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
