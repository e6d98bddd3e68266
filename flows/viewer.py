"""``eakd view DATASET_DIR``: browse a generated dataset in the browser; the data never leaves the machine.

Why hand-written: hosted viewers (the Hub's dataset viewer, Argilla or Label Studio clouds) need the
data uploaded, and teacher outputs may hold private prompts or licensed seeds; the open-source
``datasets-server`` needs a database and workers. This is the standard library's ThreadingHTTPServer
plus pyarrow over the memory-mapped Arrow files that ``save_to_disk`` wrote.

:func:`open_dataset` maps every split (rows never all become Python dicts) and indexes each once:
style, removal-reason category (``removed_reason`` before its first ``:``), quality flags, teacher
token counts and a lower-cased search text (id, last user message, raw output, answer, gold). Queries
filter those with numpy / pyarrow compute and convert only the page asked for. :func:`make_server`
serves ``GET /`` (flows/viewer.html: inline JS + CSS, no network), ``GET /api/meta`` (splits, counts
per style / reason / flag, stats.json's summary) and ``GET /api/rows?split=&style=&flag=&reason=&q=
&offset=&limit=`` (limit capped at 200).

Security: binds 127.0.0.1 only (no host option); refuses a ``Host`` other than 127.0.0.1/localhost
(DNS rebinding); three fixed routes and no file serving, so no path traversal; ``no-store``,
``nosniff`` and a CSP allowing only the page's own inline script and style (by hash) and
``connect-src 'self'``; the page builds the DOM with textContent, so HTML in teacher output is shown,
never run. Teacher logprobs and token ids are never sent, only the token count.

Run: ``eakd view runs/<run-id>/dataset [--port 0]``.
"""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distill.config import ConfigError

log = logging.getLogger(__name__)

HTML_PATH = Path(__file__).with_name("viewer.html")
SPLIT_ORDER = ("train", "validation", "removed")  # shown first, in this order; other splits follow
MAX_LIMIT = 200  # rows per page at most: a page of ICL prompts is already a few hundred KB
MAX_QUERY_CHARS = 500
DEFAULT_JUDGE_MIN = 3  # generate.filters.judge.min_score's default, when stats.json does not say
FLAGS = {  # flag name -> what it selects (the UI shows these descriptions)
    "gold_match": "answer matches gold",
    "gold_mismatch": "answer differs from gold",
    "no_gold": "no gold answer to compare",
    "no_answer": "no answer extracted",
    "truncated": "teacher hit max_tokens (finish_reason=length)",
    "voted": "self-consistency vote recorded",
    "judged": "judge score present",
    "judged_low": "judge score below the filter's min_score",
}
DISPLAY_COLUMNS = ("id", "seed_id", "style", "prompt_messages", "raw_output", "rationale", "answer", "gold",
                   "quality", "removed_reason", "demo_ids", "teacher")  # never teacher_logprobs / token ids
PARAMS = ("split", "style", "flag", "reason", "q", "offset", "limit")


@dataclass
class SplitIndex:
    """One split: its display columns (memory-mapped) and the small per-row arrays queries filter on."""

    table: pa.Table
    rows: int
    style: np.ndarray  # int32 code into style_labels, -1 = none
    style_labels: list[str]
    reason: np.ndarray  # int32 code into reason_labels, -1 = kept row
    reason_labels: list[str]
    gold: np.ndarray  # int8: 1 match, 0 mismatch, -1 no gold
    truncated: np.ndarray  # bool
    no_answer: np.ndarray  # bool
    vote: np.ndarray  # float64 vote_share, nan = none
    judge: np.ndarray  # float64 judge_score, nan = none
    tokens: np.ndarray  # int64 teacher completion tokens, -1 = unknown
    search: pa.ChunkedArray  # lower-cased text searched by ``q``


def _column(table: pa.Table, name: str) -> pa.ChunkedArray | None:
    return table.column(name) if name in table.column_names else None


def _field(col: pa.ChunkedArray | None, name: str) -> pa.ChunkedArray | None:
    """A struct column's field, or None when the column or the key is absent."""
    if col is None or not pa.types.is_struct(col.type) or col.type.get_field_index(name) < 0:
        return None
    return pc.struct_field(col, name)


