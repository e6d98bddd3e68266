"""Aligning a teacher's byte-level logprobs with a student of another tokenizer (torch-free).

The teacher's answer and the student's tokenization of the same answer text are two segmentations of one byte
string. Where both put a token boundary at the same byte, the text between two such shared boundaries is a
**chunk**: a whole number of tokens on each side, so the teacher's likelihood of the chunk (the sum of its tokens'
logprobs) and the student's (the sum of its own) are likelihoods of the same event and can be matched —
approximate likelihood matching (ALM; Minixhofer, Vulić & Ponti 2025, "Cross-Tokenizer Distillation via
Approximate Likelihood Matching"). A chunk that is one token on both sides also has a next-token distribution on
both sides: the teacher's top-k alternatives, mapped onto student ids by equal bytes, are then a top-k target
as in same-tokenizer KD (alternatives the student's vocabulary lacks fall into the tail bucket).

:func:`encode_xtok_row` turns one dataset row into the per-position arrays :mod:`distill.train.xtok_losses` reads;
:func:`align_chunks` is the alignment alone. Hand-written: tokenizer-surgery tools (mergekit-tokensurgeon,
DistillKit) map vocabularies, not per-answer byte spans, and TRL's GOLD/ULD align online over two live models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distill.logprobs import ByteTopK, SpecialToken

IGNORE = -100


def string_index(vocab: list[bytes]) -> dict[tuple[bool, bytes], int]:
    """``(is special, bytes) -> id``, the lowest id where a string repeats (the one a tokenizer emits)."""
    out: dict[tuple[bool, bytes], int] = {}
    for i, s in enumerate(vocab):
        out.setdefault((isinstance(s, SpecialToken), bytes(s)), i)
    return out


@dataclass
class Chunk:
    """Text bytes ``[start, end)`` of the answer; teacher positions ``t0 <= t < t1``; student positions ``s0 <= s < s1``."""

    start: int
    end: int
    t0: int
    t1: int
    s0: int
    s1: int

    @property
    def single(self) -> bool:
        return self.t1 - self.t0 == 1 and self.s1 - self.s0 == 1


def _spans(lengths: list[int], base: int = 0) -> list[tuple[int, int]]:
    out, pos = [], base
    for n in lengths:
        out.append((pos, pos + n))
        pos += n
    return out


def align_chunks(teacher_spans: list[tuple[int, int]], student_spans: list[tuple[int, int]],
                 text_len: int) -> list[Chunk]:
    """Chunks between shared boundaries inside ``[0, text_len)``. Each side's spans (``[start, end)`` byte ranges,
    in order, contiguous) may reach outside the text; tokens that straddle the text's edges belong to no chunk.
    Empty spans (special tokens) are skipped. Returns the chunks in order."""
    def starts(spans: list[tuple[int, int]]) -> dict[int, int]:
        return {a: i for i, (a, b) in enumerate(spans) if b > a and 0 <= a < text_len}

    def ends(spans: list[tuple[int, int]]) -> dict[int, int]:
        return {b: i for i, (a, b) in enumerate(spans) if b > a and 0 < b <= text_len}

    t_start, t_end, s_start, s_end = starts(teacher_spans), ends(teacher_spans), starts(student_spans), ends(student_spans)
    chunks, open_at = [], None
    for pos in range(text_len + 1):
        if pos in t_end and pos in s_end and open_at is not None:
            a = open_at
            chunks.append(Chunk(a, pos, t_start[a], t_end[pos] + 1, s_start[a], s_end[pos] + 1))
            open_at = None
        if pos in t_start and pos in s_start:
            open_at = pos
    return chunks


@dataclass
class XtokRow:
    """One row's cross-tokenizer KD targets, per labelled student position ``n`` (in label order).

    ``topk_ids``/``topk_logprobs`` ``[n][K+1]``: at a one-token-each chunk, the teacher's top-k (plus its sampled
    token) mapped to student ids (-1 / -inf elsewhere); ``chunk`` ``[n]``: a multi-token chunk's row-local id on
    the student positions it covers (-1 elsewhere); ``chunk_logprobs`` ``[C]``: the teacher's log-likelihood of
    each; ``uld_logprobs`` ``[n][K]``: the top-k of the teacher position holding the student token's first byte."""

    topk_ids: list[list[int]]
    topk_logprobs: list[list[float]]
    chunk: list[int]
    chunk_logprobs: list[float]
    uld_logprobs: list[list[float]]
    stats: dict[str, int] = field(default_factory=dict)


def _teacher_topk(row: ByteTopK, t: int, index: dict[tuple[bool, bytes], int], k: int) -> tuple[list[int], list[float]]:
    """The teacher's top-k at position ``t`` plus its sampled token, mapped to student ids (first one wins),
    padded to ``k + 1``; alternatives the student vocabulary lacks are left out (they go to the tail)."""
    ids, lps, seen = [], [], set()
    entries = [(int(a), float(lp)) for a, lp in zip(row.alt[t], row.alt_logprob[t]) if a >= 0]
    entries.append((int(row.token[t]), float(row.token_logprob[t])))
    for a, lp in entries:
        s = row.strings[a]
        sid = index.get((isinstance(s, SpecialToken), bytes(s)))
        if sid is None or sid in seen or lp == float("-inf"):
            continue
        seen.add(sid)
        ids.append(sid)
        lps.append(lp)
    ids, lps = ids[: k + 1], lps[: k + 1]
    return ids + [-1] * (k + 1 - len(ids)), lps + [float("-inf")] * (k + 1 - len(lps))


