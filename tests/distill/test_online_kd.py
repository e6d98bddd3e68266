"""Online logit KD (train.kd.teacher): a local teacher scores the student's own positions in no-grad, and the
full-vocabulary loss of distill.train.losses trains the student. Tiny random models with the bundled tokenizer
(the teacher is the untied variant: a different distribution over the same vocabulary), CPU, ~30 s."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from distill.config import ConfigError
from distill.models import load_causal_lm, load_tokenizer
from distill.train.losses import kd_loss
from distill.train.run import IGNORE, KDConfig, TrainConfig, assistant_loss, collate, tokenize_row, train_student


def _cfg(student, teacher, **kd):
    return TrainConfig(student=str(student), lora={"enabled": False}, max_steps=20, batch_size=4, lr=2e-3,
                       dtype="float32", device="cpu", kd={"enabled": True, "teacher": str(teacher), "alpha_ce": 0.0} | kd)


def test_the_online_loss_is_kd_loss_on_both_models_at_the_labelled_positions(tiny_model, untied_model):
    tok = load_tokenizer(tiny_model)
    student, teacher = load_causal_lm(tiny_model), load_causal_lm(untied_model).eval()
    rows = [tokenize_row(tok, [{"role": "user", "content": f"What is {i} plus {i}?"},
                               {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}], 128) for i in range(3)]
    batch = collate(rows, tok.pad_token_id)
    kd = KDConfig(enabled=True, teacher=str(untied_model), alpha_ce=0.25, method="generalized_jsd", beta=0.3, chunk_size=7)
    loss, n, terms = assistant_loss(student, batch, None, kd, teacher)
    with torch.no_grad():  # by hand: full logits of both models, shifted, padding and prompts ignored
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    want = kd_loss(s, t, labels, method="generalized_jsd", beta=0.3, alpha_ce=0.25)
    assert n == int((labels != IGNORE).sum()) and loss.item() == pytest.approx(want.item(), rel=1e-4)
    assert terms["kd"] > 0 and loss.requires_grad


@pytest.mark.parametrize("chunk", [5, None])
def test_chunked_heads_give_the_full_logit_loss_and_gradients(tiny_model, untied_model, chunk):
    """online_kd_terms builds [chunk, V] logits from hidden states (rebuilt in backward): same loss, CE, KD
    term and student gradients as mixed_loss_terms on the full [N, V] logits of both models."""
    from distill.train.run import labelled_hidden, labelled_logits, mixed_loss_terms, online_kd_terms

    tok = load_tokenizer(tiny_model)
    student, teacher = load_causal_lm(tiny_model), load_causal_lm(untied_model).eval()
    rows = [tokenize_row(tok, [{"role": "user", "content": f"Name {i} colours."},
                               {"role": "assistant", "content": "red, green, blue " * (i + 1)}], 128) for i in range(3)]
    batch = collate(rows, tok.pad_token_id)
    kd = KDConfig(enabled=True, teacher=str(untied_model), alpha_ce=0.3, method="skew_forward_kl", chunk_size=chunk)
    with torch.no_grad():
        t_hidden, _, _, t_base = labelled_hidden(teacher, batch, None)
    hidden, targets, _, base = labelled_hidden(student, batch, None)
    got = online_kd_terms(base.lm_head, hidden, t_base.lm_head, t_hidden, targets, kd, None)
    got[0].backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad()
    logits, targets2, b = labelled_logits(student, batch, None)
    with torch.no_grad():
        b["teacher_logits"] = labelled_logits(teacher, batch, None)[0]
    want = mixed_loss_terms(logits, targets2, b, kd)
    want[0].backward()
    for g, w in zip(got, want):
        assert g.item() == pytest.approx(w.item(), rel=1e-5)
    assert grads and all(torch.allclose(grads[n], p.grad, rtol=1e-4, atol=1e-7) for n, p in student.named_parameters()
                         if p.grad is not None)


def test_online_kd_moves_the_student_to_the_teachers_distribution(tiny_model, untied_model, sft_dataset, tmp_path):
    """Pure KD (alpha_ce 0) against pure CE on the same tokens (alpha_ce 1), same steps: KD lowers the held-out
    full-vocabulary KL(teacher || student) more. (The teacher's random untied head is far from anything the
    tiny tied student can reach in 20 steps, so the bar is relative, not absolute.)"""
    m = json.loads((train_student(_cfg(tiny_model, untied_model), sft_dataset, tmp_path / "s") / "metrics.json").read_text())
    ce = json.loads((train_student(_cfg(tiny_model, untied_model, alpha_ce=1.0), sft_dataset, tmp_path / "ce")
                     / "metrics.json").read_text())
    assert m["mode"] == "logit_kd_online_forward_kl"
    before, after = m["teacher_agreement_before"]["kl_full"], m["teacher_agreement_after"]["kl_full"]
    assert ce["teacher_agreement_before"]["kl_full"] == before
    assert after < 0.85 * before and after < ce["teacher_agreement_after"]["kl_full"], (before, after, ce)
    assert m["teacher_agreement_after"]["kl_topk"] is None  # no cached top-k: the teacher ran beside the student
    assert "Online logit KD (forward_kl, full vocabulary)" in (tmp_path / "s" / "README.md").read_text()


def test_online_only_divergences_need_a_teacher_and_a_shared_tokenizer(tiny_model, sft_dataset, tmp_path):
    with pytest.raises(ValidationError, match="needs the teacher's full distribution"):
        KDConfig(enabled=True, method="total_variation")
    from byte_models import byte_tokenizer, tiny_llama

    other = tmp_path / "byte_teacher"
    tiny_llama().save_pretrained(other, safe_serialization=True)
    byte_tokenizer().save_pretrained(other)
    with pytest.raises(ConfigError, match="tokenizer differs from the student's .* use sequence-level KD"):
        train_student(_cfg(tiny_model, other), sft_dataset, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_on_policy_rows_are_the_students_own_answers_labelled_after_the_prompt(tiny_model):
    from distill.train.run import on_policy_rows

    tok, model = load_tokenizer(tiny_model), load_causal_lm(tiny_model)
    rows = [tokenize_row(tok, [{"role": "user", "content": "Hi" * (i + 1)}, {"role": "assistant", "content": "Hello."}], 128)
            for i in range(3)]
    model.train()
    out = on_policy_rows(model, rows, tok, max_new_tokens=6, temperature=1.0, seed=7)
    assert model.training  # back in training mode
    for (ids, labels), (new_ids, new_labels) in zip(rows, out):
        n_prompt = next(i for i, lab in enumerate(labels) if lab != IGNORE)
        assert new_ids[:n_prompt] == ids[:n_prompt] and new_labels[:n_prompt] == [IGNORE] * n_prompt
        answer = new_labels[n_prompt:]
        assert 1 <= len(answer) <= 6 and answer == new_ids[n_prompt:] and IGNORE not in answer
    assert out == on_policy_rows(model, rows, tok, max_new_tokens=6, temperature=1.0, seed=7)  # seeded
    assert out != on_policy_rows(model, rows, tok, max_new_tokens=6, temperature=1.0, seed=8)


def test_on_policy_training_samples_the_configured_share_of_batches(tiny_model, untied_model, sft_dataset, tmp_path):
    cfg = _cfg(tiny_model, untied_model, on_policy=1.0, on_policy_max_new_tokens=8)
    cfg = cfg.model_copy(update={"max_steps": 4, "grad_accum": 2})
    m = json.loads((train_student(cfg, sft_dataset, tmp_path / "s") / "metrics.json").read_text())
    assert m["on_policy_batches"] == 8 and m["on_policy"] == 1.0
    assert all(h["tokens"] <= 2 * 4 * 128 for h in m["history"])
    half = cfg.model_copy(update={"kd": cfg.kd.model_copy(update={"on_policy": 0.5})})
    m = json.loads((train_student(half, sft_dataset, tmp_path / "h") / "metrics.json").read_text())
    assert 0 < m["on_policy_batches"] < 8
    with pytest.raises(ValidationError, match="on_policy > 0 needs a teacher"):
        KDConfig(enabled=True, on_policy=0.5)
    with pytest.raises(ConfigError, match="on_policy with train.processes > 1"):
        train_student(cfg.model_copy(update={"processes": 2}), sft_dataset, tmp_path / "p")
