"""Greedy answers from a transformers model to chat prompts, batched: what every evaluation reads.

Shared by the evaluate stage (:mod:`distill.evaluate`), the EA probes (:mod:`distill.probes.run`) and the
compress stage's task accuracy (:mod:`compress.eval`), so the same prompts give the same answers everywhere
(and vLLM's greedy answers, read the same way: tested in tests/distill/test_evaluate_stage.py).
Hand-written around ``model.generate`` only for what it lacks: left-padded batches sorted by length, and a
stop at the end of the first line for answers graded on their first line.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from distill.models import eos_ids


def _first_line_done(text: str) -> bool:
    """Whether a completion's first line — all :func:`answer_of` reads for ICL and instruct — is complete."""
    return "\n" in text.lstrip()


@torch.no_grad()
def generate_greedy(model: nn.Module, tokenizer: Any, prompts: list[list[dict]], max_new_tokens: int,
                    batch_size: int = 8, autocast_dtype: torch.dtype | None = None,
                    first_line: list[bool] | None = None) -> tuple[list[str], int]:
    """Greedy answers to chat ``prompts`` (each a list of messages, rendered with the chat template and its
    generation prompt), in left-padded batches of similar length. A prompt flagged in ``first_line`` stops
    at the end of its first non-empty line (the rest would not be read). Returns (texts in prompt order,
    how many ran out of ``max_new_tokens`` first)."""
    from tqdm import tqdm
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = eos_ids(model, tokenizer)
    gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
    first_line = first_line or [False] * len(prompts)
    encoded = [tokenizer(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"] for m in prompts]
    # batches of one kind (first line or not) and similar length: little padding, no long answer holding up short ones
    order = sorted(range(len(encoded)), key=lambda i: (first_line[i], len(encoded[i])))

    class FirstLine(StoppingCriteria):
        def __init__(self, flags: list[bool], width: int) -> None:
            self.flags, self.width = flags, width

        def __call__(self, input_ids: Tensor, scores: Any, **kwargs: Any) -> Tensor:
            return torch.tensor([f and _first_line_done(tokenizer.decode(row[self.width:], skip_special_tokens=True))
                                 for f, row in zip(self.flags, input_ids)], device=input_ids.device)

    texts: list[str] = [""] * len(encoded)
    truncated = 0
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with ctx, tqdm(total=len(order), desc="generate", unit="prompt", leave=False) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = max(len(encoded[i]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for j, i in enumerate(batch):  # left padding: every prompt ends where generation starts
                    ids[j, width - len(encoded[i]):] = torch.tensor(encoded[i])
                    mask[j, width - len(encoded[i]):] = 1
                flags = [first_line[i] for i in batch]
                stop = StoppingCriteriaList([FirstLine(flags, width)]) if any(flags) else None
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen,
                                     stopping_criteria=stop)
                for j, i in enumerate(batch):
                    new = out[j, width:].tolist()
                    end = next((k for k, t in enumerate(new) if t in eos), None)
                    texts[i] = tokenizer.decode(new[:end], skip_special_tokens=True)
                    truncated += end is None and not (flags[j] and _first_line_done(texts[i]))
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return texts, truncated
