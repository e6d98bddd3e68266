"""Compact storage of the teacher's top-k logprobs: int32 token ids + float16 logprobs, base64 in JSON.

One generated token with its top-k alternatives costs ``6 k`` bytes raw (4-byte id, 2-byte logprob),
``8 k`` bytes once base64'd into the JSON cache and dataset — against ~``20 k`` bytes as a JSON list of
numbers. float16 keeps a logprob to within 2^-11 relative (|error| < 0.008 nats at -16, < 0.0005 at -1),
far below what matters for a KD target, and represents ``-inf``. Token ids stay int32 because current
vocabularies exceed uint16 (Llama-3: 128k, Qwen: 152k).

Packed form (a JSON object, stable across versions of this module)::

    {"format": "topk-f16/v1", "n": T, "k": k, "ids": "<base64 int32 [T, k]>", "lp": "<base64 float16 [T, k]>"}

Positions with fewer than ``k`` alternatives are padded with id ``-1`` and logprob ``-inf``.

Ids serve only a student with the teacher's tokenizer. The byte-level form ``topk-bytes/v1`` names every sampled
token and top-k alternative by its byte string (and by its id where the backend gives ids: vLLM), with each sampled
token's byte offset in the response text, so one teacher's dataset trains students of any tokenizer
(:mod:`distill.train.xtok_align`). Per row it keeps a table of the distinct byte strings; positions hold uint16 indices
into it (int32 past 65,534 strings) and float16 logprobs; all arrays are concatenated, zstd-compressed and base64'd::

    {"format": "topk-bytes/v1", "n": T, "k": k, "codec": "zstd", "layout": [[name, dtype, shape], ...],
     "data": "<base64 zstd(str_len, str_special, str_bytes, tok, tok_lp, off, alt, lp[, ids, tok_ids])>"}

:func:`unpack_topk` reads the ids and logprobs of either form, bit-identical to ``topk-f16/v1`` (same padding,
same float16), so the same-tokenizer KD path does not care which one a dataset holds. Sizes for top-20 are
measured in ``bench/xtok_storage.py``. Hand-written rather than Arrow/msgpack: one JSON string per row keeps
the dataset and the response cache schema unchanged, and the table/index split is what makes strings cheap.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FORMAT = "topk-f16/v1"


def pack_topk(ids: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]]) -> dict:
    """Per-position top-k ``ids`` / ``logprobs`` (best first, ragged allowed) -> the packed JSON object."""
    if len(ids) != len(logprobs):
        raise ValueError(f"pack_topk: {len(ids)} id rows but {len(logprobs)} logprob rows")
    n = len(ids)
    k = max((len(row) for row in ids), default=0)
    id_arr = np.full((n, k), -1, dtype="<i4")
    lp_arr = np.full((n, k), -np.inf, dtype="<f2")
    for t, (row_ids, row_lps) in enumerate(zip(ids, logprobs)):
        if len(row_ids) != len(row_lps):
            raise ValueError(f"pack_topk: position {t} has {len(row_ids)} ids but {len(row_lps)} logprobs")
        id_arr[t, : len(row_ids)] = row_ids
        lp_arr[t, : len(row_lps)] = row_lps
    return {"format": FORMAT, "n": n, "k": k, "ids": base64.b64encode(id_arr.tobytes()).decode(),
            "lp": base64.b64encode(lp_arr.tobytes()).decode()}


def unpack_topk(packed: dict) -> tuple[np.ndarray, np.ndarray]:
    """The packed object -> ``(ids int32 [T, k], logprobs float32 [T, k])``; padding is id -1, logprob -inf.
    Reads ``topk-f16/v1`` and a ``topk-bytes/v1`` object that carries ids (see :func:`is_packed`)."""
    if is_byte_level(packed) and is_packed(packed):
        row = unpack_topk_bytes(packed)
        return row.ids, row.alt_logprob
    if not isinstance(packed, dict) or packed.get("format") != FORMAT:
        got = packed.get("format") if isinstance(packed, dict) else type(packed).__name__
        raise ValueError(f"teacher logprobs are in format {got!r}, expected {FORMAT!r}; regenerate the dataset "
                         "with this version of eakd")
    n, k = int(packed["n"]), int(packed["k"])
    ids = np.frombuffer(base64.b64decode(packed["ids"]), dtype="<i4").reshape(n, k)
    lps = np.frombuffer(base64.b64decode(packed["lp"]), dtype="<f2").reshape(n, k).astype(np.float32)
    return ids, lps


def is_packed(value: object) -> bool:
    """True when :func:`unpack_topk` can read ``value``: the teacher's token ids are there (what same-tokenizer
    KD needs) — ``topk-f16/v1``, or ``topk-bytes/v1`` from a backend that gave ids."""
    return isinstance(value, dict) and (value.get("format") == FORMAT or (
        value.get("format") == BYTES_FORMAT and any(name == "ids" for name, *_ in value.get("layout", []))))


# ------------------------------------------------------------------ byte-level form (any tokenizer)

BYTES_FORMAT = "topk-bytes/v1"
_PAD = -1


class SpecialToken(bytes):
    """A token that is not text (an added/special token such as ``<|im_end|>``): its bytes are its literal
    name, it occupies no bytes of the response text, and it only matches a special token of the same name."""


def vocab_strings(tokenizer) -> list[bytes]:
    """Per token id, its bytes (GPT-2 byte-level BPE through the byte decoder; SentencePiece ``▁``/``<0xHH>``);
    added/special tokens as :class:`~distill.logprobs.SpecialToken` of their literal name."""
    from distill.transplant import token_bytes

    names = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    pieces = token_bytes(tokenizer)
    return [SpecialToken(names[i].encode()) if i in names else (b if b is not None else SpecialToken(b""))
            for i, b in enumerate(pieces)]


@dataclass
class ByteTopK:
    """One completion's teacher logprobs by byte strings (``T`` generated tokens, ``k`` alternatives each).

    ``strings`` is the row's table of distinct tokens (``SpecialToken`` for added tokens); every other field
    indexes it. ``offsets[t]`` is the byte offset of sampled token ``t`` in the response text (UTF-8);
    a special token sits where it was generated and spans no bytes. ``ids``/``token_ids`` are the teacher's
    own ids where the backend gave them (vLLM), else None.
    """

    strings: list[bytes]
    token: np.ndarray             # int32 [T]: table index of the sampled token
    token_logprob: np.ndarray     # float32 [T]: the teacher's logprob of the sampled token
    offsets: np.ndarray           # int32 [T]: byte offset of the sampled token in the response text
    alt: np.ndarray               # int32 [T, k]: table indices of the top-k, best first; -1 = padding
    alt_logprob: np.ndarray       # float32 [T, k]: their logprobs; -inf = padding
    ids: np.ndarray | None = None        # int32 [T, k]: the top-k's teacher ids (-1 = padding)
    token_ids: np.ndarray | None = None  # int32 [T]: the sampled tokens' teacher ids

    def token_bytes(self, t: int) -> bytes:
        return self.strings[int(self.token[t])]


def pack_topk_bytes(tokens: Sequence[bytes], token_logprobs: Sequence[float],
                    alternatives: Sequence[Sequence[bytes]], alt_logprobs: Sequence[Sequence[float]], *,
                    ids: Sequence[Sequence[int]] | None = None, token_ids: Sequence[int] | None = None,
                    codec: str | None = "zstd") -> dict:
    """Sampled ``tokens`` (bytes; :class:`SpecialToken` for added tokens) with their logprobs, and per position
    the top-k ``alternatives`` / ``alt_logprobs`` (best first, ragged allowed), optionally the teacher's
    ``ids`` / ``token_ids`` -> the packed JSON object. Offsets are the running byte length of the sampled text
    tokens. ``codec``: "zstd" (default; ``zstandard`` is a dependency), "zlib" or None (raw)."""
    n = len(tokens)
    if not (len(token_logprobs) == len(alternatives) == len(alt_logprobs) == n):
        raise ValueError(f"pack_topk_bytes: {n} tokens, {len(token_logprobs)} token logprobs, "
                         f"{len(alternatives)} alternative rows, {len(alt_logprobs)} logprob rows; all must match")
    table: dict[tuple[bool, bytes], int] = {}

    def index(s: bytes) -> int:
        return table.setdefault((isinstance(s, SpecialToken), bytes(s)), len(table))

    k = max((len(row) for row in alternatives), default=0)
    alt = np.full((n, k), _PAD, dtype="<i4")
    alt_lp = np.full((n, k), -np.inf, dtype="<f2")
    for t, (row, row_lp) in enumerate(zip(alternatives, alt_logprobs)):
        if len(row) != len(row_lp):
            raise ValueError(f"pack_topk_bytes: position {t} has {len(row)} alternatives but {len(row_lp)} logprobs")
        alt[t, : len(row)] = [index(s) for s in row]
        alt_lp[t, : len(row)] = row_lp
    tok = np.array([index(s) for s in tokens], dtype="<i4")
    lengths = [0 if isinstance(s, SpecialToken) else len(s) for s in tokens]
    offsets = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]).astype("<i4") if n else np.zeros(0, "<i4")
    strings = [s for _, s in table]
    arrays = {"str_len": np.array([len(s) for s in strings], dtype="<i4"),
              "str_special": np.array([sp for sp, _ in table], dtype="u1"),
              "str_bytes": np.frombuffer(b"".join(strings), dtype="u1"),
              "tok": tok, "tok_lp": np.asarray(token_logprobs, dtype="<f2"), "off": offsets,
              "alt": _narrow(alt, len(table)), "lp": alt_lp}
    if ids is not None:
        id_arr = np.full((n, k), _PAD, dtype="<i4")
        for t, row in enumerate(ids):
            id_arr[t, : len(row)] = row
        arrays["ids"] = id_arr
    if token_ids is not None:
        arrays["tok_ids"] = np.asarray(token_ids, dtype="<i4")
    arrays["tok"] = _narrow(tok, len(table))
    blob, layout = b"", []
    for name, arr in arrays.items():
        layout.append([name, arr.dtype.str, list(arr.shape)])
        blob += np.ascontiguousarray(arr).tobytes()
    return {"format": BYTES_FORMAT, "n": n, "k": k, "codec": codec or "none", "layout": layout,
            "data": base64.b64encode(_compress(blob, codec)).decode()}


def unpack_topk_bytes(packed: dict) -> ByteTopK:
    """The packed byte-level object -> :class:`ByteTopK` (logprobs widened to float32)."""
    if not is_byte_level(packed):
        got = packed.get("format") if isinstance(packed, dict) else type(packed).__name__
        raise ValueError(f"teacher logprobs are in format {got!r}, not {BYTES_FORMAT!r} (byte strings); "
                         "regenerate the dataset with this version of eakd and generate.sampling.top_logprobs=K")
    blob = _decompress(base64.b64decode(packed["data"]), packed.get("codec", "none"))
    arrays, pos = {}, 0
    for name, dtype, shape in packed["layout"]:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        arrays[name] = np.frombuffer(blob[pos: pos + size], dtype=dtype).reshape(shape)
        pos += size
    raw, ends = arrays["str_bytes"].tobytes(), np.cumsum(arrays["str_len"])
    strings = [(SpecialToken if sp else bytes)(raw[e - ln: e])
               for e, ln, sp in zip(ends.tolist(), arrays["str_len"].tolist(), arrays["str_special"].tolist())]
    alt = arrays["alt"].astype(np.int32)
    alt[arrays["alt"] == _pad_value(arrays["alt"].dtype)] = _PAD
    return ByteTopK(strings=strings, token=arrays["tok"].astype(np.int32),
                    token_logprob=arrays["tok_lp"].astype(np.float32), offsets=arrays["off"].astype(np.int32),
                    alt=alt, alt_logprob=arrays["lp"].astype(np.float32),
                    ids=arrays["ids"].astype(np.int32) if "ids" in arrays else None,
                    token_ids=arrays["tok_ids"].astype(np.int32) if "tok_ids" in arrays else None)


def is_byte_level(value: object) -> bool:
    return isinstance(value, dict) and value.get("format") == BYTES_FORMAT


def _narrow(arr: np.ndarray, table_size: int) -> np.ndarray:
    """Table indices as uint16 when the table allows (padding = 0xFFFF), else int32 (padding = -1)."""
    if table_size < 0xFFFF:
        return np.where(arr < 0, 0xFFFF, arr).astype("<u2")
    return arr.astype("<i4")


def _pad_value(dtype: np.dtype) -> int:
    return 0xFFFF if np.dtype(dtype) == np.dtype("<u2") else _PAD


def _compress(blob: bytes, codec: str | None) -> bytes:
    if codec in (None, "none"):
        return blob
    if codec == "zlib":
        return zlib.compress(blob, 9)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=19).compress(blob)
    raise ValueError(f"unknown logprobs codec {codec!r}; expected 'zstd', 'zlib' or None")


def _decompress(blob: bytes, codec: str) -> bytes:
    if codec == "none":
        return blob
    if codec == "zlib":
        return zlib.decompress(blob)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(blob)
    raise ValueError(f"teacher logprobs use codec {codec!r}, which this version of eakd cannot read; regenerate")


def _token_id(token: str) -> int | None:
    """vLLM's server names tokens ``token_id:123`` when asked to (``return_tokens_as_token_ids``)."""
    return int(token[9:]) if token.startswith("token_id:") and token[9:].isdigit() else None


