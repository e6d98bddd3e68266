"""Property tests for distill.train.losses (small CPU tensors: B=2, L=5, V=50)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.train import losses as L

B, T_LEN, V = 2, 5, 50

CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("total_variation", {}),
    ("generalized_jsd", {"beta": 0.5}),
    ("generalized_jsd", {"beta": 0.1}),
    ("generalized_jsd", {"beta": 0.9, "normalized": False}),
    ("skew_forward_kl", {"alpha": 0.1}),
    ("skew_reverse_kl", {"alpha": 0.3}),
]
CASE_IDS = [m + "".join(f"-{k}={v}" for k, v in kw.items()) for m, kw in CASES]


def make(seed: int = 0, scale: float = 2.0, b: int = B, l: int = T_LEN, v: int = V):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, l, v, generator=g) * scale
    t = torch.randn(b, l, v, generator=g) * scale
    labels = torch.randint(0, v, (b, l), generator=g)
    labels[0, :2] = -100  # prompt-like masked prefix
    labels[1, -1] = -100  # padding
    return s, t, labels


def ref_per_token(method: str, s, t, temperature=1.0, **kw):
    """Naive float64 reference, straight from the paper definitions. [N, V] -> [N]."""
    p = torch.softmax(t.double() / temperature, -1)
    q = torch.softmax(s.double() / temperature, -1)
    kl = lambda a, b: (a * (a.log() - b.log())).sum(-1)  # noqa: E731
    if method == "forward_kl":
        return kl(p, q)
    if method == "reverse_kl":
        return kl(q, p)
    if method == "total_variation":
        return 0.5 * (p - q).abs().sum(-1)
    if method == "generalized_jsd":
        beta = kw["beta"]
        m = beta * p + (1 - beta) * q
        raw = beta * kl(p, m) + (1 - beta) * kl(q, m)
        return raw / (beta * (1 - beta)) if kw.get("normalized", True) else raw
    if method == "skew_forward_kl":
        return kl(p, kw["alpha"] * p + (1 - kw["alpha"]) * q)
    if method == "skew_reverse_kl":
        return kl(q, kw["alpha"] * q + (1 - kw["alpha"]) * p)
    raise AssertionError(method)


def ref_loss(method, s, t, labels, temperature=1.0, scale_t2=True, **kw):
    valid = labels != -100
    per = ref_per_token(method, s[valid], t[valid], temperature, **kw)
    return per.mean() * (temperature ** 2 if scale_t2 else 1.0)


# ---------------------------------------------------------------- dense values

@pytest.mark.parametrize("method,kw", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_matches_float64_reference(method, kw, temperature):
    s, t, labels = make(1)
    got = L.kd_loss(s, t, labels, method=method, temperature=temperature, **kw)
    want = ref_loss(method, s, t, labels, temperature, **kw)
    assert got.dtype == torch.float32 and got.shape == ()
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6)


def test_named_wrappers_match_kd_loss():
    s, t, labels = make(2)
    assert torch.equal(L.forward_kl(s, t, labels), L.kd_loss(s, t, labels, method="forward_kl"))
    assert torch.equal(L.reverse_kl(s, t, labels), L.kd_loss(s, t, labels, method="reverse_kl"))
    assert torch.equal(L.total_variation(s, t, labels), L.kd_loss(s, t, labels, method="total_variation"))
    assert torch.equal(L.generalized_jsd(s, t, labels, beta=0.3),
                       L.kd_loss(s, t, labels, method="generalized_jsd", beta=0.3))
    assert torch.equal(L.skew_forward_kl(s, t, labels, alpha=0.2),
                       L.kd_loss(s, t, labels, method="skew_forward_kl", alpha=0.2))
    assert torch.equal(L.skew_reverse_kl(s, t, labels, alpha=0.2),
                       L.kd_loss(s, t, labels, method="skew_reverse_kl", alpha=0.2))


@pytest.mark.parametrize("method,kw", CASES, ids=CASE_IDS)
def test_zero_when_student_equals_teacher(method, kw):
    s, _, labels = make(3)
    for temperature in (1.0, 3.0):
        loss = L.kd_loss(s, s.clone(), labels, method=method, temperature=temperature, **kw)
        assert abs(loss.item()) < 1e-6


@pytest.mark.parametrize("method,kw", CASES, ids=CASE_IDS)
def test_nonnegative(method, kw):
    for seed in range(4):
        for scale in (0.1, 2.0, 20.0):  # near-uniform to very peaked
            s, t, labels = make(seed, scale)
            per = L.kd_loss(s, t, labels, method=method, reduction="sum", **kw)
            assert torch.isfinite(per) and per.item() >= -1e-6


# ---------------------------------------------------------- JSD / skew specifics

def test_unnormalized_jsd_half_bounded_by_ln2():
    ln2 = math.log(2.0)
    for seed in range(3):
        s, t, labels = make(seed, scale=50.0)  # very peaked
        # disjoint one-hots are the worst case: JSD(0.5) -> ln 2
        s[..., 0] += 1e3
        t[..., 1] += 1e3
        for i in range(B):
            for j in range(T_LEN):
                one = torch.zeros(1, 1, dtype=torch.long)
                val = L.generalized_jsd(s[i:i + 1, j:j + 1], t[i:i + 1, j:j + 1], one,
                                        beta=0.5, normalized=False)
                assert 0.69 < val.item() <= ln2 + 1e-6
    s, t, labels = make(4)
    raw = L.generalized_jsd(s, t, labels, beta=0.5, normalized=False)
    assert raw.item() <= ln2
    norm = L.generalized_jsd(s, t, labels, beta=0.5)
    assert torch.allclose(norm, 4 * raw, rtol=1e-5)


def test_jsd_endpoints_and_continuity():
    s, t, labels = make(5)
    fkl, rkl = L.forward_kl(s, t, labels), L.reverse_kl(s, t, labels)
    for normalized in (True, False):  # TRL special-cases the endpoints the same way
        assert torch.allclose(L.generalized_jsd(s, t, labels, beta=0.0, normalized=normalized), fkl)
        assert torch.allclose(L.generalized_jsd(s, t, labels, beta=1.0, normalized=normalized), rkl)
    betas = (1e-2, 1e-3, 1e-4, 1e-6)
    near0 = [L.generalized_jsd(s, t, labels, beta=b) for b in betas]
    near1 = [L.generalized_jsd(s, t, labels, beta=1 - b) for b in betas]
    # the stable formula matches the float64 definition right up to the ends
    for b, x0, x1 in zip(betas, near0, near1):
        assert abs(x0.item() - ref_loss("generalized_jsd", s, t, labels, beta=b).item()) < 1e-5
        assert abs(x1.item() - ref_loss("generalized_jsd", s, t, labels, beta=1 - b).item()) < 1e-5
    err0 = [abs(x.item() - fkl.item()) / fkl.item() for x in near0]
    err1 = [abs(x.item() - rkl.item()) / rkl.item() for x in near1]
    # O(beta) convergence; the constant is large-ish for these peaked random inputs
    assert err0[2] < 1e-2 and err1[2] < 1e-2
    assert err0[3] < 1e-4 and err1[3] < 1e-4
    assert all(a > b for a, b in zip(err0, err0[1:])) and all(a > b for a, b in zip(err1, err1[1:]))


def test_skew_alpha_zero_is_plain_kl():
    s, t, labels = make(6)
    assert torch.allclose(L.skew_forward_kl(s, t, labels, alpha=0.0), L.forward_kl(s, t, labels))
    assert torch.allclose(L.skew_reverse_kl(s, t, labels, alpha=0.0), L.reverse_kl(s, t, labels))
    # continuity at alpha -> 0 (the mixture formula is used for alpha > 0); the slope is
    # chi-square-like, large for peaked inputs, so check O(alpha) convergence + the float64 value
    for name, plain in (("skew_forward_kl", L.forward_kl(s, t, labels)),
                        ("skew_reverse_kl", L.reverse_kl(s, t, labels))):
        errs = []
        for a in (1e-3, 1e-5, 1e-7):
            val = L.kd_loss(s, t, labels, method=name, alpha=a)
            assert abs(val.item() - ref_loss(name, s, t, labels, alpha=a).item()) < 1e-5
            errs.append(abs(val.item() - plain.item()))
        assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3 * plain.item()


# ------------------------------------------------------------------- chunking

@pytest.mark.parametrize("method,kw,alpha_ce",
                         [(m, kw, 0.3) for m, kw in CASES] + [("forward_kl", {}, 0.0)],
                         ids=[i + "-ce" for i in CASE_IDS] + ["forward_kl-pure"])
def test_chunked_equals_plain(method, kw, alpha_ce):
    s, t, labels = make(7)
    opts = dict(method=method, alpha_ce=alpha_ce, temperature=1.5, **kw)
    s0 = s.clone().requires_grad_()
    plain = L.kd_loss(s0, t, labels, **opts)
    plain.backward()
    for chunk in (1, 3, 1000):  # 1, a ragged split, larger than B*L
        s1 = s.clone().requires_grad_()
        chunked = L.kd_loss(s1, t, labels, chunk_size=chunk, **opts)
        chunked.backward()
        assert torch.allclose(chunked, plain, rtol=1e-6, atol=1e-6), chunk
        assert torch.allclose(s1.grad, s0.grad, rtol=1e-5, atol=1e-7), chunk
    with torch.no_grad():  # no-grad path skips checkpointing
        assert torch.allclose(L.kd_loss(s, t, labels, chunk_size=2, **opts), plain, atol=1e-6)


def test_chunking_keeps_no_fp32_intermediates_for_backward():
    s, t, labels = make(7, l=40)
    s.requires_grad_()

    def saved_new_storages(chunk):
        ptrs = set()

        def pack(x):
            if x.is_floating_point():
                ptrs.add(x.untyped_storage().data_ptr())
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            L.kd_loss(s, t, labels, method="generalized_jsd", alpha_ce=0.2, chunk_size=chunk)
        return ptrs - {s.untyped_storage().data_ptr(), t.untyped_storage().data_ptr()}

    assert saved_new_storages(None)   # unchunked: fp32 intermediates live until backward
    assert not saved_new_storages(4)  # chunked: checkpointing keeps only the inputs


def test_noncontiguous_inputs():
    s, t, labels = make(19, l=6)
    sv, tv, lv = s[:, :-1], t[:, :-1], labels[:, 1:]  # typical shifted views
    assert not sv.is_contiguous()
    for chunk in (None, 2):
        got = L.kd_loss(sv, tv, lv, method="reverse_kl", alpha_ce=0.5, chunk_size=chunk)
        want = L.kd_loss(sv.contiguous(), tv.contiguous(), lv.contiguous(), method="reverse_kl", alpha_ce=0.5)
        assert torch.allclose(got, want, atol=1e-6)


# ---------------------------------------------------------------------- top-k

def full_vocab_topk(t, seed=0):
    """All V teacher tokens, in a random order per position: [B, L, V] ids and logprobs."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.argsort(torch.rand(t.shape, generator=g), dim=-1)
    return ids, F.log_softmax(t, -1).gather(-1, ids)


