"""Demonstration selection for in-context learning: random, stratified by task, or BM25 nearest neighbours.

Three rankings of a pool of seeds for one target seed:

- ``random``     a seeded shuffle (without replacement). The RNG is seeded with ``f"{seed}:{target.id}"``
  (``random.Random`` hashes str seeds with SHA-512, so this is stable across processes, unlike
  ``hash()``): the same target always gets the same demos, different targets get different ones,
  and the pool's order does not matter (it is sorted by id first).
- ``stratified`` round-robin across the pool's ``task`` groups (task order and order within each task
  seeded as above), so k demos cover min(k, #tasks) tasks.
- ``bm25``       Okapi BM25 (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25
  and Beyond"; k1=1.5, b=0.75) of each pool item against the target — the retrieval-based demo choice
  of Liu et al. 2022 ("What Makes Good In-Context Examples for GPT-3?") and Rubin et al. 2022, with a
  lexical retriever instead of a dense one. Ties are broken by the seeded shuffle.

Leakage: the target itself (same id) and any pool item whose normalised text equals the target's
are never demos. Context budget: given ``count_tokens(seed) -> int`` and ``budget_tokens``, the top-k
ranked demos are taken in order while they fit; a demo that does not fit is dropped (counted and
named) and the next, possibly shorter, one is tried — ranks beyond k are not used to back-fill.

BM25 is written here (about 40 lines) rather than taken from ``rank_bm25``: one fewer dependency, an
index built once over the pool with numpy, and an idf that cannot go negative (see
:class:`BM25Index`).

Run: ``python -c "from distill.data.demos import select_demos; help(select_demos)"``
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np

from distill.data.seeds import Seed

log = logging.getLogger(__name__)

Method = Literal["random", "stratified", "bm25"]
METHODS: tuple[str, ...] = ("random", "stratified", "bm25")
_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens (``\\w+``), the tokenizer BM25 and the leakage check share."""
    return _WORD.findall(text.lower())


def seed_text(seed: Seed) -> str:
    """The text a demo is matched on: the instruction and its input."""
    return f"{seed.instruction}\n{seed.input}".strip()


@lru_cache(maxsize=1 << 16)
def _normalised_text(text: str) -> str:
    return " ".join(tokenize(text))


def _normalised(seed: Seed) -> str:
    """Lowercased word tokens joined by spaces: two seeds with the same value are the same question."""
    return _normalised_text(seed_text(seed))


def count_words(seed: Seed) -> int:
    """Default demo size: whitespace words of instruction, input and answer (a cheap token proxy)."""
    return len(f"{seed.instruction} {seed.input} {seed.answer or ''}".split())


