"""Composable row filters for generated data: each says why a row should go, or None to keep it.

A filter is any callable ``(row) -> reason | None`` with a ``name`` (a plain function's ``__name__``
serves). :func:`apply_filters` runs them in order; a removed row is attributed to the *first* filter
that removes it and carries ``removed_by`` and ``reason``; per-filter counts go to the dataset card.

Built in:

- :class:`LengthFilter`   word counts of instruction/response (Self-Instruct keeps 4..150-word instructions).
- :class:`FormatFilter`   Self-Instruct's heuristics (Wang et al. 2023, §2.3 and its released
  ``bootstrap_instructions.py``): instructions that start with punctuation or a non-ASCII character
  (a proxy for non-English), that mention a modality a text model cannot handle (image, graph,
  picture, file, map, draw, plot, go to, video, audio, music, flowchart, diagram) or start with
  "Write a program"; plus empty responses and "As an AI language model" refusals (the cleaning used
  for Alpaca-style data, e.g. alpaca-cleaned and the Vicuna/ShareGPT filters).
- :class:`BlocklistFilter` configurable words/phrases, whole-word and case-insensitive.
- :class:`GoldMatchFilter` the extracted answer must equal the gold one (:func:`distill.answers.answers_match`).
- :class:`ContaminationFilter` / :func:`ngram_contamination` n-gram overlap with evaluation texts after
  lowercasing and stripping punctuation: n = 13 as in GPT-3 (Brown et al. 2020, App. C) and Llama 2
  (Touvron et al. 2023, §A.6 uses token spans); GPT-3 lowered n to 8 for benchmarks of short items,
  so ``n`` is configurable (8 suits short math questions). An eval text shorter than n tokens but at
  least ``min_n`` long is matched as a whole; shorter ones are skipped and counted.

Rows are dicts: the dataset row of DESIGN.md (``messages``, ``answer``, ``gold``) or a flat
self-instruct row (``instruction``/``question``, ``input``, ``output``/``response``).

Run: ``python -c "from distill.data.filters import *; print(apply_filters(rows, [LengthFilter(), FormatFilter()]))"``
"""

from __future__ import annotations

import logging
import re
import string
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from distill.answers import ExtractionConfig, answers_match, extract_answer

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
RowFilter = Callable[[Row], "str | None"]


def _last(messages: Any, role: str) -> str:
    for m in reversed(messages or []):
        if isinstance(m, Mapping) and m.get("role") == role:
            return str(m.get("content") or "")
    return ""


def row_instruction(row: Row) -> str:
    """The instruction a row answers: ``instruction``/``question`` (+ ``input``), else the last user message."""
    inst = row.get("instruction") or row.get("question")
    if inst:
        return f"{inst}\n{row.get('input') or ''}".strip()
    return _last(row.get("prompt_messages") or row.get("messages"), "user").strip()


def row_response(row: Row) -> str:
    """The response: ``response``/``output``, else the last assistant message, else ``raw_output``."""
    resp = row.get("response", row.get("output"))
    if resp is not None:
        return str(resp).strip()
    return (_last(row.get("messages"), "assistant") or str(row.get("raw_output") or "")).strip()


def row_text(row: Row | str) -> str:
    """All the text of a row (every message, or instruction + input + response) for contamination checks."""
    if isinstance(row, str):
        return row
    if row.get("messages") or row.get("prompt_messages"):
        return "\n".join(str(m.get("content") or "") for m in (row.get("messages") or row.get("prompt_messages")))
    return f"{row_instruction(row)}\n{row_response(row)}"


def _words(text: str) -> int:
    return len(text.split())


def _phrase_re(phrases: Iterable[str]) -> re.Pattern[str] | None:
    alts = [r"\s+".join(map(re.escape, p.lower().split())) for p in phrases if p.strip()]
    return re.compile(r"\b(?:" + "|".join(alts) + r")\b") if alts else None


@dataclass(frozen=True)
class LengthFilter:
    """Word-count bounds (None = unbounded). Self-Instruct drops instructions of <= 3 or > 150 words."""

    min_instruction_words: int | None = 4
    max_instruction_words: int | None = 150
    min_response_words: int | None = 1
    max_response_words: int | None = None
    name: str = "length"

    def __post_init__(self) -> None:
        for part in ("instruction", "response"):
            lo, hi = getattr(self, f"min_{part}_words"), getattr(self, f"max_{part}_words")
            for fname, v in ((f"min_{part}_words", lo), (f"max_{part}_words", hi)):
                if v is not None and v < 0:
                    raise ValueError(f"LengthFilter.{fname} must be >= 0 or None, got {v}")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"LengthFilter.min_{part}_words ({lo}) must be <= max_{part}_words ({hi})")

    def __call__(self, row: Row) -> str | None:
        for part, text in (("instruction", row_instruction(row)), ("response", row_response(row))):
            n, lo, hi = _words(text), getattr(self, f"min_{part}_words"), getattr(self, f"max_{part}_words")
            if lo is not None and n < lo:
                return f"{part} has {n} words (< {lo})"
            if hi is not None and n > hi:
                return f"{part} has {n} words (> {hi})"
        return None