def _text(col: pa.ChunkedArray | pa.Array | None, n: int) -> pa.ChunkedArray | pa.Array:
    if col is None:
        return pa.nulls(n, pa.string())
    return col if pa.types.is_string(col.type) else pc.cast(col, pa.string())


def _codes(col: pa.ChunkedArray | None, n: int) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes (-1 for null) and labels of a short string column."""
    if col is None:
        return np.full(n, -1, np.int32), []
    text = _text(col, n)
    enc = pc.dictionary_encode(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text)
    return pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32), enc.dictionary.to_pylist()


def _floats(col: pa.ChunkedArray | None, n: int) -> np.ndarray:
    if col is None:
        return np.full(n, np.nan)
    return pc.cast(col, pa.float64(), safe=False).to_numpy().astype(np.float64)  # nulls -> nan


def _last_user(col: pa.ChunkedArray | None, n: int) -> pa.Array:
    """The content of each row's last ``user`` message (null when there is none)."""
    t = col.type if col is not None else None
    if t is None or not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type) \
            or t.value_type.get_field_index("role") < 0 or t.value_type.get_field_index("content") < 0:
        return pa.nulls(n, pa.string())
    pieces = []
    for chunk in col.chunks:
        flat = chunk.flatten()
        parents = pc.list_parent_indices(chunk).to_numpy()
        user = np.nonzero(pc.fill_null(pc.equal(flat.field("role"), "user"), False).to_numpy(zero_copy_only=False))[0]
        pick = np.full(len(chunk), -1, np.int64)
        rev = user[::-1]  # np.unique keeps the first of each parent: reversed, that is the last user message
        uniq, first = np.unique(parents[rev], return_index=True)
        pick[uniq] = rev[first]
        pieces.append(_text(flat.field("content"), 0).take(pa.array(pick, mask=pick < 0)))
    return pa.concat_arrays(pieces) if pieces else pa.nulls(0, pa.string())


def index_split(table: pa.Table) -> SplitIndex:
    """Build one split's index columns from its (memory-mapped) Arrow table."""
    n = table.num_rows
    quality = _column(table, "quality")
    style, style_labels = _codes(_column(table, "style"), n)
    reasons = _column(table, "removed_reason")
    category = None if reasons is None else pc.utf8_trim_whitespace(
        pc.list_element(pc.split_pattern(_text(reasons, n), ":", max_splits=1), 0))
    reason, reason_labels = _codes(category, n)
    gm = _field(quality, "gold_match")
    gold = np.full(n, -1, np.int8) if gm is None else \
        pc.fill_null(pc.cast(gm, pa.int8()), -1).to_numpy(zero_copy_only=False).astype(np.int8)
    finish = _field(quality, "finish_reason")
    truncated = np.zeros(n, bool) if finish is None else \
        pc.fill_null(pc.equal(_text(finish, n), "length"), False).to_numpy(zero_copy_only=False)
    answer = _text(_column(table, "answer"), n)
    no_answer = pc.fill_null(pc.equal(answer, ""), True).to_numpy(zero_copy_only=False)
    ids = _column(table, "teacher_token_ids")
    counted = _field(quality, "completion_tokens")
    # an all-null column (the openai backend gives no token ids) is stored with Arrow's null type
    tokens = pa.nulls(n, pa.int64()) if ids is None or pa.types.is_null(ids.type) else \
        pc.cast(pc.list_value_length(ids), pa.int64())
    if counted is not None:
        tokens = pc.coalesce(tokens, pc.cast(counted, pa.int64(), safe=False))
    parts = [_text(_column(table, "id"), n), _last_user(_column(table, "prompt_messages"), n),
             _text(_column(table, "raw_output"), n), answer, _text(_column(table, "gold"), n)]
    search = pc.utf8_lower(pc.binary_join_element_wise(*parts, "\n", null_handling="replace", null_replacement=""))
    judge = _floats(_field(quality, "judge_score"), n)
    return SplitIndex(
        table=table.select([c for c in DISPLAY_COLUMNS if c in table.column_names]), rows=n,
        style=style, style_labels=style_labels, reason=reason, reason_labels=reason_labels, gold=gold,
        truncated=np.asarray(truncated, bool), no_answer=np.asarray(no_answer, bool),
        vote=_floats(_field(quality, "vote_share"), n), judge=judge,
        tokens=pc.fill_null(tokens, -1).to_numpy(zero_copy_only=False).astype(np.int64),
        search=search if isinstance(search, pa.ChunkedArray) else pa.chunked_array([search]))


