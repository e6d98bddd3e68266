"""What a stage reads besides its config, resolved the same way for its cache key and for its task: the
compress stage's perplexity and calibration texts (and the digest of every calibration input), and the
earlier run's dataset an incremental generate stage appends to.

Plain functions of the pipeline config and paths; no Prefect. May import :mod:`flows.config`,
:mod:`flows.stage_keys` and ``distill``; never :mod:`flows.pipeline` or :mod:`flows.stage_tasks` (they
import this). Run: used by :mod:`flows.pipeline` and :mod:`flows.stage_tasks`.
"""

from __future__ import annotations

from pathlib import Path

from distill.config import shared_data_dir
from flows.config import PipelineConfig


def resolve_eval_text(cfg: PipelineConfig, dataset_dir: Path | None) -> tuple[str, str]:
    """(text, source) for the compress stage's perplexity: the configured file, else WikiText-2 test, else
    held-out teacher outputs (:func:`distill.evaluate.find_eval_text`, which the evaluate stage uses too)."""
    from distill.evaluate import find_eval_text

    return find_eval_text(cfg.compress.eval.text_path, dataset_dir, "compress.eval.text_path")


def resolve_calib_text(cfg: PipelineConfig, dataset_dir: Path | None) -> tuple[str | None, str | None]:
    """(text, source) for calibration when neither the config nor ../shared/data provides one: the generated
    dataset's training answers. (None, None) lets the compress stage use its own default."""
    data = shared_data_dir()
    if cfg.compress.calibration.text_path or (data and (data / "wikitext-2" / "wiki.valid.tokens").is_file()):
        return None, None
    if dataset_dir is not None:
        from datasets import load_from_disk

        dd = load_from_disk(str(dataset_dir))
        texts = [m[-1]["content"] for m in dd["train"]["messages"]] if "messages" in dd["train"].column_names else []
        if texts:
            return "\n\n".join(texts), "dataset train split (teacher outputs)"
    return None, None


def calibration_digest(cfg: PipelineConfig, calib: str | None, dataset_dir: str | None, dataset_key: str | None) -> str:
    """The compress key's digest of every calibration input: the text the windows are cut from (``calib``
    when the flow passes one, else ``text_path``, else WikiText-2 valid) and, with ``calibration.data``
    dataset/mix, the dataset whose conversations give windows (its generate key when this run made it)."""
    from flows.stage_keys import digest_bytes, digest_path

    cal, data = cfg.compress.calibration, shared_data_dir()
    digest = (digest_bytes(calib) if calib is not None else digest_path(cal.text_path) if cal.text_path
              else digest_path(data / "wikitext-2" / "wiki.valid.tokens") if data else "none")
    if cal.data == "text":
        return digest
    folder = cal.dataset or cfg.compress.eval.tasks_dataset
    return digest + "+" + (digest_path(folder) if folder else dataset_key or (digest_path(dataset_dir) if dataset_dir else "none"))


def previous_dataset(cfg: PipelineConfig, run_dir: Path) -> Path | None:
    """The newest earlier run's finished dataset with this run's name (what an incremental run appends to)."""
    earlier = [d for d in Path(cfg.run.runs_dir).glob(f"{cfg.run.name}-*")
               if d.resolve() != run_dir.resolve() and (d / "dataset" / "stats.json").is_file()]
    if not earlier:
        return None
    newest = max(earlier, key=lambda d: (d / "dataset" / "stats.json").stat().st_mtime)
    return (newest / "dataset").resolve()
