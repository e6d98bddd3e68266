"""Byte-level teacher logprobs (topk-bytes/v1): exact round trip, same ids/logprobs as topk-f16/v1, sizes."""

import json
import math

import numpy as np
import pytest

from distill.logprobs import (
    SpecialToken,
    is_byte_level,
    is_packed,
    pack_topk,
    pack_topk_bytes,
    unpack_topk,
    unpack_topk_bytes,
)

TOKENS = [b"The", b" answer", b" \xe2\x82", b"\xac5", SpecialToken(b"<|im_end|>")]
ALTS = [[b"The", b"A", b"<|im_end|>"], [b" answer", b" result"], [b" \xe2\x82"], [b"\xac5", b"\xac"],
        [SpecialToken(b"<|im_end|>"), b"."]]
ALT_LPS = [[-0.1, -2.5, -9.0], [-0.01, -4.75], [0.0], [-0.2, float("-inf")], [-0.05, -3.0]]


@pytest.mark.parametrize("codec", ["zstd", "zlib", None])
def test_round_trip_keeps_strings_specials_offsets_and_logprobs(codec):
    packed = json.loads(json.dumps(pack_topk_bytes(TOKENS, [-0.1, -0.01, 0.0, -0.2, -0.05], ALTS, ALT_LPS, codec=codec)))
    row = unpack_topk_bytes(packed)
    assert [row.token_bytes(t) for t in range(5)] == TOKENS
    assert isinstance(row.token_bytes(4), SpecialToken) and not isinstance(row.strings[row.alt[0, 2]], SpecialToken)
    assert row.offsets.tolist() == [0, 3, 10, 13, 15]  # running bytes; the special token spans none
    assert [[row.strings[a] for a in r if a >= 0] for r in row.alt] == ALTS
    assert row.alt.shape == (5, 3) and row.alt[2, 1:].tolist() == [-1, -1]
    for got, want in zip(row.alt_logprob, ALT_LPS):
        for g, w in zip(got, want):
            assert (math.isinf(g) and math.isinf(w)) or abs(g - w) <= max(1e-3, abs(w) * 2 ** -10)
    assert row.ids is None and row.token_ids is None
    assert is_byte_level(packed) and not is_packed(packed)  # no ids: same-tokenizer KD cannot read it


def test_with_ids_unpack_topk_is_bit_identical_to_the_id_format():
    rng = np.random.default_rng(0)
    ids = [rng.choice(70_000, size=int(rng.integers(1, 6)), replace=False).tolist() for _ in range(40)]
    lps = [np.sort(-rng.exponential(3, len(r)))[::-1].tolist() for r in ids]
    strings = [[f"t{i}".encode() for i in r] for r in ids]
    packed = pack_topk_bytes([s[0] for s in strings], [lp[0] for lp in lps], strings, lps, ids=ids,
                             token_ids=[r[0] for r in ids])
    assert is_packed(packed)
    got_ids, got_lps = unpack_topk(json.loads(json.dumps(packed)))
    want_ids, want_lps = unpack_topk(pack_topk(ids, lps))
    assert np.array_equal(got_ids, want_ids) and got_ids.dtype == want_ids.dtype
    assert np.array_equal(got_lps, want_lps) and got_lps.dtype == want_lps.dtype
    assert unpack_topk_bytes(packed).token_ids.tolist() == [r[0] for r in ids]


def test_errors_are_clear():
    with pytest.raises(ValueError, match="position 0"):
        pack_topk_bytes([b"a"], [0.0], [[b"a", b"b"]], [[0.0]])
    with pytest.raises(ValueError, match="regenerate"):
        unpack_topk_bytes(pack_topk([[1]], [[0.0]]))
    with pytest.raises(ValueError, match="all must match"):
        pack_topk_bytes([b"a", b"b"], [0.0], [[b"a"]], [[0.0]])