def flag_mask(si: SplitIndex, flag: str, judge_min: float) -> np.ndarray:
    """Rows of ``si`` that have ``flag`` (one of :data:`FLAGS`)."""
    masks = {"gold_match": lambda: si.gold == 1, "gold_mismatch": lambda: si.gold == 0,
             "no_gold": lambda: si.gold == -1, "no_answer": lambda: si.no_answer,
             "truncated": lambda: si.truncated, "voted": lambda: ~np.isnan(si.vote),
             "judged": lambda: ~np.isnan(si.judge), "judged_low": lambda: si.judge < judge_min}  # nan < x is False
    return masks[flag]()


def _counts(codes: np.ndarray, labels: list[str]) -> dict[str, int]:
    counts = np.bincount(codes[codes >= 0], minlength=len(labels))
    return {label: int(c) for label, c in sorted(zip(labels, counts), key=lambda lc: (-lc[1], lc[0])) if c}


def _display(row: dict, tokens: int) -> dict:
    """The JSON a page row becomes: everything the UI shows, nothing heavy."""
    teacher = row.get("teacher") or {}
    params = teacher.get("params")
    try:
        params = json.loads(params) if isinstance(params, str) and params else params
    except ValueError:
        pass  # shown as the raw string
    return {"id": row.get("id"), "seed_id": row.get("seed_id"), "style": row.get("style"),
            "prompt_messages": row.get("prompt_messages") or [], "raw_output": row.get("raw_output"),
            "rationale": row.get("rationale"), "answer": row.get("answer"), "gold": row.get("gold"),
            "quality": row.get("quality") or {}, "removed_reason": row.get("removed_reason"),
            "demo_ids": row.get("demo_ids") or [],
            "teacher": {k: teacher.get(k) for k in ("model", "engine", "template", "template_sha")} | {"params": params},
            "teacher_tokens": None if tokens < 0 else int(tokens)}


