"""Tests for low-rank factorization: ASVD / SVD-LLM factor math, rank allocation, and the model driver.

Pure CPU and fast: random matrices in float64 for the math, the in-memory byte-level tiny Llama for the
model (see ``byte_models``), so nothing is downloaded.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math

import pytest
import torch

from byte_models import VOCAB, byte_tokenizer, tiny_llama
from compress.artifact import load_compressed, new_manifest, save_compressed
from compress.calibrate import InputStats, collect_input_stats
from compress.factorize import (
    LowRankLinear,
    allocate_ranks,
    allocated_params,
    break_even,
    low_rank_from_factors,
    svd_factors,
)
from compress.lowrank_aware import (
    asvd_factors,
    calibrate_layers,
    cholesky_whitening,
    collect_output_fisher,
    component_losses,
    factorize_model_aware,
    svdllm_factors,
)


def correlated_inputs(in_f: int = 48, n: int = 400, seed: int = 0) -> torch.Tensor:
    """``X`` [in, n] float64: strongly correlated channels, a decaying spectrum and two outlier channels."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(in_f, in_f, generator=g, dtype=torch.float64) * torch.logspace(0, -2, in_f, dtype=torch.float64)
    x = mix @ torch.randn(in_f, n, generator=g, dtype=torch.float64)
    x[3] *= 20.0
    x[17] *= 8.0
    return x


