"""What each optimizer step trains on: one epoch's length-grouped batch order, and GKD's on-policy rows.

Owns the choice of rows, not their loss: :func:`length_grouped_batches` shuffles an epoch into batches of similar
length (little compute spent on padding), :func:`on_policy_rows` replaces a batch's answers by the student's own
samples (Agarwal et al. 2024, arXiv 2306.13649) for the online teacher to score. The step loop
(:mod:`distill.train.loop`) draws from both with its own seeded ``random.Random``.

May import: torch, :mod:`distill.models` and :mod:`distill.train.data`; never :mod:`distill.train.loop`.
"""

from __future__ import annotations

import random

import torch

from distill.models import eos_ids
from distill.train.data import IGNORE


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random, group: int = 8) -> list[list[int]]:
    """One epoch of batches: shuffle, sort within groups of ``group`` batches by length, shuffle the batches.

    Batches then hold sequences of similar length, so little compute goes to padding (ICL prompts are
    several times longer than instruction prompts); the order stays random across the epoch.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * group
    batches = []
    for i in range(0, len(order), span):
        chunk = sorted(order[i : i + span], key=lambda j: lengths[j])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@torch.no_grad()
def on_policy_rows(model, rows: list[tuple], tok, max_new_tokens: int, temperature: float,
                   seed: int) -> list[tuple[list[int], list[int]]]:
    """GKD's on-policy data (Agarwal et al. 2024, arXiv 2306.13649): each row's prompt (its tokens before the
    first label) continued by the student itself, sampled at ``temperature`` for up to ``max_new_tokens``
    (up to and including its end-of-turn token); labels on the sampled tokens only, so the online teacher
    scores what the student says. Sampling is seeded by ``seed`` (the step), so a resumed run resamples the same."""
    prompts = [list(ids[: next(i for i, lab in enumerate(labels) if lab != IGNORE)]) for ids, labels, *_ in rows]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = eos_ids(model, tok)
    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for j, p in enumerate(prompts):  # left padding: every prompt ends where sampling starts
        ids[j, width - len(p):] = torch.tensor(p)
        mask[j, width - len(p):] = 1
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=eos)
    finally:
        model.train(was_training)
    result = []
    for j, p in enumerate(prompts):
        new = out[j, width:].tolist()
        end = next((k + 1 for k, t in enumerate(new) if t in eos), len(new))  # keep the end token: it is learned too
        result.append((p + new[:end], [IGNORE] * len(p) + new[:end]))
    return result