class DatasetIndex:
    """A saved eakd dataset, memory-mapped, with per-split index columns; see :func:`open_dataset`."""

    def __init__(self, path: Path, splits: dict[str, SplitIndex], stats: dict | None):
        self.path, self.splits, self.stats = path, splits, stats
        judge = (stats or {}).get("judge") or {}
        self.judge_min = float(judge.get("min_score") or DEFAULT_JUDGE_MIN)
        self._matches = functools.lru_cache(maxsize=16)(self._compute_matches)  # pages of one search reuse it

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}" if self.path.name == "dataset" else self.path.name

    def meta(self) -> dict:
        """Splits with row counts and counts per style, reason category and flag; stats.json's summary."""
        splits = {}
        for name, si in self.splits.items():
            splits[name] = {"rows": si.rows, "styles": _counts(si.style, si.style_labels),
                            "reasons": _counts(si.reason, si.reason_labels),
                            "flags": {f: int(flag_mask(si, f, self.judge_min).sum()) for f in FLAGS}}
        stats = None
        if self.stats is not None:
            stats = {k: self.stats.get(k) for k in ("rows", "removed_by_reason", "gold_match_rate", "created",
                                                     "eakd_version")}
        return {"name": self.name, "path": str(self.path), "splits": splits, "flags": FLAGS,
                "judge_min_score": self.judge_min, "max_limit": MAX_LIMIT, "stats": stats}

    def query(self, split: str, style: str | None = None, flag: str | None = None, reason: str | None = None,
              q: str | None = None, offset: int = 0, limit: int = 50) -> dict:
        """One page of ``split``'s rows matching every given filter, as display dicts.

        ``style``/``reason``: exact style / reason category; ``flag``: one of :data:`FLAGS`; ``q``: a
        case-insensitive substring of id, last user message, raw output, answer or gold. ``limit`` is
        capped at :data:`MAX_LIMIT`. Raises ValueError for an unknown split or flag or a bad number.
        """
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; this dataset has {', '.join(self.splits) or 'no splits'}")
        if flag and flag not in FLAGS:
            raise ValueError(f"unknown flag {flag!r}; use one of {', '.join(FLAGS)}")
        for key, value in (("offset", offset), ("limit", limit)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
        if q and len(q) > MAX_QUERY_CHARS:
            raise ValueError(f"q is {len(q)} characters; at most {MAX_QUERY_CHARS}")
        limit = min(limit, MAX_LIMIT)
        hits = self._matches(split, style or None, flag or None, reason or None, q.lower() if q else None)
        si, page = self.splits[split], hits[offset:offset + limit]
        rows = si.table.take(pa.array(page, pa.int64())).to_pylist() if len(page) else []
        return {"total": len(hits), "offset": offset, "limit": limit,
                "rows": [_display(r, si.tokens[i]) for r, i in zip(rows, page)]}

    def _compute_matches(self, split: str, style: str | None, flag: str | None, reason: str | None,
                         q: str | None) -> np.ndarray:
        si = self.splits[split]
        mask = np.ones(si.rows, bool)
        if style is not None:
            mask &= si.style == (si.style_labels.index(style) if style in si.style_labels else -2)
        if reason is not None:
            mask &= si.reason == (si.reason_labels.index(reason) if reason in si.reason_labels else -2)
        if flag is not None:
            mask &= flag_mask(si, flag, self.judge_min)
        if q is not None and mask.any():
            # the text and q are lower-cased already; ignore_case only picks Arrow's RE2 path, ~4x faster than
            # its plain substring search at 100k rows (bench/viewer_scale.py)
            mask &= pc.match_substring(si.search, q, ignore_case=True).to_numpy(zero_copy_only=False)
        return np.flatnonzero(mask)


def _dataset_dir(dataset_dir: str | Path) -> Path:
    """``dataset_dir`` resolved, or a ConfigError saying why it is not a saved eakd dataset."""
    path = Path(dataset_dir).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"{dataset_dir} does not exist or is not a folder; point at the dataset/ folder of a run, "
                          "e.g. runs/<id>/dataset")
    if not (path / "dataset_dict.json").is_file():
        hint = f"; did you mean {path / 'dataset'}?" if (path / "dataset" / "dataset_dict.json").is_file() else \
            "; point at the dataset/ folder of a run, e.g. runs/<id>/dataset"
        raise ConfigError(f"{dataset_dir} is not an eakd dataset (no dataset_dict.json){hint}")
    return path


def open_dataset(dataset_dir: str | Path) -> DatasetIndex:
    """Memory-map a DatasetDict saved by ``eakd generate`` and index each split (ConfigError if it is not one)."""
    from datasets import load_from_disk

    path = _dataset_dir(dataset_dir)
    try:
        dd = load_from_disk(str(path))
    except (OSError, ValueError, KeyError, IndexError, pa.ArrowException) as exc:  # corrupt or foreign files
        raise ConfigError(f"{dataset_dir} could not be loaded as a dataset ({type(exc).__name__}: {exc}); "
                          "regenerate it with `eakd generate`") from None
    if not hasattr(dd, "keys"):
        raise ConfigError(f"{dataset_dir} is a single Dataset, not an eakd DatasetDict with train/validation/removed")
    stats = None
    if (path / "stats.json").is_file():
        try:
            stats = json.loads((path / "stats.json").read_text())
        except ValueError:
            log.warning("%s/stats.json is not valid JSON; showing the dataset without its summary", path)
    order = [s for s in SPLIT_ORDER if s in dd] + sorted(s for s in dd if s not in SPLIT_ORDER)
    splits = {}
    for name in order:
        ds = dd[name]
        if ds._indices is not None:  # a saved dataset has none; an unflattened select() would
            ds = ds.flatten_indices()
        splits[name] = index_split(ds.data.table)
        log.debug("indexed %s: %d rows", name, splits[name].rows)
    pa.default_memory_pool().release_unused()  # the search text's intermediate copies (~2x its size) go back
    return DatasetIndex(path, splits, stats)


