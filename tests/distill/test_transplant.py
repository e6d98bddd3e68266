"""Tokenizer transplant (distill/transplant.py): the mapping, the embedding init, the output folder, bad input.

Tiny byte-level BPE tokenizers and 2-layer Llamas are built here (no bundled model, no hub), so each test takes
a second or two.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.config import ConfigError
from distill.transplant import init_embeddings, map_vocabulary, token_bytes, train_tokenizer, transplant_model
from distill.transplant_config import TokenizerTrainConfig, TransplantConfig

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ROLES = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"}
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXT = "the cat sat on the mat. the dog sat on the log. a bird saw the cat and the dog.\n" * 40


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def build_tokenizer(path: Path, text_file: Path, vocab: int, specials=SPECIALS, template: str | None = TEMPLATE):
    """A byte-level BPE: ``vocab`` = len(specials) + 256 has no merges (every byte a token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train([str(text_file)], trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(specials), min_frequency=1,
                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                   show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **ROLES)
    if template:
        tok.chat_template = template
    tok.save_pretrained(path)
    return tok


def build_model(path: Path, tok, tied: bool = True) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tied, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval(),
            AutoTokenizer.from_pretrained(path, local_files_only=True))


@pytest.mark.parametrize("tied", [True, False])
def test_identical_tokenizer_keeps_embeddings_and_logits(tmp_path, text_file, tied):
    tok = build_tokenizer(tmp_path / "tok", text_file, 300)
    old_dir = build_model(tmp_path / "old", tok, tied=tied)
    out = transplant_model(TransplantConfig(model=str(old_dir), tokenizer=tmp_path / "tok", out=tmp_path / "new"))
    (old, _), (new, new_tok) = load(old_dir), load(out)
    assert torch.equal(old.get_input_embeddings().weight, new.get_input_embeddings().weight)
    assert torch.equal(old.get_output_embeddings().weight, new.get_output_embeddings().weight)
    ids = torch.tensor([new_tok.encode("the cat sat on the log.")])
    with torch.no_grad():
        assert torch.equal(old(ids).logits, new(ids).logits)
    stats = json.loads((out / "transplant.json").read_text())["stats"]
    assert stats["exact"] + stats["special"] == len(tok) and stats["averaged"] == stats["fallback"] == 0
    assert {p.suffix for p in out.iterdir()} >= {".safetensors", ".json"}
    assert not [p for p in out.iterdir() if p.suffix in (".bin", ".pt")]


@pytest.mark.parametrize("tied", [True, False])
def test_merged_token_is_the_mean_of_its_parts(tmp_path, text_file, tied):
    """Old: bytes only (no merges); new: merges. A merged token's row is the mean of its bytes' rows (both matrices)."""
    old_tok = build_tokenizer(tmp_path / "old_tok", text_file, len(SPECIALS) + 256)
    new_tok = build_tokenizer(tmp_path / "new_tok", text_file, 320)
    old_dir = build_model(tmp_path / "old", old_tok, tied=tied)
    out = transplant_model(TransplantConfig(model=str(old_dir), tokenizer=tmp_path / "new_tok", out=tmp_path / "new"))
    (old, _), (new, _) = load(old_dir), load(out)
    merged = [j for j, b in enumerate(token_bytes(new_tok)) if b is not None and len(b) > 1]
    assert len(merged) > 20
    old_ids = {b: i for i, b in enumerate(token_bytes(old_tok)) if b is not None}
    for get in (lambda m: m.get_input_embeddings().weight, lambda m: m.get_output_embeddings().weight):
        w_old, w_new = get(old).detach(), get(new).detach()
        for j in merged:
            parts = [old_ids[bytes([x])] for x in token_bytes(new_tok)[j]]
            torch.testing.assert_close(w_new[j], w_old[parts].mean(0), rtol=1e-6, atol=1e-6)
    stats = json.loads((out / "transplant.json").read_text())["stats"]
    assert stats["averaged"] == len(merged) and stats["fallback"] == 0


def test_special_tokens_map_by_role_and_content(tmp_path, text_file):
    old_tok = build_tokenizer(tmp_path / "old_tok", text_file, 300)
    new_tok = build_tokenizer(tmp_path / "new_tok", text_file, 300, specials=list(reversed(SPECIALS)) + ["<|x|>"])
    sources, kinds, roles = map_vocabulary(old_tok, new_tok)
    for name in SPECIALS:
        j, i = new_tok.convert_tokens_to_ids(name), old_tok.convert_tokens_to_ids(name)
        assert sources[j] == [i] and kinds[j] == "special"
    assert roles["eos"] == {"new": "<|im_end|>", "old": "<|im_end|>"}
    x = new_tok.convert_tokens_to_ids("<|x|>")
    assert kinds[x] == "averaged" and sources[x] == old_tok.encode("<|x|>", add_special_tokens=False)