UNSUPPORTED_KEYWORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                        "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
REFUSALS = ("as an ai", "as a language model", "as an ai language model", "i'm sorry, but i cannot",
            "i'm sorry, but i can't", "i cannot fulfill", "i can't assist with", "i am unable to comply")


@dataclass(frozen=True)
class FormatFilter:
    """Self-Instruct's format heuristics plus empty responses and AI-disclaimer refusals."""

    unsupported_keywords: tuple[str, ...] = UNSUPPORTED_KEYWORDS
    bad_starts: tuple[str, ...] = ("write a program",)
    refusals: tuple[str, ...] = REFUSALS
    check_response: bool = True  # False for instruction-only rows (before the teacher has answered)
    name: str = "format"
    _keyword_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keyword_re", _phrase_re(self.unsupported_keywords))

    def __call__(self, row: Row) -> str | None:
        inst = row_instruction(row)
        if not inst:
            return "instruction is empty"
        if inst[0] in string.punctuation:
            return f"instruction starts with punctuation {inst[0]!r}"
        if not inst[0].isascii():
            return f"instruction starts with non-ASCII {inst[0]!r} (likely not English)"
        low = inst.lower()
        if self._keyword_re is not None and (m := self._keyword_re.search(low)):
            return f"instruction mentions {m.group(0)!r} (a modality a text model cannot handle)"
        for start in self.bad_starts:
            if low.startswith(start):
                return f"instruction starts with {start!r}"
        if not self.check_response:
            return None
        resp = row_response(row)
        if not resp:
            return "response is empty"
        resp_low = resp.lower().replace("\u2019", "'")
        for phrase in self.refusals:
            if phrase in resp_low:
                return f"response is a refusal/disclaimer ({phrase!r})"
        return None


@dataclass(frozen=True)
class BlocklistFilter:
    """Remove rows whose instruction or response contains a listed word/phrase (whole words, any case)."""

    words: tuple[str, ...]
    fields: tuple[str, ...] = ("instruction", "response")
    name: str = "blocklist"
    _re: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if isinstance(self.words, str) or not any(w.strip() for w in self.words):
            raise ValueError(f"BlocklistFilter.words must be a non-empty list of words/phrases, got {self.words!r}")
        bad = set(self.fields) - {"instruction", "response"}
        if bad:
            raise ValueError(f"BlocklistFilter.fields must be among ('instruction', 'response'), got {sorted(bad)}")
        object.__setattr__(self, "_re", _phrase_re(self.words))

    def __call__(self, row: Row) -> str | None:
        for f in self.fields:
            text = (row_instruction(row) if f == "instruction" else row_response(row)).lower()
            if self._re is not None and (m := self._re.search(text)):
                return f"{f} contains blocked {m.group(0)!r}"
        return None


@dataclass(frozen=True)
class GoldMatchFilter:
    """Keep rows whose answer matches the gold answer; rows without gold pass unless ``require_gold``.

    The answer is ``row["answer"]``, or extracted from the response with ``extraction`` when absent.
    """

    extraction: ExtractionConfig | None = None
    require_gold: bool = False
    name: str = "gold_match"

    def __call__(self, row: Row) -> str | None:
        gold = row.get("gold")
        pred = row.get("answer")
        if pred is None and (resp := row_response(row)):
            pred = extract_answer(resp, self.extraction).answer
        ok = answers_match(pred, gold)
        if ok is None:
            return "no gold answer to check against" if self.require_gold else None
        return None if ok else f"answer {pred!r} does not match gold {gold!r}"


# ------------------------------------------------------------------ contamination

_PUNCT = re.compile(r"[^\w\s]")


def contamination_tokens(text: str) -> list[str]:
    """Lowercase, punctuation replaced by spaces, split on whitespace."""
    return _PUNCT.sub(" ", text.lower()).split()


