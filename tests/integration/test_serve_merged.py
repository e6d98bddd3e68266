"""vLLM's OpenAI-compatible server serves a merged eakd student, and answers as eakd's model does.

The bundled SmolLM2-135M-Instruct is LoRA-trained for 3 steps by ``distill.train.run.train_student`` (what
``eakd train`` runs), which merges the adapters into the weights and saves a plain Hugging Face folder.
That folder is served by ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 (``tests/serving.py``,
through ``distill.teacher.serve``), asked three chat prompts greedily through the ``openai`` client, and the answers
are checked against the same folder in transformers (teacher-forced top-1 agreement and logprobs of vLLM's
tokens; free-running greedy equality is reported). The base model's logprobs of the same tokens are the
control: the server must be closer to the student than to the model the student was trained from, or it
could be serving the base. Then the server is stopped and must be gone.

Run: ``flock /tmp/vllm.lock pytest -m integration tests/integration/test_serve_merged.py -s`` (~1.5 min on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from serving import PROMPTS, ask, compare, served, train_lora_student

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def merged_student(bundled_dir, tmp_path_factory) -> Path:
    return train_lora_student(bundled_dir, tmp_path_factory.mktemp("merged"))


def test_vllm_serves_the_merged_student(merged_student, bundled_dir, tmp_path):
    from openai import OpenAI

    from distill.models import load_causal_lm, load_tokenizer

    assert not list(merged_student.glob("adapter_*")), "eakd train saves the student merged (adapter/ aside)"
    with served(merged_student, tmp_path / "vllm.log") as url:
        listed = [m.id for m in OpenAI(base_url=url, api_key="unused").models.list().data]
        assert listed == [merged_student.name]
        answers, seconds = ask(url, merged_student.name)
    texts = [a.text for a in answers]
    assert all(t.strip() for t in texts) and "Paris" in texts[0], texts

    tok = load_tokenizer(merged_student)
    ours = compare(load_causal_lm(merged_student, dtype="float32"), tok, answers)
    base = compare(load_causal_lm(bundled_dir, dtype="float32"), tok, answers)
    print(f"\nmerged student in vLLM: {len(PROMPTS)} chats in {seconds:.1f}s; answers {texts}; teacher-forced top-1 "
          f"agreement with eakd/transformers {[round(x, 3) for x in ours.top1]}, max |logprob diff| "
          f"{ours.max_logprob_diff:.2g} (vs the base model: {base.max_logprob_diff:.2g}); greedy decoding equal "
          f"token for token: {ours.exact}")
    assert min(ours.top1) >= 0.9 and ours.max_logprob_diff < 0.05  # fp32 on both sides
    assert ours.max_logprob_diff < base.max_logprob_diff  # the trained weights are what vLLM serves
