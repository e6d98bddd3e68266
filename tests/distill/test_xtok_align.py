"""Byte alignment of a teacher's answer with a student's tokenization; the backends' byte-level capture."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from distill.logprobs import (
    SpecialToken,
    pack_openai_logprobs,
    pack_topk,
    pack_topk_bytes,
    unpack_topk,
    unpack_topk_bytes,
    vocab_strings,
)
from distill.train.xtok_align import align_chunks, encode_xtok_row, string_index

END = SpecialToken(b"<|im_end|>")
# A toy student vocabulary: id -> bytes (special tokens as SpecialToken).
VOCAB = [END, b"ab", b"c", b" d", b"a", b"b", b"abc", b"\n", b"x"]
INDEX = string_index(VOCAB)


def _spans(pieces):
    out, pos = [], 0
    for p in pieces:
        out.append((pos, pos + len(p)))
        pos += len(p)
    return out


def test_chunks_close_at_shared_boundaries_only():
    t = _spans([b"a", b"bc", b" d"])
    s = _spans([b"ab", b"c", b" d"])
    got = [(c.start, c.end, c.t0, c.t1, c.s0, c.s1, c.single) for c in align_chunks(t, s, 5)]
    assert got == [(0, 3, 0, 2, 0, 2, False), (3, 5, 2, 3, 2, 3, True)]
    # a token straddling the text's start belongs to no chunk
    assert [(c.start, c.end) for c in align_chunks([(-1, 2), (2, 3)], _spans([b"ab", b"c"]), 3)] == [(2, 3)]


def _teacher(tokens, lps, alts, alt_lps):
    return unpack_topk_bytes(json.loads(json.dumps(pack_topk_bytes(tokens, lps, alts, alt_lps))))


def test_encode_row_gives_topk_at_one_token_chunks_and_likelihoods_elsewhere():
    # Teacher says " abc d" (leading space stripped from the student's answer) + <|im_end|>.
    row = _teacher([b" ", b"a", b"bc", b" d", END], [-0.5, -0.1, -0.2, -0.3, -0.05],
                   [[b" "], [b"a", b"x"], [b"bc", b"b"], [b" d", b" e", b"\n"], [END, b"\n"]],
                   [[-0.5], [-0.1, -2.5], [-0.2, -1.8], [-0.3, -1.5, -4.0], [-0.05, -3.0]])
    answer_ids = [1, 2, 3, 0, 7]  # "ab" "c" " d" <|im_end|> "\n"
    out = encode_xtok_row(row, " abc d", "abc d", answer_ids, "abc d<|im_end|>\n", VOCAB, INDEX, 5, k=3)
    assert out.chunk == [0, 0, -1, -1, -1] and out.chunk_logprobs == pytest.approx([-0.3], abs=1e-3)
    # " d" -> student id 3; " e" is not a student token (tail); "\n" -> id 7
    assert out.topk_ids[2] == [3, 7, -1, -1]
    assert out.topk_logprobs[2][:2] == pytest.approx([-0.3, -4.0], abs=2e-3)
    assert out.topk_ids[3][:2] == [0, 7]            # end-of-turn matched by name
    assert out.topk_ids[4] == [-1] * 4              # the trailing "\n" has no teacher counterpart
    assert out.uld_logprobs[0][:2] == pytest.approx([-0.1, -2.5], abs=2e-3)  # student "ab" starts in teacher "a"
    assert out.stats == {"chunks": 2, "single": 1, "covered": 3, "positions": 5}
    # truncation: a chunk not wholly labelled is dropped
    cut = encode_xtok_row(row, " abc d", "abc d", answer_ids, "abc d<|im_end|>\n", VOCAB, INDEX, 1, k=3)
    assert cut.chunk == [-1] and cut.chunk_logprobs == []


def test_rows_whose_texts_disagree_are_refused():
    row = _teacher([b"ab"], [-0.1], [[b"ab"]], [[-0.1]])
    assert encode_xtok_row(row, "zz", "ab", [1], "ab", VOCAB, INDEX, 1, k=1) is None  # answer not in response
    assert encode_xtok_row(row, "ab", "ab", [4], "ab", VOCAB, INDEX, 1, k=1) is None  # student ids spell "a"


def test_smollm2_byte_map_is_exact_and_identity_alignment_is_all_single_tokens(bundled_dir):
    from distill.models import load_tokenizer

    tok = load_tokenizer(bundled_dir)
    vocab = vocab_strings(tok)
    text = "Naïve café: 3 + 4 = 7 €\n\n日本語 😀  tabs\tend"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert b"".join(vocab[i] for i in ids) == text.encode()  # per-id decode() is not: split UTF-8 -> U+FFFD
    assert vocab[tok.convert_tokens_to_ids("<|im_end|>")] == END and isinstance(vocab[2], SpecialToken)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    sampled = ids + [end]
    rng = np.random.default_rng(0)
    alts = [[t] + [(t + 1 + 7 * j) % 49152 for j in range(3)] for t in sampled]
    lps = [sorted((-rng.exponential(2, 4)).round(3).tolist(), reverse=True) for _ in sampled]
    # the vLLM backend's capture, from a fake completion
    comp = SimpleNamespace(text=text, finish_reason="stop", token_ids=sampled,
                           logprobs=[{i: SimpleNamespace(logprob=lp, rank=r + 1) for r, (i, lp) in enumerate(zip(a, lp_row))}
                                     for a, lp_row in zip(alts, lps)])
    from distill.teacher.vllm_backend import _choice

    packed = _choice(comp, vocab).logprobs
    assert [a.tolist() for a in unpack_topk(packed)] == [a.tolist() for a in unpack_topk(pack_topk(alts, lps))]
    assert _choice(comp).logprobs["format"] == "topk-f16/v1"
    row = unpack_topk_bytes(packed)
    answer_text = tok.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": text}],
                                          tokenize=False).split("<|im_start|>assistant\n")[-1]
    s_ids = tok(answer_text, add_special_tokens=False)["input_ids"]
    out = encode_xtok_row(row, text, text, s_ids, answer_text, vocab, string_index(vocab), len(s_ids), k=4)
    assert out.chunk_logprobs == [] and out.stats["single"] == len(ids)
    assert [r[:4] for r in out.topk_ids[: len(sampled)]] == alts   # ids map back to themselves, eot included


def test_openai_content_is_packed_by_bytes_with_ids_only_when_the_server_names_them():
    content = [{"token": "Hi", "bytes": [72, 105], "logprob": -0.1,
                "top_logprobs": [{"token": "Hi", "bytes": [72, 105], "logprob": -0.1},
                                 {"token": "Hey", "bytes": None, "logprob": -2.4}]},
               {"token": "\\xe2", "bytes": [226], "logprob": -0.3, "top_logprobs": [{"token": "\\xe2", "bytes": [226], "logprob": -0.3}]}]
    row = unpack_topk_bytes(pack_openai_logprobs(content))
    assert [row.token_bytes(t) for t in range(2)] == [b"Hi", b"\xe2"] and row.offsets.tolist() == [0, 2]
    assert [row.strings[a] for a in row.alt[0]] == [b"Hi", b"Hey"] and row.ids is None
    with_ids = [{"token": "token_id:5", "logprob": -0.1, "top_logprobs": [{"token": "token_id:5", "logprob": -0.1}]}]
    assert unpack_topk_bytes(pack_openai_logprobs(with_ids)).ids.tolist() == [[5]]
