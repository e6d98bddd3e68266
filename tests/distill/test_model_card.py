"""distill.train.card: the trained student's card, its Hub front matter and its lineage, read from the files
the artifacts carry (metrics.json, train_config.yaml, the dataset's stats.json)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from distill.models import BUNDLED_PACKAGE
from distill.train.card import (
    BUNDLED_HUB_ID,
    CARD_BEGIN,
    CARD_END,
    read_front_matter,
    student_card,
    trace,
    write_card,
)

SECRET_URL = "http://user:s3cret-pw@teacher.example/v1"


def _folders(tmp_path: Path, base: Path) -> Path:
    """A student folder as ``eakd train`` leaves it, trained from ``base`` on a dataset taught by a teacher."""
    ds, student = tmp_path / "dataset", tmp_path / "student"
    ds.mkdir()
    student.mkdir()
    (ds / "stats.json").write_text(json.dumps({
        "rows": {"train": 10, "validation": 2, "removed": 1},
        "teacher_config": {"backend": "openai", "model": "bundled", "base_url": SECRET_URL, "api_key_env": "OPENAI_API_KEY"}}))
    (student / "metrics.json").write_text(json.dumps({
        "mode": "sft_sequence_kd", "eakd_version": "0.1+abc", "dataset": str(ds), "base": str(base), "layers": 2,
        "parameters": 1000, "trainable_parameters": 100, "steps": 4, "train_rows": 10, "tokens": 512,
        "loss_first": 3.0, "loss_last": 2.5, "val_loss_before": 3.1, "val_loss_after": 2.7,
        "teacher_agreement_before": {"top1_agreement": 0.1}, "teacher_agreement_after": {"top1_agreement": 0.3}}))
    (student / "train_config.yaml").write_text(yaml.safe_dump({"lora": {"enabled": True, "r": 8, "alpha": 16,
                                                                        "target_modules": ["q_proj", "v_proj"]}}))
    (student / "model.safetensors").write_bytes(b"\0" * 2_000_000)
    return student


def _split(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    head, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_student_of_the_bundled_model_names_it_on_the_hub(tmp_path):
    bundled = tmp_path / "SmolLM2-135M-Instruct"
    bundled.mkdir()
    (bundled / "SOURCE.txt").write_text(f"Converted by eakd from {BUNDLED_PACKAGE}:x.gguf\n")
    student = _folders(tmp_path, bundled)
    meta, body = _split(student_card(student))
    assert meta == {"base_model": BUNDLED_HUB_ID, "base_model_relation": "finetune", "library_name": "transformers",
                    "pipeline_tag": "text-generation", "tags": ["eakd", "distillation", "text-generation"],
                    "license": "apache-2.0"}
    assert "datasets" not in meta and "# datasets: none on the Hub" in student_card(student)
    assert f"local eakd dataset `{tmp_path / 'dataset'}`: 10 train / 2 validation rows" in body
    assert "teacher: SmolLM2-135M-Instruct (bundled) via openai" in body
    assert "Sequence-level KD (SFT on teacher outputs); LoRA r=8, alpha=16" in body
    assert "train loss 3.0 -> 2.5" in body and "2.0 MB of safetensors" in body
    assert "AutoModelForCausalLM.from_pretrained(\"./student\")" in body and "vllm serve ./student" in body
    assert "llama-server -m student-q8_0.gguf" in body
    assert "s3cret" not in body and "teacher.example" not in body  # a URL may carry credentials: never written


def test_local_base_is_said_to_be_local(tmp_path):
    base = tmp_path / "my-model"
    base.mkdir()
    meta, body = _split(student_card(_folders(tmp_path, base)))
    assert "base_model" not in meta and "base_model_relation" not in meta and meta["license"] == "unknown"
    assert f"`{base}` (a local folder)" in body


def test_hub_cache_snapshot_and_card_license_are_read(tmp_path):
    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "README.md").write_text("---\nlicense: mit\ntags: [x]\n---\n# name\n")
    lineage = trace(_folders(tmp_path, snap))
    assert (lineage.base_model, lineage.license) == ("org/name", "mit")


def test_a_rewritten_card_keeps_its_evaluation_section(tmp_path):
    section = f"{CARD_BEGIN}\n## Evaluation\n\n| m | 1 |\n{CARD_END}"
    (tmp_path / "README.md").write_text(f"# old card\n\n{section}\n")
    card = write_card(tmp_path, "---\nlicense: mit\n---\n\n# new card\n")
    text = card.read_text()
    assert text.startswith("---\nlicense: mit\n---\n\n# new card\n") and text.count(CARD_BEGIN) == 1 and section in text
    assert read_front_matter(card) == {"license": "mit"} and not list(tmp_path.glob(".README*"))


def test_train_writes_the_card(tiny_model, sft_dataset, tmp_path):
    from distill.train.run import TrainConfig, train_student

    cfg = TrainConfig(student=str(tiny_model), lora={"enabled": True, "r": 4, "alpha": 8, "save_adapter": True},
                      max_steps=1, batch_size=2, log_every=1, dtype="float32", device="cpu")
    out = train_student(cfg, sft_dataset, tmp_path / "student")
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["base_model_name_or_path"] == str(tiny_model)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert "--lora-modules student=./student/adapter" in (out / "README.md").read_text()
    meta = read_front_matter(out / "README.md")
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert "distillation" in meta["tags"] and "base_model" not in meta  # the tiny model is local
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{metrics['steps']} steps over {metrics['train_rows']} rows" in (out / "README.md").read_text()
