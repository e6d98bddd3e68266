"""Cross-tokenizer offline KD wired into training: a student of another tokenizer learns from byte-level teacher
logprobs; the same-tokenizer path reads byte-level-with-ids data bit-identically; bad data fails in one line."""

import json
import random

import pytest

from distill.config import ConfigError
from distill.logprobs import SpecialToken, pack_topk, pack_topk_bytes, vocab_strings
from distill.models import build_tiny_model, load_tokenizer
from distill.train.config import TrainConfig
from distill.train.run import train_student
from distill.transplant import train_tokenizer
from distill.transplant_config import TokenizerTrainConfig

TEXT = "".join(f"What is {i} plus {i}? {i} plus {i} is {2 * i}. The answer is {2 * i}.\n" for i in range(60)) * 3


@pytest.fixture(scope="module")
def other_student(bundled_dir, tmp_path_factory):
    """A 2-layer random Llama on a 400-token byte-level BPE trained here (the bundled model's specials/template)."""
    root = tmp_path_factory.mktemp("xtok")
    (root / "text.txt").write_text(TEXT)
    tok_dir = train_tokenizer(TokenizerTrainConfig(vocab=400, out=root / "tok", text=[root / "text.txt"], min_frequency=2))
    return build_tiny_model(root / "student", tok_dir)


def make_dataset(path, teacher_tok, n=12, k=5, seed=0, fmt="bytes"):
    """Rows as `eakd generate` writes them with top_logprobs=k (a made-up peaked teacher): ``fmt`` "bytes" =
    OpenAI-style byte strings without ids, "bytes+ids" = the vLLM backend's, "ids" = topk-f16/v1."""
    from datasets import Dataset, DatasetDict

    rng, vocab = random.Random(seed), vocab_strings(teacher_tok)
    rows = []
    for i in range(n):
        content = f"{i} plus {i} is {2 * i}."
        raw = " " + content if fmt == "bytes" else content  # the answer is the teacher's text stripped
        ids = teacher_tok(raw, add_special_tokens=False)["input_ids"] + [teacher_tok.eos_token_id]
        top_ids = [[t] + rng.sample([x for x in range(20, 500) if x != t], k - 1) for t in ids]
        top_lps = [[-0.1] + [-3.0 - j for j in range(k - 1)] for _ in ids]
        if fmt == "ids":
            packed = pack_topk(top_ids, top_lps)
        else:
            with_ids = fmt == "bytes+ids"
            packed = pack_topk_bytes([vocab[t] for t in ids], [-0.1] * len(ids), [[vocab[t] for t in r] for r in top_ids],
                                     top_lps, ids=top_ids if with_ids else None, token_ids=ids if with_ids else None)
        rows.append({"id": str(i), "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                                {"role": "assistant", "content": content}],
                     "raw_output": raw, "teacher_token_ids": ids if fmt != "bytes" else None,
                     "teacher_logprobs": json.dumps(packed)})
    DatasetDict({"train": Dataset.from_list(rows[:-2]), "validation": Dataset.from_list(rows[-2:])}).save_to_disk(str(path))
    return path


def _train(student, ds, out, **kd):
    cfg = TrainConfig(student=str(student), lora={"enabled": False}, kd={"enabled": True, "alpha_ce": 0.5, **kd},
                      max_steps=6, batch_size=4, lr=1e-3, dtype="float32", device="cpu", log_every=100)
    return json.loads((train_student(cfg, ds, out) / "metrics.json").read_text())


@pytest.mark.parametrize("loss", ["aligned", "uld"])
def test_a_student_with_another_tokenizer_trains_on_byte_level_logprobs(bundled_dir, other_student, tmp_path, loss):
    ds = make_dataset(tmp_path / "ds", load_tokenizer(bundled_dir))
    m = _train(other_student, ds, tmp_path / "out", cross_tokenizer=loss)
    assert m["mode"] == ("logit_kd_xtok_uld" if loss == "uld" else "logit_kd_xtok_aligned_forward_kl")
    assert m["kd_loss"] == f"xtok_{loss}"
    stats = m["xtok"]["train"]
    assert stats["rows"] == 10 and "rows_without_targets" not in stats
    assert stats["topk_positions"] > 0 and stats["topk_positions"] + stats["chunk_positions"] < stats["positions"]
    assert all(h["kd"] is not None and h["kd"] > 0 for h in m["history"])
    assert m["loss_last"] < m["loss_first"]


def test_same_tokenizer_reads_byte_level_data_with_ids_bit_identically(bundled_dir, tiny_model, tmp_path):
    tok = load_tokenizer(bundled_dir)
    a = _train(tiny_model, make_dataset(tmp_path / "ids", tok, fmt="ids"), tmp_path / "a")
    b = _train(tiny_model, make_dataset(tmp_path / "bytes", tok, fmt="bytes+ids"), tmp_path / "b")
    assert a["mode"] == b["mode"] == "logit_kd_topk_forward_kl" and b["kd_loss"] == "topk_same_tokenizer"
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["teacher_agreement_after"] == b["teacher_agreement_after"]


def test_another_tokenizer_without_byte_level_logprobs_fails_in_one_line(bundled_dir, other_student, tmp_path):
    ds = make_dataset(tmp_path / "ds", load_tokenizer(bundled_dir), fmt="ids")
    with pytest.raises(ConfigError, match="no byte-level teacher logprobs.*regenerate") as err:
        _train(other_student, ds, tmp_path / "out")
    assert "\n" not in str(err.value)
    ds2 = make_dataset(tmp_path / "ds2", load_tokenizer(bundled_dir))
    with pytest.raises(ConfigError, match="cross_tokenizer=off"):
        _train(other_student, ds2, tmp_path / "out2", cross_tokenizer="off")


def test_vocab_strings_mark_specials(bundled_dir):
    v = vocab_strings(load_tokenizer(bundled_dir))
    assert isinstance(v[2], SpecialToken) and v[2] == b"<|im_end|>"
