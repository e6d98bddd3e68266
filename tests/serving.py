"""What the vLLM serving tests share (tests/integration/test_serve_*.py): vLLM's real OpenAI-compatible server
started on 127.0.0.1 by :mod:`distill.teacher.serve` (the launcher ``eakd teacher serve`` and the ``vllm_server`` fixture
use), greedy chat answers through the ``openai`` client, and the check of those answers against eakd's own
model in transformers.

The check is teacher-forced, as in test_export_vllm: transformers reads the chat prompt (the same chat
template vLLM applies) followed by vLLM's answer tokens, and must pick the same token as its greedy argmax
at (nearly) every position, and give vLLM's token about the logprob vLLM gave it. Free-running greedy
decoding is also compared, token for token, and reported: a near-tie flipped by a different summation order
would change everything after it, so it is measured, not asserted.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROMPTS = ["What is the capital of France?", "Name the three primary colors.", "What is 2 + 3?"]
MAX_TOKENS = 16


def train_lora_student(bundled_dir: Path, root: Path, steps: int = 3) -> Path:
    """The bundled model after ``steps`` LoRA steps (r 8) on a 12-row chat dataset, saved by ``eakd train``'s
    code: merged, with the unmerged adapter kept in ``adapter/`` (``train.lora.save_adapter``)."""
    from datasets import Dataset, DatasetDict

    from distill.train.run import TrainConfig, train_student

    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(12)]
    DatasetDict({"train": Dataset.from_list(rows[:10]), "validation": Dataset.from_list(rows[10:])}).save_to_disk(
        str(root / "ds"))
    cfg = TrainConfig(student=str(bundled_dir), lora={"enabled": True, "r": 8, "alpha": 16, "save_adapter": True},
                      max_steps=steps, batch_size=2, lr=3e-3, max_length=64, log_every=1, dtype="float32", device="cpu")
    start = time.perf_counter()
    out = train_student(cfg, root / "ds", root / "student")
    print(f"\ntrained the LoRA student in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return out


@contextlib.contextmanager
def served(model: Path, log_file: Path, extra: list[str] | None = None, timeout_s: float = 600) -> Iterator[str]:
    """vLLM's OpenAI server for ``model`` on 127.0.0.1 (a free port) in its own process group; yields the
    base URL (``http://127.0.0.1:PORT/v1``), then stops it (SIGTERM, SIGKILL after 30 s) and checks it is gone."""
    from distill.teacher.serve import free_port, start_server, stop_server, wait_ready

    port = free_port()
    proc = start_server(str(model), port, log_file=log_file, extra=extra or [])
    url = f"http://127.0.0.1:{port}/v1"
    try:
        waited = wait_ready(url, proc, timeout_s=timeout_s)
        print(f"\nvLLM server for {model.name} ready in {waited:.1f}s", file=sys.stderr)
        yield url
    except Exception:
        sys.stderr.write(log_file.read_text()[-6000:])
        raise
    finally:
        stop_server(proc)
    assert proc.returncode is not None, "the vLLM server is still running after stop_server"


@dataclass
class Answer:
    prompt: str
    text: str
    ids: list[int]  # vLLM's completion token ids
    logprobs: list[float]  # vLLM's logprob of each


def ask(url: str, model: str, prompts: list[str] = PROMPTS, max_tokens: int = MAX_TOKENS) -> tuple[list[Answer], float]:
    """Greedy chat completions of ``prompts`` from the server at ``url`` through the ``openai`` client, with
    token ids (vLLM's ``return_tokens_as_token_ids``) and logprobs; returns them and the seconds taken."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused")  # vLLM started without --api-key accepts any
    start, answers = time.perf_counter(), []
    for prompt in prompts:
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           temperature=0.0, max_tokens=max_tokens, logprobs=True, seed=0,
                                           extra_body={"return_tokens_as_token_ids": True})
        content = r.choices[0].logprobs.content
        answers.append(Answer(prompt, r.choices[0].message.content or "",
                              [int(t.token.removeprefix("token_id:")) for t in content], [t.logprob for t in content]))
    return answers, time.perf_counter() - start


@dataclass
class Agreement:
    top1: list[float]  # per prompt: share of vLLM's tokens that are transformers' argmax too (teacher-forced)
    max_logprob_diff: float  # largest |logprob vLLM - logprob transformers| of vLLM's tokens
    exact: list[bool]  # per prompt: transformers' own greedy decoding gives the same tokens


def compare(model, tokenizer, answers: list[Answer]) -> Agreement:
    """Check ``answers`` against ``model`` (transformers, eval mode) with ``tokenizer``'s chat template."""
    import torch

    top1, worst, exact = [], 0.0, []
    with torch.no_grad():
        for a in answers:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": a.prompt}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=False)
            prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
            ids, n = torch.tensor([prompt + a.ids]), len(prompt)
            logp = torch.log_softmax(model(ids).logits[0, n - 1:-1].float(), -1)
            chosen = torch.tensor(a.ids)
            top1.append((logp.argmax(-1) == chosen).float().mean().item())
            worst = max(worst, (logp.gather(1, chosen[:, None])[:, 0] - torch.tensor(a.logprobs)).abs().max().item())
            mine = model.generate(torch.tensor([prompt]), max_new_tokens=len(a.ids), do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)[0, n:].tolist()
            exact.append(mine[:len(a.ids)] == a.ids)  # vLLM may leave the stop token out
    return Agreement(top1, worst, exact)


def export_agreement(artifact: Path, log_file: Path, answers: list[Answer]) -> tuple[str, list[str], Agreement]:
    """What every export-serving test checks: vLLM's log names the mixed-precision kernel it chose (so the
    compressed-tensors path ran), every answer is non-empty and the first names Paris, and the answers agree with
    eakd's fake-quant model of ``artifact``. Returns (the kernel vLLM chose, the answers' texts, the agreement)."""
    from compress.artifact import load_compressed
    from distill.models import load_tokenizer

    chosen = re.findall(r"Using (\w+) for mixed-precision linear", log_file.read_text())
    assert chosen, "vLLM logged no mixed-precision linear kernel: the compressed-tensors path did not run"
    texts = [a.text for a in answers]
    assert all(t.strip() for t in texts) and "Paris" in texts[0], texts
    return chosen[-1], texts, compare(load_compressed(artifact, dtype="float32"), load_tokenizer(artifact), answers)
