"""The tokenizer and chat template of a Hugging Face folder as GGUF metadata, for :mod:`compress.gguf`.

llama.cpp tokenizes from the GGUF alone (``src/llama-vocab.cpp``), so the file must carry everything a
byte-level BPE tokenizer needs (the keys of the GGUF spec, ``tokenizer.ggml.*``): ``model = "gpt2"``
(byte-level BPE), ``pre`` (which pre-tokenizer regexes split the text before BPE), the token list in id
order with one type per token (normal, control for special added tokens, user-defined for other added
tokens, unused for padding rows), the merges as ``"left right"`` strings, the bos/eos/unk/pad ids,
whether a BOS/EOS is added when encoding, and ``tokenizer.chat_template`` (the Jinja template
llama-server renders chats with).

Written from ``tokenizer.json`` directly, not by llama.cpp's ``convert_hf_to_gguf.py``, whose choice of
``pre`` hashes the tokenization of a fixed text against a table of known models. Here the pre-tokenizer
itself is read and matched against the llama.cpp pre-tokenizers that reproduce it exactly; anything else is
refused rather than guessed, since a wrong ``pre`` tokenizes differently without any error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import ConfigError

# GPT-2's byte-level split (ByteLevel with use_regex) is llama.cpp's "gpt-2"; the same after a Digits
# split into single digits is its "smollm" (regexes "\p{N}" then GPT-2's: llama-vocab.cpp).
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}


def _matches(step: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(step.get(k) == v for k, v in want.items())


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a ``tokenizer.json`` ``pre_tokenizer``; ConfigError when none matches."""
    if pre is not None and _matches(pre, _BYTE_LEVEL):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre is not None and pre.get("type") == "Sequence" else []
    if len(steps) == 2 and _matches(steps[0], _DIGITS) and _matches(steps[1], _BYTE_LEVEL):
        return "smollm"
    raise ConfigError(f"tokenizer.json pre_tokenizer {json.dumps(pre)[:200]} is not one eakd's GGUF export can "
                      "name for llama.cpp (it knows GPT-2 byte-level, optionally after single-digit splitting); "
                      "convert this model with llama.cpp's convert_hf_to_gguf.py instead")


@dataclass
class Vocab:
    """What :func:`add_vocab` writes: ``tokens``/``types`` in id order, ``merges`` as "a b" strings."""

    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special: dict[str, int]  # bos / eos / unk / pad -> id (those the tokenizer has)
    add_bos: bool
    add_eos: bool
    chat_template: str | None

    def record(self) -> dict[str, Any]:
        return {"model": "gpt2", "pre": self.pre, "tokens": len(self.tokens), "merges": len(self.merges),
                "special": self.special, "add_bos": self.add_bos, "add_eos": self.add_eos,
                "chat_template": self.chat_template is not None}


def read_vocab(folder: Path, n_vocab: int) -> Vocab:
    """The tokenizer of ``folder`` padded to ``n_vocab`` rows (the embedding's); ConfigError for what llama.cpp
    could not reproduce (not byte-level BPE, unknown pre-tokenizer, more tokens than embedding rows)."""
    import gguf

    from distill.models import load_tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"{folder} has no tokenizer.json; GGUF export needs the fast (Rust) tokenizer file "
                          "beside the weights: save the tokenizer with `tokenizer.save_pretrained(folder)`")
    spec = json.loads(path.read_text())
    model = spec.get("model", {})
    decoder = spec.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise ConfigError(f"{path}: model {model.get('type')!r} with decoder {decoder.get('type')!r}; eakd's GGUF "
                          "export writes byte-level BPE tokenizers (GPT-2 style) only; convert this model with "
                          "llama.cpp's convert_hf_to_gguf.py instead")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    types = {i: gguf.TokenType.NORMAL for i in by_id}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    if max(by_id) >= n_vocab:
        raise ConfigError(f"{path}: token id {max(by_id)} has no embedding row (vocab_size {n_vocab}); the "
                          "tokenizer does not belong to these weights")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)]  # rows no token uses: llama.cpp's padding names
    token_types = [int(types.get(i, gguf.TokenType.UNUSED)) for i in range(n_vocab)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    tok = load_tokenizer(folder)
    special = {k: getattr(tok, f"{k}_token_id") for k in ("bos", "eos", "unk", "pad")}
    special = {k: int(v) for k, v in special.items() if v is not None}
    plain, full = tok.encode("a", add_special_tokens=False), tok.encode("a")
    add_bos = "bos" in special and full[:1] == [special["bos"]] and len(full) > len(plain)
    add_eos = "eos" in special and full[-1:] == [special["eos"]] and len(full) > len(plain) + add_bos
    template = tok.chat_template if isinstance(tok.chat_template, str) else None
    return Vocab(pre, tokens, token_types, merges, special, add_bos, add_eos, template)


def add_vocab(writer: Any, vocab: Vocab) -> None:
    """Write ``vocab`` into a ``gguf.GGUFWriter`` (the ``tokenizer.ggml.*`` keys and the chat template)."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for key, token_id in vocab.special.items():
        getattr(writer, f"add_{key}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
