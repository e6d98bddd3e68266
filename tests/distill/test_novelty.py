"""ROUGE-L (exact) and MinHash-LSH (approximate) novelty filters."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from distill.data.novelty import (
    LSHIndex,
    MinHasher,
    drop_agreement,
    estimate_jaccard,
    jaccard,
    lcs_length,
    lsh_params,
    minhash_dedup_filter,
    rouge_l,
    rouge_tokenize,
    rougel_novelty_filter,
    shingles,
)


def lcs_dp(a, b):
    """The textbook O(mn) dynamic programme, to check the bit-parallel one against."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def test_tokenizer_matches_rouge_score_default():
    assert rouge_tokenize("Hello, World! It's 2024 — café") == ["hello", "world", "it", "s", "2024", "caf"]


def test_rouge_l_known_pairs():
    assert rouge_l("Write a poem about the sea.", "write a POEM about the sea") == 1.0
    assert rouge_l("alpha beta gamma", "delta epsilon") == 0.0
    assert rouge_l("", "anything") == 0.0
    # LCS("the cat sat on the mat", "the cat on a mat") = "the cat on mat" = 4; P = 4/5, R = 4/6
    assert lcs_length("the cat sat on the mat".split(), "the cat on a mat".split()) == 4
    assert rouge_l("the cat sat on the mat", "the cat on a mat") == pytest.approx(2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))
    assert rouge_l("a b c d", "d c b a") == pytest.approx(0.25)  # order matters: LCS = 1


def test_bit_parallel_lcs_equals_dp():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]  # > 64 tokens crosses a machine word
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == lcs_dp(a, b)


def test_rougel_filter_incremental_and_reports_match():
    pool = ["Write a poem about the sea."]
    cands = ["Write a short poem about the sea.", "Explain quantum tunneling to a child.",
             "Explain quantum tunneling to a small child.", "List three prime numbers."]
    kept, dropped = rougel_novelty_filter(cands, pool)
    assert kept == [1, 3]
    assert [(d.index, d.match_source, d.match_index) for d in dropped] == [(0, "pool", 0), (2, "candidate", 1)]
    assert dropped[0].match == pool[0] and dropped[0].score > 0.7
    kept, _ = rougel_novelty_filter(cands, pool, incremental=False)
    assert kept == [1, 2, 3]


def test_rougel_threshold_is_strict():
    # "a b c d" vs "a b c e": LCS 3 -> F1 = 0.75; dropped only when the score is above the threshold
    assert rougel_novelty_filter(["a b c e"], ["a b c d"], threshold=0.75)[0] == [0]
    assert rougel_novelty_filter(["a b c e"], ["a b c d"], threshold=0.74)[0] == []
    with pytest.raises(ValueError, match="threshold must be in"):
        rougel_novelty_filter([], [], threshold=1.5)


def test_shingles():
    assert shingles("Hi!") == {"hi"}
    assert shingles("!!!") == set()
    assert shingles("Hello world") == {"hello", "ello ", "llo w", "lo wo", "o wor", " worl", "world"}


def test_minhash_estimates_jaccard():
    hasher = MinHasher(128, seed=0)
    errors = []
    for overlap in range(0, 101, 10):
        a = {f"s{i}" for i in range(100)}
        b = {f"s{i}" for i in range(100 - overlap, 200 - overlap)}
        sa, sb = hasher.signatures([a, b])
        err = abs(estimate_jaccard(sa, sb) - jaccard(a, b))
        errors.append(err)
        assert err < 0.15  # ~3.5 standard errors at 128 permutations
    assert np.mean(errors) < 0.05
    assert estimate_jaccard(*hasher.signatures([a, a])) == 1.0


def test_minhash_deterministic_across_processes():
    code = ("import json; from distill.data.novelty import MinHasher, shingles;"
            "print(json.dumps(MinHasher(16, seed=3).signature(shingles('Give me a recipe for bread')).tolist()))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    other = subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONHASHSEED": "7"},
                           capture_output=True, text=True, check=True, cwd=root).stdout
    here = MinHasher(16, seed=3).signature(shingles("Give me a recipe for bread")).tolist()
    assert json.loads(other) == here  # a process with another str-hash salt agrees
    assert here[:4] == [59812134, 21793135, 235129439, 334308886]  # and so does every past run
    assert MinHasher(16, seed=4).signature(shingles("Give me a recipe for bread")).tolist() != here


def test_lsh_finds_near_duplicates_ignores_distinct():
    pool = ["Write a haiku about autumn leaves falling in the park.",
            "Summarize the following news article in two sentences.",
            "Translate the sentence into French and explain the grammar."]
    cands = ["Write a haiku about autumn leaves falling in a park.",       # near-dup of pool[0]
             "Give three reasons why cats make better pets than dogs.",    # new
             "Summarise the following news article in two sentences!",     # near-dup of pool[1]
             "Give three reasons why cats make better pets than dogs do.",  # near-dup of candidate 1
             "Compute the determinant of the given 3x3 matrix."]           # new
    kept, dropped = minhash_dedup_filter(cands, pool, threshold=0.5)
    assert kept == [1, 4]
    assert [(d.index, d.match_source, d.match_index) for d in dropped] == [(0, "pool", 0), (2, "pool", 1), (3, "candidate", 1)]
    assert minhash_dedup_filter(cands, pool, threshold=0.5) == (kept, dropped)  # seeded


def test_lsh_index_buckets():
    hasher = MinHasher(128, seed=0)
    bands, rows = lsh_params(0.5)
    assert bands * rows <= 128
    idx = LSHIndex(bands, rows)
    sigs = hasher.signatures([shingles("the quick brown fox jumps over the lazy dog"),
                              shingles("a completely different sentence about tax law")])
    idx.insert(0, sigs[0])
    idx.insert(1, sigs[1])
    assert idx.query(hasher.signature(shingles("the quick brown fox jumped over the lazy dog"))) == {0}


def test_drop_agreement():
    ag = drop_agreement(reference=[1, 2, 3, 4], other=[3, 4, 5])
    assert (ag.both, ag.only_reference, ag.only_other) == (2, 2, 1)
    assert ag.jaccard == pytest.approx(2 / 5) and ag.precision == pytest.approx(2 / 3) and ag.recall == pytest.approx(0.5)
    assert drop_agreement([], []).jaccard == 1.0


@pytest.mark.parametrize("call, needle", [
    (lambda: lsh_params(1.0), "threshold must be in"),
    (lambda: minhash_dedup_filter([], [], threshold=0.0), "threshold must be in"),
    (lambda: MinHasher(0), "num_perm"),
])
def test_bad_arguments(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()
