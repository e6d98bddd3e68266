"""Tokenizer transplant: a causal LM moved onto another tokenizer, offline; and a byte-level BPE trained on local text.

A student with another vocabulary than its teacher is made here, not downloaded. :func:`transplant_model` keeps
every layer of the old model and rebuilds only the token embedding (and the LM head when it is not tied to it):

- a new token whose bytes are byte-identical to an old token copies that row exactly;
- a special token maps by role (bos/eos/pad/unk) where both tokenizers have that role, else by identical content
  (chat markers such as ``<|im_start|>``);
- any other token gets the **mean of the old embeddings of the old tokenization of its text** — the Fast
  Vocabulary Transfer heuristic (Gee et al. 2022, "Fast Vocabulary Transfer for Language Model Compression"),
  also mergekit-tokensurgeon's subword-mean approximation. With a byte-level old tokenizer the token's exact bytes
  are tokenized (so partial UTF-8 tokens map too); otherwise its decoded text;
- a token with nothing to average (an empty string, an unmatched special token) gets the mean of all old rows
  ("fallback").

The counts of each kind are written to ``transplant.json`` in the output folder. Only that mapping is hand-written:
loading, resizing and saving are transformers', the averaging is ``torch.nn.functional.embedding_bag``.
:func:`train_tokenizer` trains the BPE with ``tokenizers`` and adds the old model's special tokens first.

Run: ``eakd models train-tokenizer --vocab 16000 --out tok/`` then ``eakd models transplant --tokenizer tok/ --out m/``.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from distill.config import ConfigError
from distill.io import publish_dir
from distill.models import load_causal_lm, load_tokenizer, resolve_model_path
from distill.provenance import code_version
from distill.transplant_config import TokenizerTrainConfig, TransplantConfig, check_empty_out, default_training_text

log = logging.getLogger(__name__)

ROLES = ("bos", "eos", "pad", "unk")  # special-token roles mapped old -> new where both tokenizers define them
METHOD = "mean of the old embeddings of the token's old tokenization (Fast Vocabulary Transfer, Gee et al. 2022)"


# --- the mapping (pure Python over two tokenizers) ------------------------------------------------------------------

def is_byte_level(tokenizer: Any) -> bool:
    """True when the fast tokenizer's decoder is (or contains) ByteLevel: its vocab strings are GPT-2 byte codes."""
    dec = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    parts = dec.get("decoders", [dec]) if dec.get("type") == "Sequence" else [dec]
    return any(p.get("type") == "ByteLevel" for p in parts)


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """Per id, the bytes the token stands for; None for added/special tokens (they match by content or role)."""
    added = set(tokenizer.added_tokens_decoder)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if is_byte_level(tokenizer):
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        decode = {c: b for b, c in bytes_to_unicode().items()}
        return [None if i in added or p is None else bytes(decode[c] for c in p if c in decode)
                for i, p in enumerate(pieces)]
    out: list[bytes | None] = []
    for i, p in enumerate(pieces):  # SentencePiece style: '▁' is a space, <0xHH> a byte-fallback token
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", p or "")
        out.append(None if i in added or p is None else bytes([int(m.group(1), 16)]) if m else p.replace("▁", " ").encode())
    return out


def _old_pieces(old_tok: Any, data: bytes, byte_level: bool) -> list[int]:
    """The old tokenization of ``data``: its exact bytes with a byte-level BPE, else its decoded text."""
    if byte_level:
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        table = bytes_to_unicode()
        return [t.id for t in old_tok.backend_tokenizer.model.tokenize("".join(table[b] for b in data))]
    return old_tok.encode(data.decode("utf-8", errors="replace"), add_special_tokens=False)