def test_init_embeddings_shapes_and_fallback():
    old = torch.randn(10, 4, dtype=torch.bfloat16)
    new = init_embeddings(old, [[3], [1, 2], []])
    assert new.shape == (3, 4) and new.dtype == torch.bfloat16
    assert torch.equal(new[0], old[3])
    torch.testing.assert_close(new[1], old[1:3].float().mean(0).bfloat16())
    torch.testing.assert_close(new[2], old.float().mean(0).bfloat16())


def test_output_loads_with_auto_classes_and_generates(tmp_path, text_file):
    """A new tokenizer without a chat template gets the old one; the folder loads with Auto* and generates."""
    build_tokenizer(tmp_path / "old_tok", text_file, 300)
    from transformers import AutoTokenizer

    old_dir = build_model(tmp_path / "old", AutoTokenizer.from_pretrained(tmp_path / "old_tok"))
    build_tokenizer(tmp_path / "new_tok", text_file, 330, template=None)
    out = transplant_model(TransplantConfig(model=str(old_dir), tokenizer=tmp_path / "new_tok", out=tmp_path / "new"))
    model, tok = load(out)
    assert tok.chat_template.strip() == TEMPLATE and len(tok) == model.config.vocab_size > 259
    assert model.config.eos_token_id == tok.eos_token_id
    prompt = tok.apply_chat_template([{"role": "user", "content": "the cat"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    gen = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == prompt["input_ids"].shape[1] + 5


def test_train_tokenizer_carries_special_tokens(tmp_path, text_file):
    tok = build_tokenizer(tmp_path / "old_tok", text_file, 300)
    old_dir = build_model(tmp_path / "old", tok)
    out = train_tokenizer(TokenizerTrainConfig(vocab=310, out=tmp_path / "bpe", text=[text_file], model=str(old_dir)))
    from transformers import AutoTokenizer

    new = AutoTokenizer.from_pretrained(out)
    assert [new.convert_tokens_to_ids(t) for t in SPECIALS] == [0, 1, 2]
    assert (new.eos_token, new.bos_token) == ("<|im_end|>", "<|im_start|>") and new.chat_template.strip() == TEMPLATE
    assert 259 < len(new) <= 310  # the tiny text runs out of merges before 310


def test_train_tokenizer_default_text_missing(tmp_path, monkeypatch):
    import distill.transplant_config as tc

    monkeypatch.setattr(tc, "shared_data_dir", lambda: None)
    with pytest.raises(ConfigError, match="wiki.valid.tokens.*EAKD_DATA_DIR.*--text"):
        tc.default_training_text()


@pytest.mark.reliability
def test_cli_bad_input_exits_2_and_leaves_nothing(tmp_path, text_file, reliability):
    from typer.testing import CliRunner

    from flows.cli import app

    tok = build_tokenizer(tmp_path / "tok", text_file, 300)
    old_dir = build_model(tmp_path / "old", tok)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\0")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    cases = [
        (["--tokenizer", str(tmp_path / "nope"), "--out", str(tmp_path / "o1"), "--model", str(old_dir)],
         "does not exist"),
        (["--tokenizer", str(broken), "--out", str(tmp_path / "o2"), "--model", str(old_dir)], "could not be loaded"),
        (["--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "o3"), "--model", str(pickled)],
         "safetensors only"),
        (["--tokenizer", str(tmp_path / "tok"), "--out", str(full), "--model", str(old_dir)], "not empty"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, needle in cases:
        result = CliRunner().invoke(app, ["models", "transplant", *args])
        assert result.exit_code == 2, result.output
        assert needle in result.output and result.output.count("error:") == 1
        reliability["bad_inputs_tried"] += 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temp folder left behind
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    result = CliRunner().invoke(app, ["models", "train-tokenizer", "--out", str(tmp_path / "o4"), "--vocab", "300",
                                      "--text", str(tmp_path / "missing.txt"), "--model", str(old_dir)])
    assert result.exit_code == 2 and "missing.txt does not exist" in result.output


def test_cli_transplant_and_train_tokenizer_succeed(tmp_path, text_file):
    from typer.testing import CliRunner

    from flows.cli import app

    old_dir = build_model(tmp_path / "old", build_tokenizer(tmp_path / "old_tok", text_file, 300))
    result = CliRunner().invoke(app, ["models", "train-tokenizer", "--out", str(tmp_path / "bpe"), "--vocab", "290",
                                      "--text", str(text_file), "--model", str(old_dir)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["models", "transplant", "--tokenizer", str(tmp_path / "bpe"),
                                      "--out", str(tmp_path / "new"), "--model", str(old_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(str(tmp_path / "new"))
    assert json.loads((tmp_path / "new" / "transplant.json").read_text())["stats"]["new_vocab"] > 259