@pytest.mark.parametrize("method", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [None, 3])
def test_topk_full_vocab_equals_dense(method, temperature, chunk):
    s, t, labels = make(8)
    ids, lps = full_vocab_topk(t)
    s0, s1 = s.clone().requires_grad_(), s.clone().requires_grad_()
    dense = L.kd_loss(s0, t, labels, method=method, temperature=temperature)
    sparse = L.topk_kd_loss(s1, ids, lps, labels, method=method, temperature=temperature, chunk_size=chunk)
    dense.backward()
    sparse.backward()
    assert torch.allclose(sparse, dense, rtol=1e-5, atol=1e-6)
    assert torch.allclose(s1.grad, s0.grad, rtol=1e-4, atol=1e-6)


def test_topk_buckets_by_hand():
    s = torch.tensor([[[1.0, 0.0, -1.0, 2.0]]])
    t = torch.tensor([[[3.0, 1.0, 0.0, -2.0]]])
    lab = torch.zeros(1, 1, dtype=torch.long)
    ids = torch.tensor([[[0, 2]]])
    lps = F.log_softmax(t, -1).gather(-1, ids)
    p, q = torch.softmax(t.double(), -1)[0, 0], torch.softmax(s.double(), -1)[0, 0]
    pb = torch.stack([p[0], p[2], p[1] + p[3]])
    qb = torch.stack([q[0], q[2], q[1] + q[3]])
    want_f = (pb * (pb / qb).log()).sum()
    want_r = (qb * (qb / pb).log()).sum()
    assert torch.allclose(L.topk_kd_loss(s, ids, lps, lab).double(), want_f, atol=1e-6)
    assert torch.allclose(L.topk_kd_loss(s, ids, lps, lab, method="reverse_kl").double(), want_r, atol=1e-6)


