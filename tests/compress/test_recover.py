"""compress.recover's feature terms: FitNets hints through learned projections and TinyBERT attention maps
(zero on identical models, layer maps checked, eager attention restored), in a tiny depth-pruned recovery."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.recover import Discriminator, adversarial_terms, attention_loss, hint_loss, recover
from compress.structured import drop_layers


def six_layers():
    from transformers import LlamaConfig, LlamaForCausalLM

    from byte_models import VOCAB

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_feature_terms_vanish_on_identical_models_and_check_shapes():
    model = six_layers()
    model.set_attn_implementation("eager")
    ids = torch.randint(0, 256, (2, 12))
    out = model(input_ids=ids, output_hidden_states=True, output_attentions=True)
    eye = nn.ModuleList(nn.Linear(32, 32, bias=False) for _ in range(6))
    for p in eye:
        nn.init.eye_(p.weight)
    assert float(hint_loss(out.hidden_states, out.hidden_states, list(range(6)), eye)) == pytest.approx(0.0, abs=1e-10)
    assert float(attention_loss(out.attentions, out.attentions, list(range(6)))) == 0.0
    assert float(hint_loss(out.hidden_states, out.hidden_states, [1, 2, 3, 4, 5, 0], eye)) > 0.01
    odd = (out.attentions[0][:, :2],) * 6
    with pytest.raises(ValueError, match="heads"):
        attention_loss(odd, out.attentions, list(range(6)))


@pytest.mark.parametrize("hint,attention", [(1.0, 0.0), (1.0, 1.0)])
def test_recovery_with_feature_terms_trains_and_restores_attention(hint, attention):
    torch.set_num_threads(1)
    teacher = six_layers().requires_grad_(False)
    student = drop_layers(copy.deepcopy(teacher), [2, 3]).requires_grad_(True)
    before = student.config._attn_implementation
    batches = torch.randint(0, 256, (8, 24))
    stats = recover(student, teacher, batches, steps=12, lr=3e-3, hint_weight=hint, attention_weight=attention,
                    layer_map=[0, 1, 4, 5])
    assert stats["hint_weight"] == hint and stats["kd_last"] < stats["kd_first"]
    assert stats["loss_last"] < stats["loss_first"]
    assert student.config._attn_implementation == before and teacher.config._attn_implementation == before
    with pytest.raises(ValueError, match="layer_map"):
        recover(student, teacher, batches, steps=1, hint_weight=1.0, layer_map=[0, 1, 2])
    with pytest.raises(ValueError, match="layer_map"):
        recover(student, teacher, batches, steps=1, hint_weight=1.0, layer_map=[0, 1, 4, 9])


def test_discriminator_learns_to_separate_and_the_generator_term_pulls_the_student_across():
    """Pure terms on synthetic states: teacher states sit on one side, student states on the other. Training D
    alone separates them (accuracy -> 1); then moving the student's states down the generator term's gradient
    raises D's error on them (the student learns to pass for the teacher)."""
    torch.manual_seed(0)
    shift = torch.zeros(16)
    shift[:4] = 2.0
    teacher_h = torch.randn(4, 10, 16) + shift
    student_h = (torch.randn(4, 10, 16) - shift).requires_grad_(True)
    disc = Discriminator(16, width=32)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    for _ in range(60):
        _, d_loss, accuracy = adversarial_terms(disc, student_h, teacher_h)
        opt.zero_grad()
        d_loss.backward()
        opt.step()
    assert accuracy > 0.95
    assert disc.norm.weight is None  # no affine: a scale change cannot fool it
    fooled_before = float((disc(student_h) > 0).float().mean())
    disc.requires_grad_(False)
    moved = student_h.detach().clone().requires_grad_(True)
    for _ in range(50):
        generator, _, _ = adversarial_terms(disc, moved, teacher_h)
        (grad,) = torch.autograd.grad(generator, moved)
        moved = (moved - 5.0 * grad * moved.numel()).detach().requires_grad_(True)
    assert float((disc(moved) > 0).float().mean()) > fooled_before + 0.5
    assert float(adversarial_terms(disc, moved, teacher_h)[0]) < float(adversarial_terms(disc, student_h, teacher_h)[0])


def test_recovery_with_the_adversarial_term_reports_the_discriminator_and_keeps_the_student_shape():
    torch.set_num_threads(1)
    teacher = six_layers().requires_grad_(False)
    student = drop_layers(copy.deepcopy(teacher), [2, 3]).requires_grad_(True)
    names = [n for n, _ in student.named_parameters()]
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    batches = torch.randint(0, 256, (8, 24))
    stats = recover(student, teacher, batches, steps=12, lr=3e-3, adversarial_weight=0.5)
    assert stats["adversarial_weight"] == 0.5 and {"kd_first", "kd_last"} <= set(stats)
    assert any(not torch.equal(p, before[n]) for n, p in student.named_parameters())
    assert 0.0 <= stats["discriminator_accuracy_first"] <= 1.0 and 0.0 <= stats["discriminator_accuracy_last"] <= 1.0
    assert [n for n, _ in student.named_parameters()] == names  # the discriminator is not left on the model
    with pytest.raises(ValueError, match="adversarial_weight"):
        recover(student, teacher, batches, steps=1, adversarial_weight=-1.0)