class NgramIndex:
    """Every ``n``-gram of a set of evaluation texts (shorter texts, if >= ``min_n`` tokens, whole)."""

    def __init__(self, eval_texts: Sequence[str], n: int = 13, min_n: int = 8):
        if n < 1:
            raise ValueError(f"contamination n must be >= 1, got {n}")
        if not 1 <= min_n <= n:
            raise ValueError(f"contamination min_n must be in [1, n={n}], got {min_n}")
        self.n, self.min_n = n, min_n
        self.grams: dict[str, set[int]] = defaultdict(set)
        self.lengths: set[int] = set()  # gram lengths present: n, and the lengths of short eval texts
        self.skipped_short = 0
        for j, text in enumerate(eval_texts):
            toks = contamination_tokens(text)
            if len(toks) < min_n:
                self.skipped_short += 1
                continue
            size = min(n, len(toks))
            self.lengths.add(size)
            for i in range(len(toks) - size + 1):
                self.grams[" ".join(toks[i: i + size])].add(j)
        if self.skipped_short:
            log.info("contamination: %d eval texts shorter than min_n=%d tokens were skipped", self.skipped_short, min_n)

    def overlaps(self, text: str) -> dict[str, set[int]]:
        """The eval n-grams found in ``text``, each with the eval texts holding it."""
        toks = contamination_tokens(text)
        found: dict[str, set[int]] = {}
        for size in self.lengths:
            for i in range(len(toks) - size + 1):
                gram = " ".join(toks[i: i + size])
                if gram in self.grams:
                    found[gram] = self.grams[gram]
        return found


@dataclass(frozen=True)
class RowOverlap:
    index: int
    id: str | None
    ngrams: int                # distinct eval n-grams found in the row
    eval_indices: list[int]    # which eval texts they come from
    example: str | None        # one overlapping n-gram, for the report


@dataclass(frozen=True)
class ContaminationReport:
    n: int
    rows: int
    contaminated: int          # rows with >= min_overlap overlapping n-grams
    eval_items_hit: int        # distinct eval texts overlapped by some row
    skipped_short_eval: int
    per_row: list[RowOverlap]  # aligned with the input rows


def ngram_contamination(rows: Sequence[Row | str], eval_texts: Sequence[str] | NgramIndex, n: int = 13,
                        min_n: int = 8, min_overlap: int = 1) -> ContaminationReport:
    """Which rows share an n-gram with an evaluation text (a report; :class:`ContaminationFilter` removes them)."""
    index = eval_texts if isinstance(eval_texts, NgramIndex) else NgramIndex(eval_texts, n, min_n)
    per_row, hit_eval, bad = [], set(), 0
    for i, row in enumerate(rows):
        found = index.overlaps(row_text(row))
        evals = sorted(set().union(*found.values())) if found else []
        if len(found) >= min_overlap:
            bad += 1
            hit_eval.update(evals)
        per_row.append(RowOverlap(i, None if isinstance(row, str) else row.get("id"), len(found), evals,
                                  min(found) if found else None))
    log.info("contamination (n=%d): %d of %d rows overlap %d eval texts", index.n, bad, len(rows), len(hit_eval))
    return ContaminationReport(n=index.n, rows=len(rows), contaminated=bad, eval_items_hit=len(hit_eval),
                               skipped_short_eval=index.skipped_short, per_row=per_row)


class ContaminationFilter:
    """Remove rows sharing >= ``min_overlap`` n-grams with the evaluation texts (index built once)."""

    def __init__(self, eval_texts: Sequence[str], n: int = 13, min_n: int = 8, min_overlap: int = 1,
                 name: str = "contamination"):
        if min_overlap < 1:
            raise ValueError(f"ContaminationFilter.min_overlap must be >= 1, got {min_overlap}")
        self.index, self.min_overlap, self.name = NgramIndex(eval_texts, n, min_n), min_overlap, name

    def __call__(self, row: Row) -> str | None:
        found = self.index.overlaps(row_text(row))
        if len(found) < self.min_overlap:
            return None
        evals = sorted(set().union(*found.values()))
        sizes = sorted({g.count(" ") + 1 for g in found})
        return (f"{len(found)} n-gram(s) (n={'/'.join(map(str, sizes))}) overlap eval items {evals[:5]}, "
                f"e.g. {min(found)!r}")


# ------------------------------------------------------------------ composition


class FilterResult(NamedTuple):
    kept: list[dict]
    removed: list[dict]        # each with "removed_by" and "reason"
    counts: dict[str, int]     # per filter, in order (rows it removed first)


def filter_name(f: RowFilter) -> str:
    name = getattr(f, "name", None) or getattr(f, "__name__", None)
    if not name:
        raise ValueError(f"filter {f!r} has no name: give it a `name` attribute or use a named function")
    return str(name)


def apply_filters(rows: Iterable[Row], filters: Sequence[RowFilter]) -> FilterResult:
    """Run ``filters`` in order over ``rows``; a row goes to ``removed`` at the first filter giving a reason."""
    names = [filter_name(f) for f in filters]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"apply_filters: filter names must be unique, {dupes} repeat")
    counts = dict.fromkeys(names, 0)
    kept, removed = [], []
    for row in rows:
        for name, f in zip(names, filters):
            reason = f(row)
            if reason is not None:
                counts[name] += 1
                removed.append(dict(row) | {"removed_by": name, "reason": reason})
                break
        else:
            kept.append(dict(row))
    log.info("filters kept %d, removed %d: %s", len(kept), len(removed), counts)
    return FilterResult(kept, removed, counts)