@pytest.mark.parametrize("method", ["forward_kl", "reverse_kl"])
def test_topk_partial_k_finite_with_gradient(method):
    s, t, labels = make(9, scale=5.0)
    lps, ids = F.log_softmax(t, -1).topk(5, dim=-1)
    s1 = s.clone().requires_grad_()
    loss = L.topk_kd_loss(s1, ids, lps, labels, method=method, temperature=2.0)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(s1.grad).all() and s1.grad.abs().sum() > 0
    # chunked top-k agrees too
    s2 = s.clone().requires_grad_()
    chunked = L.topk_kd_loss(s2, ids, lps, labels, method=method, temperature=2.0, chunk_size=2)
    chunked.backward()
    assert torch.allclose(chunked, loss, atol=1e-6) and torch.allclose(s2.grad, s1.grad, atol=1e-6)


def test_topk_padding_and_mask_equal_smaller_k():
    s, t, labels = make(10)
    lps, ids = F.log_softmax(t, -1).topk(3, dim=-1)
    base = L.topk_kd_loss(s, ids, lps, labels)
    pad_ids = torch.cat([ids, torch.full_like(ids[..., :2], -1)], -1)
    pad_lps = torch.cat([lps, torch.zeros_like(lps[..., :2])], -1)
    assert torch.allclose(L.topk_kd_loss(s, pad_ids, pad_lps, labels), base, atol=1e-6)
    inf_ids = torch.cat([ids, torch.full_like(ids[..., :2], V + 7)], -1)  # junk ids, but absent
    inf_lps = torch.cat([lps, torch.full_like(lps[..., :2], float("-inf"))], -1)
    assert torch.allclose(L.topk_kd_loss(s, inf_ids, inf_lps, labels), base, atol=1e-6)
    mask = torch.ones_like(pad_ids, dtype=torch.bool)
    mask[..., 3:] = False
    junk_lps = torch.cat([lps, torch.full_like(lps[..., :2], -0.5)], -1)
    assert torch.allclose(L.topk_kd_loss(s, inf_ids, junk_lps, labels, teacher_topk_mask=mask), base, atol=1e-6)


