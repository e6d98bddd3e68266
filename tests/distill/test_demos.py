"""Demonstration selection: no leakage, seeded determinism, task coverage, BM25 scores, token budgets."""

import math

import pytest

from distill.data.demos import BM25Index, DemoPool, select_demos
from distill.data.seeds import Seed

METHODS = ["random", "stratified", "bm25"]


def make_pool() -> list[Seed]:
    pool = []
    for task in ("math", "geo", "sent"):
        for i in range(6):
            pool.append(Seed(id=f"{task}-{i}", instruction=f"{task} question number {i} about topic {task}{i}",
                             answer=f"a{i}", task=task))
    return pool


@pytest.mark.parametrize("method", METHODS)
def test_never_leaks_target_or_duplicate_text(method):
    pool = make_pool()
    target = pool[0]
    # the same question under another id, differing only in case/punctuation/spacing
    twin = Seed(id="twin", instruction="MATH question number 0, about   topic math0!", answer="x", task="math")
    pool = pool + [twin]
    for seed in range(20):
        sel = select_demos(target, pool, k=len(pool), method=method, seed=seed)
        assert target.id not in sel.ids and "twin" not in sel.ids
        assert len(sel.ids) == len(pool) - 2 == len(set(sel.ids))


@pytest.mark.parametrize("method", METHODS)
def test_a_readied_pool_picks_what_the_plain_list_picks(method):
    pool = make_pool() + [Seed(id="noans", instruction="geo question without an answer", task="geo")]
    ready = DemoPool.of(pool, bm25=method == "bm25")
    for target in pool:
        for seed in range(3):
            plain = select_demos(target, pool, 4, method=method, seed=seed, budget_tokens=40)
            assert select_demos(target, ready, 4, method=method, seed=seed, budget_tokens=40) == plain


def test_a_readied_pool_refuses_what_it_was_not_made_for():
    pool = make_pool()
    with pytest.raises(ValueError, match="BM25 index"):
        select_demos(pool[0], DemoPool.of(pool), 3, method="bm25")
    with pytest.raises(ValueError, match="require_answer"):
        select_demos(pool[0], DemoPool.of(pool), 3, require_answer=False)
    with pytest.raises(ValueError, match="unique"):
        DemoPool.of(pool + pool[:1])


@pytest.mark.parametrize("method", METHODS)
def test_seeded_determinism_and_pool_order_independence(method):
    pool = make_pool()
    t = pool[3]
    a = select_demos(t, pool, 4, method=method, seed=1)
    b = select_demos(t, list(reversed(pool)), 4, method=method, seed=1)
    assert a == b
    assert [d["output"] for d in a.demos] == [next(s.answer for s in pool if s.id == i) for i in a.ids]


def test_random_differs_across_targets_and_seeds():
    pool = make_pool()
    by_target = {tuple(select_demos(t, pool, 3, seed=0).ids) for t in pool}
    assert len(by_target) > len(pool) // 2
    by_seed = {tuple(select_demos(pool[0], pool, 3, seed=s).ids) for s in range(10)}
    assert len(by_seed) > 5


def test_random_needs_answers_by_default():
    pool = make_pool() + [Seed(id="noans", instruction="unlabelled", task="math")]
    assert "noans" not in select_demos(pool[0], pool, 100).ids
    assert "noans" in select_demos(pool[0], pool, 100, require_answer=False).ids


def test_stratified_covers_tasks():
    pool = make_pool()
    for seed in range(10):
        sel = select_demos(pool[0], pool, 3, method="stratified", seed=seed)
        assert {i.split("-")[0] for i in sel.ids} == {"math", "geo", "sent"}
        sel6 = select_demos(pool[0], pool, 6, method="stratified", seed=seed)
        counts = {t: sum(i.startswith(t) for i in sel6.ids) for t in ("math", "geo", "sent")}
        assert counts == {"math": 2, "geo": 2, "sent": 2}


def test_bm25_hand_computed_scores():
    idx = BM25Index(["the cat sat", "the dog ran fast", "a cat and a dog"])
    s = idx.scores("cat")
    # N=3, n_cat=2 -> idf = ln(1 + 1.5/2.5) = ln 1.6; avgdl = 4; k1=1.5, b=0.75
    assert s[0] == pytest.approx(math.log(1.6) * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 3 / 4)))
    assert s[0] == pytest.approx(0.5295815540797021)
    assert s[2] == pytest.approx(0.4224751723557174)
    assert s[1] == 0.0
    assert (idx.scores("unknown words") == 0).all()


def test_bm25_ranks_relevant_doc_first():
    pool = make_pool() + [
        Seed(id="photo", instruction="Explain how photosynthesis converts sunlight into chemical energy in plants",
             answer="chlorophyll", task="bio"),
    ]
    target = Seed(id="q", instruction="How do plants turn sunlight into energy through photosynthesis?", task="bio")
    index = BM25Index.from_seeds(pool)
    sel = select_demos(target, pool, 3, method="bm25", index=index)
    assert sel.ids[0] == "photo"
    with pytest.raises(ValueError, match="index was not built over this pool"):
        select_demos(target, pool[:-1], 3, method="bm25", index=index)


def test_budget_fits_in_ranked_order():
    pool = [Seed(id=f"s{i}", instruction=" ".join(["w"] * n), answer="a", task="t") for i, n in enumerate([5, 50, 3, 4])]
    target = Seed(id="t", instruction="target")
    sizes = {s.id: len(s.instruction.split()) + 1 for s in pool}  # count_words: instruction + answer
    free = select_demos(target, pool, 4, seed=0)
    sel = select_demos(target, pool, 4, seed=0, budget_tokens=12)
    # the same ranking, minus the demos that did not fit when their turn came
    used = 0
    expect_kept, expect_dropped = [], []
    for i in free.ids:
        if used + sizes[i] <= 12:
            expect_kept.append(i)
            used += sizes[i]
        else:
            expect_dropped.append(i)
    assert sel.ids == expect_kept and sel.dropped_ids == expect_dropped
    assert "s1" in sel.dropped_ids and sel.dropped == len(expect_dropped) and sel.tokens <= 12
    custom = select_demos(target, pool, 4, seed=0, budget_tokens=2, count_tokens=lambda s: 1)
    assert len(custom.ids) == 2 and custom.dropped == 2 and custom.tokens == 2
    assert select_demos(target, pool, 4, budget_tokens=0).ids == []


@pytest.mark.parametrize("kwargs, needle", [
    ({"method": "knn"}, "method must be one of"),
    ({"k": -1}, "k must be >= 0"),
    ({"budget_tokens": -5}, "budget_tokens"),
])
def test_bad_arguments(kwargs, needle):
    pool = make_pool()
    args = {"k": 2} | kwargs
    with pytest.raises(ValueError, match=needle):
        select_demos(pool[0], pool, **args)


def test_duplicate_pool_ids_rejected():
    pool = make_pool()
    with pytest.raises(ValueError, match="unique"):
        select_demos(pool[0], pool + [pool[1]], 2)
