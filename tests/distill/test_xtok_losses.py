"""Cross-tokenizer KD losses: identity reduces to same-tokenizer top-k KD, chunk likelihoods survive
re-segmentation, masked positions are inert, only the student gets gradients, chunked == plain."""

import pytest
import torch

from distill.train.losses import topk_kd_loss
from distill.train.xtok_losses import aligned_kd_loss, binary_kl, uld_loss


def _case(seed=0, b=2, length=7, vocab=11, k=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, length, vocab, generator=g) * 2
    labels = torch.randint(0, vocab, (b, length), generator=g)
    labels[0, :2] = -100
    ids = torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(b * length)]).view(b, length, k)
    lps = torch.log_softmax(torch.randn(b, length, vocab, generator=g), -1).gather(-1, ids)
    return logits, labels, ids, lps


@pytest.mark.parametrize("method", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_identical_tokenizers_reduce_to_topk_kd(method, temperature):
    logits, labels, ids, lps = _case()
    no_chunks = torch.full(labels.shape, -1)
    got = aligned_kd_loss(logits, labels, ids, lps, no_chunks, torch.zeros(0), method=method, temperature=temperature)
    want = topk_kd_loss(logits, ids, lps, labels, method=method, temperature=temperature)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_chunk_term_is_the_binary_kl_of_chunk_likelihoods_whatever_the_segmentation():
    # One chunk spelt by 3 student tokens; the teacher's likelihood of it is the sum of however many tokens
    # it used (3, 2 or 1): only the sum enters, so merging/splitting teacher tokens changes nothing.
    logits = torch.randn(1, 3, 5, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([[1, 4, 2]])
    none_k = (torch.full((1, 3, 2), -1), torch.full((1, 3, 2), float("-inf")))
    chunk = torch.tensor([[0, 0, 0]])
    losses = [aligned_kd_loss(logits, labels, *none_k, chunk, torch.tensor([sum(parts)]))
              for parts in ([-0.5, -0.25, -0.125], [-0.75, -0.125], [-0.875])]
    assert losses[0] == losses[1] == losses[2]
    s_lp = torch.log_softmax(logits, -1)[0].gather(-1, labels[0, :, None]).sum()
    torch.testing.assert_close(losses[0], binary_kl(torch.tensor(-0.875), s_lp) / 3)
    # ...and the student side is the product of its tokens' probabilities: re-segmenting it into one token
    # of the same probability gives the same chunk term.
    q = s_lp.exp().item()
    one = torch.log(torch.tensor([[[1.0 - q, q, 0.0]]]).clamp_min(1e-30))
    merged = aligned_kd_loss(one, torch.tensor([[1]]), torch.full((1, 1, 2), -1), torch.full((1, 1, 2), float("-inf")),
                             torch.tensor([[0]]), torch.tensor([-0.875]), reduction="sum")
    torch.testing.assert_close(merged, losses[0] * 3, rtol=1e-5, atol=1e-6)


def test_binary_kl_is_zero_only_at_equal_likelihoods():
    lp = torch.tensor([-0.1, -2.0, -30.0])
    assert torch.allclose(binary_kl(lp, lp), torch.zeros(3), atol=1e-7)
    assert (binary_kl(lp, lp - 0.5) > 0).all() and (binary_kl(lp, lp + 0.05) > 0).all()
    assert torch.isfinite(binary_kl(torch.tensor([0.0]), torch.tensor([-1e5]))).all()


def _full_targets(seed=3):
    logits, labels, ids, lps = _case(seed)
    chunk = torch.full(labels.shape, -1)
    chunk[1, 1:4] = 0   # a 3-token chunk
    chunk[0, 4:6] = 1   # a 2-token chunk
    ids[1, 1:4], ids[0, 4:6] = -1, -1
    return logits, labels, ids, lps, chunk, torch.tensor([-1.5, -0.3])


def test_masked_positions_are_inert_and_only_the_student_gets_gradients():
    logits, labels, ids, lps, chunk, clp = _full_targets()
    logits.requires_grad_(True)
    lps.requires_grad_(True)
    clp.requires_grad_(True)
    loss = aligned_kd_loss(logits, labels, ids, lps, chunk, clp)
    loss.backward()
    assert lps.grad is None and clp.grad is None
    assert logits.grad[0, :2].abs().max() == 0 and logits.grad[labels != -100].abs().sum() > 0
    poked = logits.detach().clone()
    poked[0, :2] = 1e4
    assert aligned_kd_loss(poked, labels, ids, lps.detach(), chunk, clp.detach()) == loss.detach()
    empty = torch.full_like(labels, -100)
    z = aligned_kd_loss(logits, empty, ids, lps, chunk, clp)
    z.backward()
    assert z.item() == 0.0


def test_chunked_equals_plain_value_and_gradient():
    logits, labels, ids, lps, chunk, clp = _full_targets()
    grads, values = [], []
    for cs in (None, 2):
        x = logits.clone().requires_grad_(True)
        v = aligned_kd_loss(x, labels, ids, lps, chunk, clp, chunk_size=cs)
        v.backward()
        grads.append(x.grad)
        values.append(v)
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_uld_is_permutation_invariant_and_zero_on_a_relabelled_teacher():
    g = torch.Generator().manual_seed(5)
    t_logits = torch.randn(1, 4, 6, generator=g)
    perm = torch.randperm(6, generator=g)
    labels = torch.zeros(1, 4, dtype=torch.long)
    t_lp = torch.log_softmax(t_logits, -1)
    assert uld_loss(t_logits[..., perm], t_lp, labels).item() < 1e-6          # same sorted probabilities
    student = torch.randn(1, 4, 6, generator=g, requires_grad=True)
    a = uld_loss(student, t_lp[..., :3], labels)
    b = uld_loss(student, t_lp[..., :3].flip(-1), labels)
    assert a.item() > 0 and a == b
    a.backward()
    assert student.grad.abs().sum() > 0
    assert uld_loss(student, torch.full((1, 4, 3), float("-inf")), labels).item() == 0.0
    torch.testing.assert_close(uld_loss(student, t_lp[..., :3], labels, chunk_size=3), a)