def map_vocabulary(old_tok: Any, new_tok: Any) -> tuple[list[list[int]], list[str], dict[str, Any]]:
    """For each new id, the old ids whose embeddings it averages, and its kind (exact/special/averaged/fallback).

    Returns ``(sources, kinds, roles)``: ``sources[j]`` is a list of old ids (one id: an exact copy; empty: the
    fallback), ``kinds[j]`` names the rule used, ``roles`` the special-token role mapping that was applied."""
    old_bytes = token_bytes(old_tok)
    by_bytes = {b: i for i, b in enumerate(old_bytes) if b is not None}
    old_added = {t.content: i for i, t in old_tok.added_tokens_decoder.items()}
    byte_level = is_byte_level(old_tok)
    roles: dict[str, Any] = {}
    by_role: dict[int, int] = {}
    for role in ROLES:
        new_id, old_id = getattr(new_tok, f"{role}_token_id", None), getattr(old_tok, f"{role}_token_id", None)
        if new_id is not None and old_id is not None and new_id not in by_role:
            by_role[new_id] = old_id
            roles[role] = {"new": getattr(new_tok, f"{role}_token"), "old": getattr(old_tok, f"{role}_token")}
    new_added = new_tok.added_tokens_decoder
    sources: list[list[int]] = []
    kinds: list[str] = []
    for j, b in enumerate(token_bytes(new_tok)):
        if j in by_role:
            src, kind = [by_role[j]], "special"
        elif j in new_added and new_added[j].content in old_added:
            src, kind = [old_added[new_added[j].content]], "special"
        elif b is not None and b in by_bytes:
            src, kind = [by_bytes[b]], "exact"
        else:
            data = b if b is not None else new_added[j].content.encode() if j in new_added else b""
            src = _old_pieces(old_tok, data, byte_level) if data else []
            kind = "averaged" if src else "fallback"
        sources.append(src)
        kinds.append(kind)
    return sources, kinds, roles


# --- the embedding init (pure tensor function) ----------------------------------------------------------------------

def init_embeddings(old, sources: list[list[int]]):
    """New embedding rows as means of old rows.

    old: [V_old, H] (any float dtype); sources: V_new lists of old ids. Returns [V_new, H] in ``old.dtype``:
    row j = mean(old[sources[j]]) computed in float32 (a one-id list copies its row exactly), and an empty list
    gets the mean of all old rows.
    """
    import torch
    import torch.nn.functional as F

    lengths = torch.tensor([len(s) for s in sources], dtype=torch.long)
    flat = torch.tensor([i for s in sources for i in s], dtype=torch.long)
    offsets = torch.cumsum(lengths, 0) - lengths
    w = old.detach().float()
    new = F.embedding_bag(flat, w, offsets, mode="mean")
    new[lengths == 0] = w.mean(0)
    return new.to(old.dtype)


# --- the stages -----------------------------------------------------------------------------------------------------