class BM25Index:
    """Okapi BM25 over a fixed list of documents; build once, query per target.

    score(q, d) = sum over query tokens t of idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))
    with idf(t) = ln(1 + (N - n_t + 0.5) / (n_t + 0.5)) (Lucene's form: the classic
    ln((N - n_t + 0.5) / (n_t + 0.5)) is negative for terms in more than half the documents, which on
    a small pool ranks a document *lower* for sharing a query word). A repeated query token counts
    each time, as in ``rank_bm25``.
    """

    def __init__(self, docs: Sequence[str], ids: Sequence[str] | None = None, k1: float = 1.5, b: float = 0.75):
        if k1 < 0:
            raise ValueError(f"BM25 k1 must be >= 0, got {k1}")
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"BM25 b must be in [0, 1], got {b}")
        self.k1, self.b = k1, b
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(docs))]
        if len(self.ids) != len(docs):
            raise ValueError(f"BM25Index: {len(docs)} docs but {len(self.ids)} ids")
        tokens = [tokenize(d) for d in docs]
        self.doc_len = np.array([len(t) for t in tokens], dtype=np.float64)
        self.avgdl = float(self.doc_len.mean()) if len(tokens) and self.doc_len.sum() > 0 else 1.0
        postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, toks in enumerate(tokens):
            for term, tf in Counter(toks).items():
                postings[term].append((i, tf))
        n = len(tokens)
        self._postings = {t: (np.array([i for i, _ in p]), np.array([tf for _, tf in p], dtype=np.float64))
                          for t, p in postings.items()}
        self.idf = {t: math.log(1.0 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in postings.items()}

    @classmethod
    def from_seeds(cls, pool: Sequence[Seed], k1: float = 1.5, b: float = 0.75) -> BM25Index:
        return cls([seed_text(s) for s in pool], [s.id for s in pool], k1=k1, b=b)

    def __len__(self) -> int:
        return len(self.ids)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query``; shape (num_docs,)."""
        out = np.zeros(len(self.ids))
        norm = self.k1 * (1.0 - self.b + self.b * self.doc_len / self.avgdl)
        for term in tokenize(query):
            if term not in self._postings:
                continue
            idx, tf = self._postings[term]
            out[idx] += self.idf[term] * tf * (self.k1 + 1.0) / (tf + norm[idx])
        return out


@dataclass(frozen=True)
class DemoSelection:
    """The chosen demonstrations for one target, best first."""

    ids: list[str]
    demos: list[dict[str, str]]  # [{"input", "output"}], the shape templates take
    method: str
    dropped_ids: list[str] = field(default_factory=list)  # ranked in the top k but over the token budget
    tokens: int | None = None  # tokens used by the chosen demos when a budget was given

    @property
    def dropped(self) -> int:
        return len(self.dropped_ids)


def _rng(seed: int, target: Seed) -> random.Random:
    return random.Random(f"{seed}:{target.id}")


def _rank_random(cands: list[Seed], rng: random.Random) -> list[Seed]:
    ranked = list(cands)
    rng.shuffle(ranked)
    return ranked


def _rank_stratified(cands: list[Seed], rng: random.Random) -> list[Seed]:
    groups: dict[str, list[Seed]] = defaultdict(list)
    for s in cands:
        groups[s.task].append(s)
    tasks = sorted(groups)
    rng.shuffle(tasks)
    for t in tasks:
        rng.shuffle(groups[t])
    ranked, depth = [], 0
    while len(ranked) < len(cands):
        ranked.extend(groups[t][depth] for t in tasks if depth < len(groups[t]))
        depth += 1
    return ranked


def _rank_bm25(target: Seed, cands: list[Seed], index: BM25Index, rng: random.Random) -> list[Seed]:
    scores = index.scores(seed_text(target))
    by_id = {sid: float(scores[i]) for i, sid in enumerate(index.ids)}
    tiebreak = {s.id: rng.random() for s in cands}
    return sorted(cands, key=lambda s: (-by_id[s.id], tiebreak[s.id]))


@dataclass(frozen=True)
class DemoPool:
    """A demo pool made ready once for many targets, as :func:`distill.data.plan.build_requests` plans every seed
    against the same few pools: the candidates (with a gold answer where required) sorted by id, their normalised
    texts, and the BM25 index over the whole pool in its given order (``bm25``). :func:`select_demos` picks exactly
    the same demos over it as over the plain list, in one linear pass per target instead of normalising and
    sorting the pool again for each (quadratic in the seeds: 100k seeds took ~37 min to plan)."""

    seeds: list[Seed]  # sorted by id
    norms: list[str]  # _normalised(seed), aligned with seeds
    by_id: dict[str, Seed]
    require_answer: bool
    index: BM25Index | None = None

    @classmethod
    def of(cls, pool: Sequence[Seed], require_answer: bool = True, bm25: bool = False,
           index: BM25Index | None = None) -> DemoPool:
        """Ready ``pool``; ``index``: a BM25 index already built over it (else one is built when ``bm25``).
        Raises ValueError on duplicate ids or an index built over another pool."""
        if len({s.id for s in pool}) != len(pool):
            raise ValueError("select_demos: pool ids must be unique")
        if index is not None and (len(index) != len(pool) or index.ids != [s.id for s in pool]):
            raise ValueError("select_demos: index was not built over this pool (use BM25Index.from_seeds(pool))")
        if index is None and bm25:
            index = BM25Index.from_seeds(pool)
        cands = sorted((s for s in pool if s.answer or not require_answer), key=lambda s: s.id)
        return cls(cands, [_normalised(s) for s in cands], {s.id: s for s in cands},
                   require_answer, index)


def select_demos(
    target: Seed,
    pool: Sequence[Seed] | DemoPool,
    k: int,
    method: Method = "random",
    seed: int = 0,
    budget_tokens: int | None = None,
    count_tokens: Callable[[Seed], int] = count_words,
    index: BM25Index | None = None,
    require_answer: bool = True,
) -> DemoSelection:
    """Pick up to ``k`` demonstrations for ``target`` from ``pool`` (a list, or a :class:`DemoPool` readied once for
    many targets: the same choice, faster).

    ``index`` (bm25 only): a :class:`BM25Index` built once with ``BM25Index.from_seeds(pool)`` and reused
    across targets; built on the fly when None. ``require_answer``: only pool items with a gold
    ``answer`` can be demos (a demo needs an output). Raises ValueError on a bad argument.
    """
    if method not in METHODS:
        raise ValueError(f"select_demos: method must be one of {METHODS}, got {method!r}")
    if k < 0:
        raise ValueError(f"select_demos: k must be >= 0, got {k}")
    if budget_tokens is not None and budget_tokens < 0:
        raise ValueError(f"select_demos: budget_tokens must be >= 0 or None, got {budget_tokens}")
    if not isinstance(pool, DemoPool):
        pool = DemoPool.of(pool, require_answer, bm25=method == "bm25", index=index)
    elif pool.require_answer != require_answer or method == "bm25" and pool.index is None:
        raise ValueError(f"select_demos: the DemoPool was made with require_answer={pool.require_answer} and "
                         f"{'no' if pool.index is None else 'a'} BM25 index; make it with DemoPool.of(pool, "
                         f"{require_answer}, bm25={method == 'bm25'})")
    target_norm = _normalised(target)
    cands = [s for s, norm in zip(pool.seeds, pool.norms) if s.id != target.id and norm != target_norm]
    rng = _rng(seed, target)
    if method == "random":
        ranked = _rank_random(cands, rng)
    elif method == "stratified":
        ranked = _rank_stratified(cands, rng)
    else:
        ranked = _rank_bm25(target, cands, pool.index, rng)
    top = ranked[:k]
    if budget_tokens is None:
        chosen, dropped, used = top, [], None
    else:
        chosen, dropped, used = [], [], 0
        for s in top:
            cost = count_tokens(s)
            if used + cost <= budget_tokens:
                chosen.append(s)
                used += cost
            else:
                dropped.append(s.id)
        if dropped:
            log.debug("target %s: %d of %d demos over the %d-token budget", target.id, len(dropped), len(top), budget_tokens)
    return DemoSelection(ids=[s.id for s in chosen],
                         demos=[{"input": s.input or s.instruction, "output": s.answer or ""} for s in chosen],
                         method=method, dropped_ids=dropped, tokens=used)