def weight(out_f: int = 32, in_f: int = 48, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def out_err(w: torch.Tensor, up: torch.Tensor, down: torch.Tensor, x: torch.Tensor) -> float:
    return torch.linalg.norm((w - up @ down) @ x).item()


# --- factor math -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["svd", "asvd", "svdllm"])
def test_factor_shapes_and_dtype(method):
    w, x = weight(24, 40, dtype=torch.float32), correlated_inputs(40).float()
    fn = {"svd": lambda r: svd_factors(w, r), "asvd": lambda r: asvd_factors(w, x.abs().mean(1), r),
          "svdllm": lambda r: svdllm_factors(w, x @ x.T, r)}[method]
    up, down = fn(7)
    assert up.shape == (24, 7) and down.shape == (7, 40)
    assert up.dtype == down.dtype == torch.float32
    up, down = fn(100)  # clamped to min(out, in), as svd_factors does
    assert up.shape == (24, 24) and down.shape == (24, 40)


@pytest.mark.parametrize("damp", [0.0, 0.1])
def test_full_rank_reproduces_weight(damp):
    w, x = weight(), correlated_inputs()
    up, down = asvd_factors(w, x.abs().mean(1), 32, alpha=0.5)
    torch.testing.assert_close(up @ down, w, rtol=0, atol=1e-9)
    up, down = svdllm_factors(w, x @ x.T, 32, damp=damp)
    torch.testing.assert_close(up @ down, w, rtol=0, atol=1e-9)


@pytest.mark.parametrize("rank", [2, 8, 16, 28])
def test_svdllm_is_the_activation_weighted_optimum(rank):
    w, x = weight(), correlated_inputs()
    gram = x @ x.T
    best = out_err(w, *svdllm_factors(w, gram, rank), x)
    # Closed form, computed independently of the Gram: min over rank-r W' of ||(W - W')X|| is the tail
    # energy of W X (Eckart–Young; attained by (WX)_r X^+ since X has full row rank).
    tail = torch.linalg.svdvals(w @ x)[rank:]
    assert best == pytest.approx(tail.square().sum().sqrt().item(), rel=1e-7)
    plain = out_err(w, *svd_factors(w, rank), x)
    asvd = out_err(w, *asvd_factors(w, x.abs().mean(1), rank), x)
    assert best < 0.95 * asvd and best < 0.95 * plain
    # ...and no nearby rank-r matrix does better.
    up, down = svdllm_factors(w, gram, rank)
    g = torch.Generator().manual_seed(rank)
    for _ in range(5):
        noisy_up = up + 1e-3 * torch.randn(up.shape, generator=g, dtype=up.dtype)
        assert out_err(w, noisy_up, down, x) >= best


def test_svdllm_singular_gram_falls_back_and_stays_optimal(caplog):
    w, x = weight(), correlated_inputs(n=20)  # 20 tokens < 48 features: the Gram has rank 20
    with caplog.at_level(logging.WARNING, logger="compress.lowrank_aware"):
        up, down = svdllm_factors(w, x @ x.T, 8)
    assert "not positive definite" in caplog.text
    assert torch.isfinite(up).all() and torch.isfinite(down).all()
    tail = torch.linalg.svdvals(w @ x)[8:]
    assert out_err(w, up, down, x) == pytest.approx(tail.square().sum().sqrt().item(), rel=1e-4)


def test_cholesky_whitening_damp_is_a_ridge():
    x = correlated_inputs()
    gram = x @ x.T
    chol = cholesky_whitening(gram, damp=0.01)
    expected = gram + 0.01 * gram.diagonal().mean() * torch.eye(48, dtype=gram.dtype)
    torch.testing.assert_close(chol @ chol.T, expected)
    assert torch.equal(chol, torch.tril(chol))


def test_factor_argument_errors():
    w, x = weight(), correlated_inputs()
    with pytest.raises(ValueError, match=r"\[in, in\]"):
        svdllm_factors(w, torch.eye(32, dtype=w.dtype), 4)
    with pytest.raises(ValueError, match="damp"):
        svdllm_factors(w, x @ x.T, 4, damp=-1.0)
    with pytest.raises(ValueError, match="rank"):
        svdllm_factors(w, x @ x.T, 0)
    with pytest.raises(ValueError, match="indefinite|positive diagonal"):
        cholesky_whitening(-torch.eye(4, dtype=torch.float64) + 0.5)
    with pytest.raises(ValueError, match="abs_mean"):
        asvd_factors(w, torch.ones(32), 4)
    with pytest.raises(ValueError, match="alpha"):
        asvd_factors(w, torch.ones(48), 4, alpha=2.0)
    with pytest.raises(ValueError, match="do not fit"):
        low_rank_from_factors(torch.nn.Linear(48, 32), torch.zeros(32, 4), torch.zeros(5, 48))


def test_asvd_dead_channel_stays_finite():
    w, x = weight(), correlated_inputs()
    x[5] = 0.0
    up, down = asvd_factors(w, x.abs().mean(1), 32)
    torch.testing.assert_close(up @ down, w, rtol=0, atol=1e-6)


# --- rank allocation ---------------------------------------------------------------------------------

BLOCK = {"q": (48, 48), "k": (16, 48), "v": (16, 48), "o": (48, 48), "gate": (128, 48), "up": (128, 48),
         "down": (48, 128)}


def spectra(blocks: int = 3, seed: int = 0) -> dict[str, tuple[int, int, torch.Tensor]]:
    """Layers shaped like a scaled-down SmolLM2 block, each with its own power-law spectrum decay."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for b in range(blocks):
        for kind, (o, i) in BLOCK.items():
            decay = 0.2 + 1.5 * torch.rand((), generator=g).item()
            s = torch.arange(1, min(o, i) + 1, dtype=torch.float64).pow(-decay) * (1 + 5 * torch.rand((), generator=g))
            layers[f"layers.{b}.{kind}"] = (o, i, s)
    return layers


@pytest.mark.parametrize("strategy", ["energy", "loss", "uniform", "per_layer"])
@pytest.mark.parametrize("target", [0.4, 0.6, 0.8, 0.95])
def test_allocation_meets_target_and_never_wastes_parameters(strategy, target):
    layers = spectra()
    ranks = allocate_ranks(layers, target, strategy)
    assert set(ranks) == set(layers)
    dense = sum(o * i for o, i, _ in layers.values())
    budget = int(target * dense)
    total = allocated_params(layers, ranks)
    assert total <= budget
    if strategy in ("energy", "loss"):  # within one rank step of the budget
        assert budget - total < max(o + i for o, i, _ in layers.values())
    if strategy == "per_layer":  # every layer within one rank step of its own share
        for name, rank in ranks.items():
            o, i, _ = layers[name]
            assert 0 <= target * o * i - rank * (o + i) < o + i
    for name, rank in ranks.items():
        o, i, _ = layers[name]
        assert rank is None or 1 <= rank < break_even(o, i) and rank * (o + i) < o * i, (name, rank)
    assert any(r is not None for r in ranks.values())


def log_energy(layers: dict, ranks: dict) -> float:
    """The allocation objective: sum over layers of log(kept spectral energy fraction); dense keeps all."""
    total = 0.0
    for name, (_, _, s) in layers.items():
        if ranks[name] is not None:
            e = s.double().square()
            total += math.log(e[: ranks[name]].sum() / e.sum())
    return total


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_energy_allocation_beats_the_baselines_on_its_objective(target):
    layers = spectra(seed=3)
    best = log_energy(layers, allocate_ranks(layers, target))
    for strategy in ("uniform", "per_layer"):
        assert best > log_energy(layers, allocate_ranks(layers, target, strategy))


def test_energy_allocation_near_the_brute_force_optimum():
    """Three small layers: enumerate every allocation within budget; the Lagrangian + greedy one is within
    the value of one rank step of the optimum (it is exact for the budget the Lagrangian part spends)."""
    for seed in range(6):
        layers = {k: v for k, v in spectra(blocks=1, seed=seed).items() if k.rsplit(".", 1)[-1] in ("q", "k", "up")}
        budget_ratio = 0.6
        budget = int(budget_ratio * sum(o * i for o, i, _ in layers.values()))
        choices = [[*range(1, break_even(o, i)), None] for o, i, _ in layers.values()]
        best = max(log_energy(layers, dict(zip(layers, combo))) for combo in itertools.product(*choices)
                   if allocated_params(layers, dict(zip(layers, combo))) <= budget)
        got = allocate_ranks(layers, budget_ratio)
        step = max(math.log(s[1] ** 2 / s[0] ** 2 + 1) for _, _, s in layers.values())
        assert best - step <= log_energy(layers, got) <= best + 1e-12


def test_allocation_follows_the_spectrum():
    flat = torch.ones(48, dtype=torch.float64)
    steep = torch.arange(1, 49, dtype=torch.float64).pow(-2.0)
    spike = torch.zeros(48, dtype=torch.float64)
    spike[0] = 10.0
    layers = {"flat": (48, 48, flat), "steep": (48, 48, steep), "spike": (48, 48, spike)}
    ranks = allocate_ranks(layers, 0.5)
    assert ranks["spike"] == 1  # a rank-1 weight needs nothing more
    assert ranks["flat"] is None or ranks["flat"] > ranks["steep"]


def test_allocation_errors():
    layers = spectra(blocks=1)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="target_param_ratio"):
            allocate_ranks(layers, bad)
    with pytest.raises(ValueError, match="rank-1 minimum"):
        allocate_ranks(layers, 0.01)
    with pytest.raises(ValueError, match="strategy"):
        allocate_ranks(layers, 0.8, "greedy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected 8 values"):
        allocate_ranks({"a": (8, 8, torch.ones(5))}, 0.8)
    with pytest.raises(ValueError, match="losses"):
        allocate_ranks({"a": (8, 8, -torch.ones(8))}, 0.8, "loss")


# --- the model driver --------------------------------------------------------------------------------

BATCHES = torch.randint(0, VOCAB, (6, 48), generator=torch.Generator().manual_seed(2))


def decoder_linear_weights(model) -> int:
    return sum(m.weight.numel() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in n)


@pytest.mark.parametrize("method,allocation", [("svd", "energy"), ("svd", "uniform"), ("asvd", "energy"),
                                               ("svdllm", "energy"), ("svdllm", "per_layer"), ("svdllm", "fisher")])
def test_tiny_model_meets_target_and_round_trips(tmp_path, method, allocation):
    model = tiny_llama()
    before = decoder_linear_weights(model)
    batches = None if method == "svd" else BATCHES
    result = factorize_model_aware(model, batches, method, 0.2, allocation, batch_size=4)
    after = decoder_linear_weights(model)
    assert result["params_before"] == before and result["params_after"] == after
    assert after <= result["params_target"] == int(0.8 * before)
    if allocation in ("energy", "fisher"):  # within one rank step of the budget
        assert result["params_target"] - after < 128 + 64  # one rank step of the widest layer
    assert result["factorized"] and all(isinstance(model.get_submodule(n), LowRankLinear)
                                        for n in result["factorized"])
    manifest = new_manifest()
    manifest["factorized"].update(result["factorized"])
    save_compressed(model, tmp_path / "art", byte_tokenizer(), manifest)
    loaded = load_compressed(tmp_path / "art")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=BATCHES[:2]).logits, model(input_ids=BATCHES[:2]).logits)


def test_shared_input_gram_equals_the_layers_own():
    """k/v reuse q's Gram and up reuses gate's: the factors equal those from each layer's own statistics."""
    model = tiny_llama()
    original = copy.deepcopy(model)
    result = factorize_model_aware(model, BATCHES, "svdllm", 0.2, batch_size=4)
    names = [n for n in result["factorized"] if n.endswith(("k_proj", "v_proj", "up_proj"))]
    assert names
    own = collect_input_stats(original, BATCHES, {n: original.get_submodule(n) for n in names}, batch_size=4)
    for name in names:
        lr = model.get_submodule(name)
        up, down = svdllm_factors(original.get_submodule(name).weight, own[name].gram, lr.rank)
        torch.testing.assert_close(lr.up.weight @ lr.down.weight, up @ down, rtol=1e-4, atol=1e-5)


def test_precomputed_calibration_gives_the_same_model():
    a, b = tiny_llama(), tiny_llama()
    calibration = calibrate_layers(b, BATCHES, fisher=True, batch_size=4)
    stats = calibration.stats
    assert len(stats) == 14 and stats["model.layers.0.self_attn.k_proj"] is stats["model.layers.0.self_attn.q_proj"]
    assert calibration.fisher["model.layers.1.mlp.down_proj"].shape == (64,)
    ra = factorize_model_aware(a, BATCHES, "asvd", 0.3, "fisher", batch_size=4)
    rb = factorize_model_aware(b, None, "asvd", 0.3, "fisher", calibration=calibration)
    assert ra["factorized"] == rb["factorized"]
    with torch.no_grad():
        assert torch.equal(a(input_ids=BATCHES[:2]).logits, b(input_ids=BATCHES[:2]).logits)
    with pytest.raises(ValueError, match="lacks"):
        factorize_model_aware(tiny_llama(), None, "svdllm", 0.2, calibration=type(calibration)({}))


def test_output_fisher_is_the_mean_squared_output_gradient():
    model = tiny_llama()
    name = "model.layers.1.self_attn.o_proj"
    fisher = collect_output_fisher(model, BATCHES[:3], [name], batch_size=2)[name]
    kept = {}

    def keep(_module, _args, out):
        out.retain_grad()
        kept["out"] = out

    handle = model.get_submodule(name).register_forward_hook(keep)
    embeds = model.get_input_embeddings()(BATCHES[:3]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), BATCHES[:3, 1:].flatten(),
                                      reduction="sum").backward()
    handle.remove()
    expected = kept["out"].grad.double().square().sum((0, 1)) / BATCHES[:3, 1:].numel()
    torch.testing.assert_close(fisher, expected, rtol=1e-4, atol=1e-12)
    assert all(p.requires_grad for p in model.parameters())  # restored after the pass


