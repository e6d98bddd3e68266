"""compress.gguf on the real bundled model: llama.cpp (llama-cpp-python) loads the exported files and agrees
with eakd's torch model.

SmolLM2-135M-Instruct (bf16 safetensors) is exported to f16 and q8_0 GGUF and each file is loaded with
``llama_cpp.Llama(logits_all=True)``, nothing beside it. For a chat prompt rendered by the Hugging Face
tokenizer's template, the test checks that llama.cpp tokenizes it to the same ids (the tokenizer and its
``pre`` in the file), that greedy decoding gives the same first tokens as eakd's fp32 torch model, that the
last-position logits agree, and that llama.cpp's own chat path (the template in the file) answers with the
text torch generates.

Tolerances on the last-position logits (SmolLM2's logits span about 30 here), with what was measured on a
2-core AMD EPYC (AVX2), llama-cpp-python 0.3.36:

* f16: max |delta logit| <= 0.15 (measured 0.025). The bf16 weights are exact in f16; what remains is
  llama.cpp's CPU arithmetic (f16 activations in its matmuls, another summation order) over 30 layers.
* q8_0: max |delta logit| <= 2.0 (measured 0.86), the same top-1 and mean |delta| <= 0.5. Every weight
  is rounded to an 8-bit block grid (error up to 1/254 of its block's largest weight) and llama.cpp also
  rounds the activations to q8_0 for the dot products; the errors add up over 30 layers.

Skips, saying how to install it, when ``llama_cpp`` is not importable: ``llama-cpp-python`` has no binary
wheel on PyPI and compiles llama.cpp (cmake, a C++ compiler; 4-25 min on 2 cores), so it is not in the lock.

Run: ``pytest -m integration tests/integration/test_gguf_llamacpp.py`` (~2 min on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compress.gguf import export_gguf

pytestmark = pytest.mark.integration

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed: `.venv/bin/pip install llama-cpp-python` compiles "
    "llama.cpp from source (cmake + a C++ compiler, 4-25 min on 2 cores) and then this test runs")

MESSAGES = [[{"role": "user", "content": "What is the capital of France?"}],
            [{"role": "user", "content": "Name the three primary colors."}]]
NEW_TOKENS = 8
TOLERANCE = {"f16": {"max": 0.15, "mean": 0.05}, "q8_0": {"max": 2.0, "mean": 0.5}}


@pytest.fixture(scope="module")
def reference(bundled_dir):
    """eakd's torch model (fp32) on each prompt: ``(ids, greedy new ids, last-position logits [V], answer text)``."""
    from distill.models import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(bundled_dir), load_causal_lm(bundled_dir).eval()
    out = []
    for messages in MESSAGES:
        ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].numpy()
            new = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(ids):].tolist()
            full = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append((text, ids, new, logits, tok.decode(full, skip_special_tokens=True).strip()))
    return out


@pytest.fixture(scope="module", params=["f16", "q8_0"])
def gguf_file(request, bundled_dir, tmp_path_factory) -> tuple[str, Path]:
    return request.param, export_gguf(bundled_dir, tmp_path_factory.mktemp("gguf") / f"smollm2-{request.param}.gguf",
                                      request.param)


def _llama(path: Path):
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=256, n_threads=2, verbose=False, seed=0)


def test_llama_cpp_agrees_with_torch(gguf_file, reference):
    kind, path = gguf_file
    llm = _llama(path)
    try:
        for text, ids, new, logits, _ in reference:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids  # same tokenizer
            llm.reset()
            llm.eval(ids)
            got = np.asarray(llm.scores[len(ids) - 1], dtype=np.float32)
            delta = np.abs(got - logits)
            assert got.argmax() == logits.argmax()
            assert delta.max() <= TOLERANCE[kind]["max"] and delta.mean() <= TOLERANCE[kind]["mean"], (delta.max(), delta.mean())
            llm.reset()
            greedy = []
            for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                greedy.append(token)
                if len(greedy) == NEW_TOKENS or token == llm.token_eos():
                    break
            assert greedy == new[: len(greedy)] and len(greedy) == len(new)
    finally:
        llm.close()


def test_llama_cpp_chats_with_the_template_in_the_file(gguf_file, reference):
    """llama.cpp renders the chat itself, from ``tokenizer.chat_template`` and the special tokens in the file."""
    kind, path = gguf_file
    llm = _llama(path)
    try:
        for (_, _, _, _, answer), messages in zip(reference, MESSAGES):
            reply = llm.create_chat_completion(messages=messages, max_tokens=24, temperature=0.0, repeat_penalty=1.0)
            assert reply["choices"][0]["message"]["content"].strip() == answer
    finally:
        llm.close()