def load_new_tokenizer(path: Path) -> Any:
    """The new tokenizer, or a ConfigError naming the folder and the fix (missing, not a folder, unreadable)."""
    if not path.is_dir():
        raise ConfigError(f"tokenizer folder {path} does not exist; point --tokenizer at a Hugging Face tokenizer folder "
                          "(tokenizer.json, tokenizer_config.json), e.g. one from `eakd models train-tokenizer`")
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(f"{path} has no tokenizer.json; transplant needs a fast (tokenizers) tokenizer folder — "
                          "save one with `tokenizer.save_pretrained(DIR)` or build it with `eakd models train-tokenizer`")
    try:
        return load_tokenizer(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's broken folder
        raise ConfigError(f"tokenizer folder {path} could not be loaded ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); re-save it or rebuild it with "
                          "`eakd models train-tokenizer`") from None


def _saved_dtype(model_dir: Path) -> str:
    cfg = json.loads((model_dir / "config.json").read_text())
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def transplant_model(cfg: TransplantConfig) -> Path:
    """Write ``cfg.out``: the old model's layers with embeddings for ``cfg.tokenizer``, the new tokenizer, a chat
    template, and ``transplant.json`` (mapping stats). Checks every input before loading weights; publishes atomically."""
    out = cfg.out.expanduser()
    check_empty_out(out, "transplant")
    new_tok = load_new_tokenizer(cfg.tokenizer.expanduser())
    model_dir = resolve_model_path(cfg.model)  # ConfigError for a missing folder or pickled weights
    old_tok = load_tokenizer(model_dir)

    log.info("mapping %d new tokens onto %d old ones", len(new_tok), len(old_tok))
    sources, kinds, roles = map_vocabulary(old_tok, new_tok)
    model = load_causal_lm(model_dir, dtype=_saved_dtype(model_dir))
    emb_in, emb_out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = emb_out is not None and emb_out.weight.data_ptr() == emb_in.weight.data_ptr()
    new_in = init_embeddings(emb_in.weight, sources)
    new_out = None if tied or emb_out is None else init_embeddings(emb_out.weight, sources)
    model.resize_token_embeddings(len(new_tok), mean_resizing=False)
    model.get_input_embeddings().weight.data.copy_(new_in)
    if new_out is not None:
        model.get_output_embeddings().weight.data.copy_(new_out)
    for role in ("bos", "eos", "pad", "unk"):
        tid = getattr(new_tok, f"{role}_token_id", None)
        setattr(model.config, f"{role}_token_id", tid)
        if role != "unk" and model.generation_config is not None:
            setattr(model.generation_config, f"{role}_token_id", tid)

    if not new_tok.chat_template and old_tok.chat_template:
        new_tok.chat_template = old_tok.chat_template
        log.info("the new tokenizer has no chat template: copied the old model's (%s)", model_dir)
    missing = [t for t in old_tok.all_special_tokens
               if t in (new_tok.chat_template or "") and len(new_tok.encode(t, add_special_tokens=False)) != 1]
    if missing:
        log.warning("chat-template markers %s are not single tokens in the new tokenizer; add them as special tokens",
                    missing)

    counts = Counter(kinds)
    stats = {"exact": counts["exact"], "special": counts["special"], "averaged": counts["averaged"],
             "fallback": counts["fallback"], "new_vocab": len(new_tok), "old_vocab": len(old_tok),
             "mean_pieces_averaged": round(sum(len(s) for s, k in zip(sources, kinds) if k == "averaged")
                                           / max(counts["averaged"], 1), 3)}
    record = {"method": METHOD, "stats": stats, "roles": roles, "tied_embeddings": tied,
              "fallback_tokens": [new_tok.convert_ids_to_tokens(j) for j, k in enumerate(kinds) if k == "fallback"][:20],
              "config": cfg.model_dump(mode="json"), "model_dir": str(model_dir), "code_version": code_version()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        staged = Path(tmp) / "model"
        model.save_pretrained(staged, safe_serialization=True)
        new_tok.save_pretrained(staged)
        (staged / "transplant.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()  # empty (checked above): publish_dir renames into place
        publish_dir(staged, out)
    log.info("transplanted %s -> %s: %s", model_dir, out, stats)
    return out


def train_tokenizer(cfg: TokenizerTrainConfig) -> Path:
    """Train a byte-level BPE on ``cfg.text`` (default WikiText-2 valid) with the old model's special tokens first
    (same ids where the old tokenizer has them first) and its bos/eos/pad/unk roles and chat template; returns ``cfg.out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = cfg.out.expanduser()
    check_empty_out(out, "train-tokenizer")
    files = [p.expanduser() for p in cfg.text] or default_training_text()
    for f in files:
        if not f.is_file():
            raise ConfigError(f"tokenizer training text {f} does not exist; pass --text with readable text files")
    old_tok = load_tokenizer(resolve_model_path(cfg.model))
    specials = [t.content for _, t in sorted(old_tok.added_tokens_decoder.items())]
    specials += [t for t in old_tok.all_special_tokens if t not in specials]

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab, min_frequency=cfg.min_frequency, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True)
    log.info("training a %d-token byte-level BPE on %s", cfg.vocab, ", ".join(map(str, files)))
    tk.train([str(f) for f in files], trainer)
    roles = {f"{r}_token": getattr(old_tok, f"{r}_token") for r in ROLES if getattr(old_tok, f"{r}_token", None)}
    new_tok = PreTrainedTokenizerFast(tokenizer_object=tk, **roles)
    new_tok.chat_template = old_tok.chat_template
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        staged = Path(tmp) / "tokenizer"
        new_tok.save_pretrained(staged)
        (staged / "train_tokenizer.json").write_text(json.dumps(
            {"config": cfg.model_dump(mode="json"), "text": [str(f) for f in files], "vocab": len(new_tok),
             "special_tokens": specials, "code_version": code_version()}, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()
        publish_dir(staged, out)
    log.info("tokenizer with %d tokens -> %s", len(new_tok), out)
    return out