@pytest.mark.parametrize("method", ["svd", "asvd", "svdllm"])
def test_component_losses_are_fisher_weighted_output_errors(method):
    """Δ_r = ½ ||diag(√f) (W_{r+1} - W_r) X||² exactly when the Fisher diagonal is the same for every token."""
    w, x = weight(), correlated_inputs()
    f = torch.rand(32, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.1
    stats = InputStats(x @ x.T, x.abs().sum(1), x.shape[1])
    losses = component_losses(w, method, stats, f)
    fn = {"svd": lambda r: svd_factors(w, r), "asvd": lambda r: asvd_factors(w, stats.abs_mean, r),
          "svdllm": lambda r: svdllm_factors(w, stats.gram, r)}[method]
    for r in (1, 5, 20):
        (u1, d1), (u0, d0) = fn(r + 1), fn(r)
        component = (u1 @ d1 - u0 @ d0) @ x
        expected = 0.5 * (f[:, None] * component.square()).sum().item()
        assert losses[r].item() == pytest.approx(expected, rel=1e-5)  # svd_factors computes in fp32


def test_auto_allocation_uses_fisher_when_data_is_given():
    assert factorize_model_aware(tiny_llama(), None, "svd", 0.2)["allocation"] == "energy"  # data-free stays so
    assert factorize_model_aware(tiny_llama(), BATCHES, "svdllm", 0.2, batch_size=4)["allocation"] == "fisher"


def test_driver_errors():
    with pytest.raises(ValueError, match="method"):
        factorize_model_aware(tiny_llama(), BATCHES, "awq", 0.2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="param_reduction"):
        factorize_model_aware(tiny_llama(), BATCHES, "svdllm", 1.0)
    with pytest.raises(ValueError, match="calibration batches"):
        factorize_model_aware(tiny_llama(), None, "asvd", 0.2)
    with pytest.raises(ValueError, match="allocation"):
        factorize_model_aware(tiny_llama(), BATCHES, "svdllm", 0.2, "greedy")  # type: ignore[arg-type]