def content_security_policy(page: str) -> str:
    """A CSP allowing only ``page``'s own inline <script> and <style> (by sha256) and fetches to this origin."""
    def sources(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
        digests = [base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in bodies]
        return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"

    return (f"default-src 'none'; script-src {sources('script')}; style-src {sources('style')}; "
            "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class ViewerServer(ThreadingHTTPServer):
    """The viewer's HTTP server; holds the index and the page."""

    daemon_threads = True
    index: DatasetIndex
    page: bytes
    csp: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class ViewerHandler(BaseHTTPRequestHandler):
    """Three GET routes; everything else is 404 (or 501 for other methods)."""

    server: ViewerServer
    server_version = "eakd-view"
    sys_version = ""

    def log_message(self, format: str, *args) -> None:  # "format": the base class's parameter name
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Cache-Control": "no-store",
                   "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                   "Content-Security-Policy": self.server.csp}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.headers.get("Host", "").lower() not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            return self._json(403, {"error": "this viewer only answers requests addressed to 127.0.0.1 or localhost"})
        url = urlsplit(self.path)
        try:
            if url.path == "/":
                return self._send(200, self.server.page, "text/html; charset=utf-8")
            if url.path == "/api/meta":
                return self._json(200, self.server.index.meta())
            if url.path == "/api/rows":
                try:
                    result = self.server.index.query(**parse_rows_params(url.query))
                except ValueError as exc:
                    return self._json(400, {"error": str(exc)})
                return self._json(200, result)
            return self._json(404, {"error": "not found; routes are /, /api/meta and /api/rows"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except Exception:  # a bug: log it here, tell the page without a traceback
            log.exception("viewer request %s failed", self.path)
            self._json(500, {"error": "internal error; see the eakd view terminal"})


def parse_rows_params(query: str) -> dict:
    """``/api/rows``' query string -> :meth:`DatasetIndex.query` kwargs; ValueError on anything odd."""
    try:
        raw = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=len(PARAMS) + 1)
    except ValueError as exc:
        raise ValueError(f"bad query string: {exc}") from None
    unknown = sorted(set(raw) - set(PARAMS))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; use {', '.join(PARAMS)}")
    if any(len(v) > 1 for v in raw.values()):
        raise ValueError("each parameter may be given once")
    args = {k: v[0] for k, v in raw.items() if v[0] != ""}
    if "split" not in args:
        raise ValueError("split is required, e.g. ?split=train")
    for key in ("offset", "limit"):
        if key in args:
            if not args[key].isdigit():
                raise ValueError(f"{key} must be a non-negative integer, got {args[key]!r}")
            args[key] = int(args[key])
    return args


def make_server(dataset_dir: str | Path, port: int = 0) -> ViewerServer:
    """Index ``dataset_dir`` and bind the viewer to 127.0.0.1:``port`` (0: a free one); call serve_forever()."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be in [0, 65535], got {port!r}")
    _dataset_dir(dataset_dir)  # fail fast on a wrong folder before taking a port
    try:
        server = ViewerServer(("127.0.0.1", port), ViewerHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on 127.0.0.1 is in use; pass --port 0 for a free one or another port") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"port {port} on 127.0.0.1 needs privileges; pass --port 0 or one above 1023") from None
        raise
    try:
        page = HTML_PATH.read_text(encoding="utf-8")
        server.page, server.csp = page.encode(), content_security_policy(page)
        server.index = open_dataset(dataset_dir)
    except BaseException:
        server.server_close()
        raise
    return server


def serve(dataset_dir: str | Path, port: int = 0) -> None:
    """Serve the viewer for ``dataset_dir`` on 127.0.0.1 until Ctrl-C."""
    import signal

    server = make_server(dataset_dir, port)
    # Ctrl-C (and SIGTERM) stop the server even when this process inherited SIGINT as ignored (started in
    # the background by a non-interactive shell, or by a parent that ignores it): Python then installs no
    # KeyboardInterrupt handler of its own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"viewing {dataset_dir} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
