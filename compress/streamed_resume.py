"""Resuming a streamed step (:func:`compress.streamed.stream_step`) from its last checkpointed block.

A streamed step on a large model runs for many minutes a block at a time; a run killed in block 20 of 28
should not start again at block 0. With a work folder (the compress stage passes ``.<step>.blocks`` beside
the step's folder) the step keeps its per-block part files there and, at most every ``every_s`` seconds
(never after the last block: the step is then assembled at once), a checkpoint: the last finished block, the part files that hold it, the
manifest's quantized entries and the method's tallies (``checkpoint.json``), and the calibration hidden
states the next block reads (``states-<block>.safetensors``; the block kwargs — rotary embeddings, mask —
are the same for every block and are recomputed from the embeddings). The states are written before the
JSON that names them, each atomically, so a kill at any point leaves the previous checkpoint whole.

The checkpoint is only taken up again for the same inputs: its ``key`` hashes the step, the storage dtype,
the calibration token ids, the code version and every file of the source folder (name, size, mtime);
anything else clears the folder and the step starts from block 0. The resumed step writes the same bytes
as an uninterrupted one (``tests/compress/test_streamed_resume.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from compress.streamed_io import read_tensors
from distill.io import write_text_atomic

CHECKPOINT_S = 60.0  # seconds of work a kill may cost at most (plus the block in progress)


def resume_key(step: dict[str, Any], storage: str, calib: Tensor | None, source: Path) -> str:
    """The inputs a checkpoint must share to be taken up again (see the module docstring)."""
    from distill.provenance import code_version

    files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(source.iterdir()) if p.is_file()]
    calib_sha = hashlib.sha256(calib.contiguous().numpy().tobytes()).hexdigest() if calib is not None else None
    blob = json.dumps({"step": step, "storage": storage, "calib": calib_sha, "code": code_version(),
                       "source": [str(source.resolve()), files]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Resumed:
    """What a checkpoint restores: the last finished block and the state after it."""

    block: int  # the last block whose parts and outputs are kept
    parts: int  # part files holding everything up to it
    quantized: dict[str, Any]  # the manifest's ``quantized`` after it
    tally: dict[str, Any]  # :class:`compress.streamed._Tally` fields
    hiddens: list[Tensor] | None  # the next block's input hidden states per micro-batch (None: uncalibrated)


@dataclass
class BlockCheckpoints:
    """A streamed step's work folder: its part files and checkpoints, for inputs with ``key``."""

    folder: Path
    key: str
    every_s: float | None = None  # None: CHECKPOINT_S
    _last: float = field(default_factory=time.monotonic)

    @property
    def parts(self) -> Path:
        return self.folder / "parts"

    def load(self) -> Resumed | None:
        """The last checkpoint for ``key``, or None (a folder from other inputs, or none, is cleared)."""
        meta_path = self.folder / "checkpoint.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = None
        if meta is not None and not self._whole(meta):
            meta = None  # a part or the states file went missing: start again rather than write a partial artifact
        if meta is None or meta.get("key") != self.key:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            return None
        hiddens = None
        if meta["states"] is not None:
            raw = read_tensors(self.folder / meta["states"], [f"h{i}" for i in range(meta["batches"])])
            hiddens = [raw[f"h{i}"] for i in range(meta["batches"])]
        return Resumed(meta["block"], meta["parts"], meta["quantized"], meta["tally"], hiddens)

    def _whole(self, meta: dict[str, Any]) -> bool:
        """Whether every file ``meta`` names is still there."""
        parts = all((self.parts / f"{i:05d}.safetensors").is_file() for i in range(meta.get("parts", 0)))
        return parts and (meta.get("states") is None or (self.folder / meta["states"]).is_file())

    def maybe_save(self, block: int, parts: int, quantized: dict[str, Any], tally: dict[str, Any],
                   hiddens: list[Tensor] | None, last: bool) -> bool:
        """Checkpoint after ``block`` when ``every_s`` has passed since the last one (never after the last block:
        the step is then assembled at once). Returns whether it did."""
        every = CHECKPOINT_S if self.every_s is None else self.every_s
        if last or time.monotonic() - self._last < every:
            return False
        states = None
        if hiddens is not None:
            states = f"states-{block}.safetensors"
            tmp = self.folder / f".{states}.tmp-{os.getpid()}"
            save_file({f"h{i}": h.contiguous() for i, h in enumerate(hiddens)}, str(tmp))
            os.replace(tmp, self.folder / states)
        meta = {"key": self.key, "block": block, "parts": parts, "quantized": quantized, "tally": tally,
                "states": states, "batches": len(hiddens) if hiddens is not None else 0}
        write_text_atomic(self.folder / "checkpoint.json", json.dumps(meta))
        for old in self.folder.glob("states-*.safetensors"):  # only the named one is ever read again
            if old.name != states:
                old.unlink()
        self._last = time.monotonic()
        return True

    def clear(self) -> None:
        """The step is written: its work folder goes."""
        shutil.rmtree(self.folder, ignore_errors=True)