def test_topk_zero_when_student_matches_teacher_buckets():
    s, _, labels = make(11)
    lps, ids = F.log_softmax(s, -1).topk(4, dim=-1)
    for temperature in (1.0, 0.5, 2.0):  # bucket tempering keeps the fixed point
        for method in ("forward_kl", "reverse_kl"):
            loss = L.topk_kd_loss(s, ids, lps, labels, method=method, temperature=temperature)
            assert abs(loss.item()) < 1e-5


# ------------------------------------------------------- masking / reductions

@pytest.mark.parametrize("method,kw", CASES, ids=CASE_IDS)
def test_masked_positions_contribute_nothing(method, kw):
    s, t, labels = make(12)
    masked = labels == -100
    s0 = s.clone().requires_grad_()
    base = L.kd_loss(s0, t, labels, method=method, alpha_ce=0.2, **kw)
    base.backward()
    assert torch.all(s0.grad[masked] == 0)
    s2, t2 = s.clone(), t.clone()
    s2[masked] = float("nan")  # never read, so even NaN there is harmless
    t2[masked] = 1e4
    assert torch.equal(L.kd_loss(s2, t2, labels, method=method, alpha_ce=0.2, **kw), base.detach())
    assert torch.equal(L.kd_loss(s2, t2, labels, method=method, alpha_ce=0.2, chunk_size=2, **kw),
                       L.kd_loss(s, t, labels, method=method, alpha_ce=0.2, chunk_size=2, **kw))


def test_all_masked_returns_zero_not_nan():
    s, t, _ = make(13)
    labels = torch.full((B, T_LEN), -100)
    ids, lps = full_vocab_topk(t)
    for reduction in ("mean", "sum"):
        for chunk in (None, 2):
            s1 = s.clone().requires_grad_()
            losses = [L.kd_loss(s1, t, labels, method="generalized_jsd", alpha_ce=0.5,
                                reduction=reduction, chunk_size=chunk),
                      L.topk_kd_loss(s1, ids, lps, labels, reduction=reduction, chunk_size=chunk)]
            for loss in losses:
                assert loss.item() == 0.0 and not torch.isnan(loss)
            sum(losses).backward()
            assert torch.all(s1.grad == 0)