def pack_openai_logprobs(content: Sequence[dict], codec: str | None = "zstd") -> dict:
    """An OpenAI-compatible chat answer's ``logprobs.content`` (plain dicts: ``token``, ``bytes``, ``logprob``,
    ``top_logprobs``) -> the packed byte-level object. ``bytes`` is exact where the server sends it (it does for
    tokens that split a UTF-8 character); else the token string's UTF-8. Ids are kept when every token came as
    ``token_id:N``."""
    def raw(entry: dict) -> bytes:
        b = entry.get("bytes")
        return bytes(b) if b is not None else (entry.get("token") or "").encode()

    tokens = [raw(pos) for pos in content]
    alts = [[raw(t) for t in pos.get("top_logprobs") or []] for pos in content]
    alt_lps = [[float(t["logprob"]) for t in pos.get("top_logprobs") or []] for pos in content]
    ids = [[_token_id(t.get("token") or "") for t in pos.get("top_logprobs") or []] for pos in content]
    token_ids = [_token_id(pos.get("token") or "") for pos in content]
    with_ids = bool(content) and all(i is not None for i in token_ids) and all(i is not None for r in ids for i in r)
    return pack_topk_bytes(tokens, [float(pos["logprob"]) for pos in content], alts, alt_lps,
                           ids=ids if with_ids else None, token_ids=token_ids if with_ids else None, codec=codec)
