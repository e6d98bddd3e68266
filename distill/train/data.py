"""Training rows from dataset conversations: the chat template's prompt/answer split, (input_ids, labels) with the
prompt masked, the teacher's own completion ids with their cached top-k for logit KD, and the tokenizer check.

Torch-free and free of the training loop, so evaluation (:mod:`distill.evaluate`) and cross-tokenizer KD
(:mod:`distill.train.xtok_train`) encode rows exactly as training does without importing the loop.
"""

from __future__ import annotations

import json

from distill.config import ConfigError
from distill.logprobs import unpack_topk

IGNORE = -100  # the label of a position no loss reads (prompt tokens, padding)


def render_turns(tok, messages: list[dict]) -> tuple[str, str]:
    """(prompt text up to the assistant's turn, the assistant turn as the chat template renders it)."""
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
    return prompt, full[len(prompt):]


def tokenize_row(tok, messages: list[dict], max_length: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) with labels = IGNORE on everything but the final assistant turn."""
    if not messages or messages[-1]["role"] != "assistant":
        return None
    prompt, answer = render_turns(tok, messages)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(answer, add_special_tokens=False)["input_ids"]
    ids = (p_ids + a_ids)[:max_length]
    labels = ([IGNORE] * len(p_ids) + a_ids)[:max_length]
    if all(x == IGNORE for x in labels):
        return None
    return ids, labels


def tokenize_row_kd(tok, messages: list[dict], token_ids: list[int], logprobs_json: str, max_length: int,
                    k: int) -> tuple[list[int], list[int], list[list[int]], list[list[float]]] | None:
    """(input_ids, labels, topk_ids, topk_logprobs) on the teacher's own completion tokens.

    The assistant part is the teacher's generated ids (not a re-tokenization of its text), so the cached
    top-k distribution at completion position t is exactly the target for label t. Positions with fewer
    than ``k`` cached entries are padded with id -1 / logprob -inf (absent, see ``topk_kd_loss``).
    """
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    top_id_arr, top_lp_arr = unpack_topk(json.loads(logprobs_json))
    if len(top_id_arr) != len(token_ids):
        raise ValueError(f"{len(top_id_arr)} logprob positions for {len(token_ids)} completion tokens")
    ids = (p_ids + list(token_ids))[:max_length]
    labels = ([IGNORE] * len(p_ids) + list(token_ids))[:max_length]
    n = sum(1 for t in labels if t != IGNORE)
    if n == 0:
        return None
    pad = max(0, k - top_id_arr.shape[1])
    top_ids = [row[:k].tolist() + [-1] * pad for row in top_id_arr[:n]]
    top_lps = [row[:k].tolist() + [float("-inf")] * pad for row in top_lp_arr[:n]]
    return ids, labels, top_ids, top_lps


def same_tokenizer(tok, token_ids: list[list[int]], texts: list[str]) -> tuple[bool, str]:
    """(whether the student's tokenizer decodes the teacher's ids back to the teacher's text, how many fail)."""
    pairs = list(zip(token_ids, texts))[:32]
    bad = [t for ids, t in pairs if tok.decode(ids, skip_special_tokens=True).strip() != t.strip()]
    ok = len(bad) <= len(pairs) // 10 and not any(max(ids, default=0) >= len(tok) for ids, _ in pairs)
    return ok, f"{len(bad)}/{len(pairs)}"


def check_same_tokenizer(tok, token_ids: list[list[int]], texts: list[str]) -> None:
    """Fail fast unless the student's tokenizer decodes the teacher's ids back to the teacher's text."""
    ok, bad = same_tokenizer(tok, token_ids, texts)
    if not ok:
        raise ConfigError(
            f"train.kd: the student's tokenizer does not match the teacher's ({bad} completions do not round-trip) "
            "and the dataset has no byte-level teacher logprobs for cross-tokenizer KD; regenerate it with this "
            "version of eakd (generate.sampling.top_logprobs=K), or use sequence-level KD (train.kd.enabled=false)")
