"""Compact top-k logprob storage: exact ids, float16 logprobs, ragged rows padded, bytes per token."""

import json
import math

import numpy as np
import pytest

from distill.logprobs import pack_topk, unpack_topk


def test_round_trip_with_ragged_rows_and_inf():
    ids = [[5, 70000, 3], [9], [1, 2]]
    lps = [[-0.01, -2.5, -17.25], [0.0], [-1e-4, float("-inf")]]
    got_ids, got_lps = unpack_topk(json.loads(json.dumps(pack_topk(ids, lps))))
    assert got_ids.tolist() == [[5, 70000, 3], [9, -1, -1], [1, 2, -1]]  # ids exact, above uint16 too
    for row, want in zip(got_lps, lps):
        for g, w in zip(row, want):
            assert (math.isinf(g) and math.isinf(w)) or abs(g - w) <= max(1e-3, abs(w) * 2 ** -10)
    assert np.isneginf(got_lps[1, 1:]).all()


def test_size_per_token_is_about_8k_bytes_vs_20k_for_json_lists():
    rng = np.random.default_rng(0)
    k, n = 20, 200
    ids = rng.integers(0, 150_000, (n, k)).tolist()
    lps = np.sort(-rng.exponential(3, (n, k)), axis=1)[:, ::-1].round(5).tolist()
    packed = len(json.dumps(pack_topk(ids, lps)))
    plain = len(json.dumps([{"token_ids": i, "logprobs": lp} for i, lp in zip(ids, lps)]))
    assert packed / (n * k) == pytest.approx(8.0, abs=0.2)
    assert plain / packed > 2.0


def test_errors_are_clear():
    with pytest.raises(ValueError, match="position 0"):
        pack_topk([[1, 2]], [[0.0]])
    with pytest.raises(ValueError, match="regenerate"):
        unpack_topk([{"token_ids": [1], "logprobs": [0.0]}])