def teacher_spans(row: ByteTopK, shift: int) -> list[tuple[int, int]]:
    """Each teacher token's byte span in the student's answer text (``shift``: where that text starts in the
    teacher's response); special tokens get an empty span."""
    return [(int(o) - shift, int(o) - shift + (0 if isinstance(row.token_bytes(t), SpecialToken)
                                                 else len(row.token_bytes(t)))) for t, o in enumerate(row.offsets)]


def _spells(row: ByteTopK, t_spans: list[tuple[int, int]], resp_b: bytes, shift: int) -> bool:
    """True when the teacher's tokens spell its response. Tokens past the text's end are allowed (a server that
    names its end-of-turn token as text, or a stop string cut from the text); the part inside must match."""
    for t, (a, b) in enumerate(t_spans):
        seg = resp_b[a + shift: b + shift]
        if b > a and seg != row.token_bytes(t) and not (b + shift > len(resp_b) and row.token_bytes(t).startswith(seg)):
            return False
    return True


def encode_xtok_row(row: ByteTopK, response: str, answer: str, answer_ids: list[int], answer_text: str,
                    vocab: list[bytes], index: dict[tuple[bool, bytes], int], n_labelled: int, k: int) -> XtokRow | None:
    """Targets for the student's ``answer_ids`` (its tokenization of ``answer_text``: the answer as the chat
    template renders it, e.g. ``answer + "<|im_end|>\\n"``), of which the first ``n_labelled`` are trained.

    ``response`` is the teacher's raw text (the byte offsets refer to it), ``answer`` the text the student learns
    (the response stripped). Returns None when the answer is not a substring of the response, or either side's
    tokens do not spell their text (the row then trains without KD targets)."""
    resp_b, ans_b, full_b = response.encode(), answer.encode(), answer_text.encode()
    shift, at = resp_b.find(ans_b), full_b.find(ans_b)
    if shift < 0 or at < 0:
        return None
    t_spans = teacher_spans(row, shift)
    if not _spells(row, t_spans, resp_b, shift):
        return None
    s_bytes = [vocab[i] for i in answer_ids]
    if b"".join(s_bytes) != full_b:
        return None
    # The student renders special tokens as text (its chat template writes "<|im_end|>"): they take bytes here.
    s_spans = _spans([len(s) for s in s_bytes], base=-at)
    n = min(n_labelled, len(answer_ids))
    chunks = [c for c in align_chunks(t_spans, s_spans, len(ans_b)) if c.s1 <= n]
    pad_k = ([-1] * (k + 1), [float("-inf")] * (k + 1))
    out = XtokRow(topk_ids=[pad_k[0]] * n, topk_logprobs=[pad_k[1]] * n, chunk=[-1] * n, chunk_logprobs=[],
                  uld_logprobs=[[float("-inf")] * k] * n)
    for c in chunks:
        if c.single:
            out.topk_ids[c.s0], out.topk_logprobs[c.s0] = _teacher_topk(row, c.t0, index, k)
        else:
            for s in range(c.s0, c.s1):
                out.chunk[s] = len(out.chunk_logprobs)
            out.chunk_logprobs.append(float(row.token_logprob[c.t0:c.t1].sum()))
    _align_specials(row, t_spans, s_bytes, s_spans, len(ans_b), n, index, k, out)
    _pair_for_uld(row, t_spans, s_spans, n, k, out)
    out.stats = {"chunks": len(chunks), "single": sum(c.single for c in chunks),
                 "covered": sum(c.s1 - c.s0 for c in chunks), "positions": n}
    return out


def _align_specials(row: ByteTopK, t_spans, s_bytes, s_spans, text_len: int, n: int, index, k: int,
                    out: XtokRow) -> None:
    """Teacher special tokens after the text (its end-of-turn) against the student's special tokens after the
    text, in order, where the names are equal: one-token chunks with a top-k target."""
    t_special = [t for t, (a, b) in enumerate(t_spans) if a >= text_len and isinstance(row.token_bytes(t), SpecialToken)]
    s_special = [s for s, (a, _) in enumerate(s_spans) if a >= text_len and s < n and isinstance(s_bytes[s], SpecialToken)]
    for t, s in zip(t_special, s_special):
        if bytes(row.token_bytes(t)) != bytes(s_bytes[s]):
            break
        out.topk_ids[s], out.topk_logprobs[s] = _teacher_topk(row, t, index, k)


def _pair_for_uld(row: ByteTopK, t_spans, s_spans, n: int, k: int, out: XtokRow) -> None:
    """ULD pairing: each student position with the teacher position whose span holds its first byte."""
    by_byte, t = [], 0
    text_tokens = [(a, b, i) for i, (a, b) in enumerate(t_spans) if b > a]
    for s in range(n):
        a = s_spans[s][0]
        while t < len(text_tokens) and text_tokens[t][1] <= a:
            t += 1
        if t < len(text_tokens) and text_tokens[t][0] <= a < text_tokens[t][1]:
            lps = [float(x) for x in row.alt_logprob[text_tokens[t][2]][:k]]
            by_byte.append(lps + [float("-inf")] * (k - len(lps)))
        else:
            by_byte.append([float("-inf")] * k)
    out.uld_logprobs = by_byte