@pytest.mark.parametrize("method,kw", CASES[:4], ids=CASE_IDS[:4])
def test_grad_accumulation_sum_equals_big_batch_mean(method, kw):
    s, t, labels = make(14, b=4)
    labels[2, :4] = -100  # micro-batches get different valid counts
    opts = dict(method=method, alpha_ce=0.25, **kw)
    s0 = s.clone().requires_grad_()
    big = L.kd_loss(s0, t, labels, **opts)
    big.backward()
    n_total = int((labels != -100).sum())
    s1 = s.clone().requires_grad_()
    acc = 0.0
    for sl in (slice(0, 1), slice(1, 3), slice(3, 4)):
        part = L.kd_loss(s1[sl], t[sl], labels[sl], reduction="sum", **opts) / n_total
        part.backward()
        acc = acc + part.item()
    assert math.isclose(acc, big.item(), rel_tol=1e-5)
    assert torch.allclose(s1.grad, s0.grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------- temperature / CE

@pytest.mark.parametrize("method,kw", CASES, ids=CASE_IDS)
def test_temperature_scaling(method, kw):
    s, t, labels = make(15)
    T = 2.5
    scaled = L.kd_loss(s, t, labels, method=method, temperature=T, **kw)
    unscaled = L.kd_loss(s, t, labels, method=method, temperature=T, scale_t2=False, **kw)
    assert torch.allclose(scaled, T ** 2 * unscaled, rtol=1e-6)
    # T divides the logits: equals the T=1 loss on logits / T, times T^2
    assert torch.allclose(unscaled, L.kd_loss(s / T, t / T, labels, method=method, **kw), rtol=1e-5)
    # at T=1 scale_t2 is irrelevant
    assert torch.equal(L.kd_loss(s, t, labels, method=method, **kw),
                       L.kd_loss(s, t, labels, method=method, scale_t2=False, **kw))


def test_alpha_ce_one_is_cross_entropy_and_mixing_is_linear():
    s, t, labels = make(16)
    ce = F.cross_entropy(s.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    for T in (1.0, 2.0):  # CE is always taken at T=1
        got = L.kd_loss(s, t, labels, alpha_ce=1.0, temperature=T)
        assert torch.allclose(got, ce, rtol=1e-6)
    kd = L.kd_loss(s, t, labels, method="reverse_kl", temperature=2.0)
    mix = L.kd_loss(s, t, labels, method="reverse_kl", temperature=2.0, alpha_ce=0.25)
    assert torch.allclose(mix, 0.75 * kd + 0.25 * ce, rtol=1e-6)


def test_low_precision_inputs_computed_in_fp32():
    s, t, labels = make(17)
    got = L.kd_loss(s.bfloat16(), t.bfloat16(), labels, method="generalized_jsd")
    want = L.kd_loss(s.bfloat16().float(), t.bfloat16().float(), labels, method="generalized_jsd")
    assert got.dtype == torch.float32 and torch.equal(got, want)


# ------------------------------------------------------------- bad arguments

def test_bad_arguments_raise_value_error():
    s, t, labels = make(18)
    with pytest.raises(ValueError, match=r"unknown method 'kl'.*forward_kl, reverse_kl, generalized_jsd"):
        L.kd_loss(s, t, labels, method="kl")
    for beta in (-0.1, 1.1):
        with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
            L.generalized_jsd(s, t, labels, beta=beta)
    for alpha in (-0.5, 1.0):
        with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\)"):
            L.skew_forward_kl(s, t, labels, alpha=alpha)
    with pytest.raises(ValueError, match="alpha_ce"):
        L.kd_loss(s, t, labels, alpha_ce=1.5)
    for temperature in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="temperature must be"):
            L.forward_kl(s, t, labels, temperature=temperature)
    with pytest.raises(ValueError, match=r"\(2, 5, 49\).*\(2, 5, 50\)"):
        L.forward_kl(s, t[..., :49], labels)
    with pytest.raises(ValueError, match=r"labels shape \(2, 4\).*\(2, 5, 50\)"):
        L.forward_kl(s, t, labels[:, :4])
    with pytest.raises(ValueError, match="reduction"):
        L.forward_kl(s, t, labels, reduction="batchmean")
    with pytest.raises(ValueError, match="chunk_size"):
        L.forward_kl(s, t, labels, chunk_size=0)
    with pytest.raises(ValueError, match="unexpected keyword"):
        L.kd_loss(s, t, labels, method="forward_kl", beta=0.5)
    with pytest.raises(ValueError, match="labels must be -100 or in"):
        L.kd_loss(s, t, torch.full_like(labels, V), alpha_ce=0.5)
    lps, ids = F.log_softmax(t, -1).topk(3, dim=-1)
    with pytest.raises(ValueError, match="expected one of: forward_kl, reverse_kl"):
        L.topk_kd_loss(s, ids, lps, labels, method="generalized_jsd")
    with pytest.raises(ValueError, match=r"teacher_topk_ids shape \(2, 5, 3\).*\(2, 5, 2\)"):
        L.topk_kd_loss(s, ids, lps[..., :2], labels)
    with pytest.raises(ValueError, match="ids >= vocab"):
        L.topk_kd_loss(s, ids + V, lps, labels)
