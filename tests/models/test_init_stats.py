"""Initialisation parity with ``transformers``: per-tensor statistics of jaxstack's random init against
the same config's ``transformers`` model (``_init_weights`` after ``torch.manual_seed``), no download.

Families: Kimi Linear (``kimi-linear-tiny``: KDA, NoPE MLA, dense and MoE FFNs, pad token 0) and the
Llama family (Llama with tied embeddings and GQA; Qwen2 with q/k/v biases, untied; the scanned-layer
stack). The HF config comes from the family's own ``config_to_hf`` and HF tensor names are matched to
jaxstack parameters through the checkpoint tensor table (``checkpoint.save_tensors`` puts ours in HF
layout), so this also checks the table: a tensor on one side that the table does not map fails.

Per tensor kind (the HF name with layer / expert numbers removed, plus its shape), pooled over layers,
experts and ``SEEDS`` seeds on each side:

* **exact elements**: an element with one value across all HF seeds (norm weights 1, biases 0, the
  router's correction bias 0, the pad token's embedding row 0) must have exactly that value in every
  jaxstack seed, and an element constant across all jaxstack seeds must be constant in HF too;
* **random elements**, each side a sample of n values (n ~ 10^2..10^5):
  - mean: ``|mean_a - mean_b| <= 5 * sqrt(var_a / n_a + var_b / n_b)`` (5 standard errors);
  - std: ``|sd_a - sd_b| <= 5 * sqrt(se_a^2 + se_b^2)``, with ``se = sd * sqrt((kurtosis - 1) / (4 n))``
    (the large-sample standard error of a sample std, any distribution with a 4th moment);
  - distribution family: the two-sample Kolmogorov-Smirnov statistic ``D <= 2.69 * sqrt((n_a + n_b)
    / (n_a n_b))``, its critical value at alpha = 1e-6 (``sqrt(-ln(alpha / 2) / 2) = 2.69``): normal
    vs uniform of the same std differ by D ~ 0.06, which this detects from n ~ 10^4;
  - range (min / max, the uniform inits' bounds): each side's minimum must fall in the other side's
    lowest ``14/n_a + 14/n_b`` quantile, and the maximum in the highest one. For n iid draws,
    P(min above the p-quantile) = (1-p)^n <= exp(-n p) = 1e-6 at p = 14/n; the second term allows for
    the other side's empirical quantile (same bound).
* no two random tensors of one seed are equal (a reused RNG key would make them so).

All bounds are at ~1e-6 false-failure probability per check (a few hundred checks per run).
"""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
from flax import nnx

pytestmark = pytest.mark.oracle
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxstack.models import checkpoint
from jaxstack.models.configs import LlamaConfig, get_kimi_config
from jaxstack.models.kimi_linear import KimiLinearForCausalLM
from jaxstack.models.llama import LlamaForCausalLM

SEEDS = 8
SIGMAS = 5.0
KS_CRITICAL = 2.69  # sqrt(-ln(alpha / 2) / 2) at alpha = 1e-6
TAIL = 14.0  # -ln(1e-6): order-statistic bound on the min / max quantile
_MISSING = object()


def _kimi_hf_classes():
    """transformers' Kimi Linear classes, imported with ``fla`` hidden (its Triton kernels need a GPU;
    see test_kimi_linear_hf.py). Initialisation does not depend on the kernels."""
    saved = sys.modules.get("fla", _MISSING)
    sys.modules["fla"] = None
    try:
        from transformers.models.kimi_linear import (
            configuration_kimi_linear,
            modeling_kimi_linear,
        )
    finally:
        if saved is _MISSING:
            del sys.modules["fla"]
        else:
            sys.modules["fla"] = saved
    return configuration_kimi_linear.KimiLinearConfig, modeling_kimi_linear.KimiLinearForCausalLM


def _hf_model(config):
    """The transformers model class and config object for a jaxstack config (via config_to_hf)."""
    hf = checkpoint.family_for_config(config).config_to_hf(config, "float32")
    if isinstance(config, LlamaConfig):
        arch = hf["architectures"][0]
        config_class = transformers.Qwen2Config if arch == "Qwen2ForCausalLM" else transformers.LlamaConfig
        return getattr(transformers, arch), config_class(**hf)
    config_class, model_class = _kimi_hf_classes()
    return model_class, config_class(**hf)


def _hf_tensors(config, seed: int, tmp_path) -> dict[str, np.ndarray]:
    """{HF name: array} of the HF model built with torch.manual_seed(seed), as save_pretrained writes
    them (the on-disk names the tensor table maps; transformers converts its fused in-memory layout)."""
    from safetensors.numpy import load_file

    model_class, hf_config = _hf_model(config)
    torch.manual_seed(seed)
    model = model_class(hf_config).float()
    path = tmp_path / f"hf-{seed}"
    model.save_pretrained(path)
    files = sorted(path.glob("*.safetensors"))
    assert files, f"save_pretrained wrote no safetensors in {path}"
    tensors = {}
    for file in files:
        tensors.update(load_file(str(file)))
    return tensors


def _our_tensors(model_class, config, seed: int) -> dict[str, np.ndarray]:
    """{HF name: array} of our model initialised with nnx.Rngs(seed), put in HF layout by the table."""
    model = model_class(config, policy="fp32", rngs=nnx.Rngs(seed))
    flat = {p: v[...] for p, v in nnx.to_flat_state(nnx.state(model))}
    table = checkpoint.family_for_config(config).tensor_table(config)
    return checkpoint.save_tensors(table, flat, "float32")  # raises if a parameter has no HF tensor


def _canonical_names(config, hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF tensors under the table's primary names (aliases resolved); unmapped tensors fail."""
    table = checkpoint.family_for_config(config).tensor_table(config)
    primary = {spec.hf_name for spec in table.specs}
    alias = {a: spec.hf_name for spec in table.specs for a in spec.aliases}
    unmapped = sorted(n for n in hf if n not in primary and n not in alias and n not in table.ignored)
    assert not unmapped, f"HF tensors the tensor table does not map: {unmapped}"
    named = {alias.get(n, n): v for n, v in hf.items() if n not in table.ignored}
    missing = sorted(primary - set(named))
    assert not missing, f"tensor-table entries transformers does not have: {missing}"
    return named


def _kind(name: str, shape) -> str:
    return re.sub(r"\.\d+\.", ".N.", name) + str(tuple(shape))


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, "right") / a.size - np.searchsorted(b, grid, "right") / b.size)))


def _std_error_of_std(x: np.ndarray) -> float:
    sd = x.std()
    kurtosis = np.mean((x - x.mean()) ** 4) / sd ** 4
    return float(sd * math.sqrt(max(kurtosis - 1.0, 0.0) / (4 * x.size)))


def _compare_random(kind: str, ours: np.ndarray, theirs: np.ndarray) -> list[str]:
    """The failed checks (empty if all pass) for two pooled samples of one tensor kind."""
    failures = []
    na, nb = ours.size, theirs.size
    se_mean = math.sqrt(ours.var() / na + theirs.var() / nb)
    if abs(ours.mean() - theirs.mean()) > SIGMAS * se_mean:
        failures.append(f"{kind}: mean {ours.mean():.5g} vs HF {theirs.mean():.5g} (> {SIGMAS} x {se_mean:.2g})")
    se_std = math.hypot(_std_error_of_std(ours), _std_error_of_std(theirs))
    if abs(ours.std() - theirs.std()) > SIGMAS * se_std:
        failures.append(f"{kind}: std {ours.std():.5g} vs HF {theirs.std():.5g} (> {SIGMAS} x {se_std:.2g})")
    d, d_max = _ks_statistic(ours, theirs), KS_CRITICAL * math.sqrt((na + nb) / (na * nb))
    if d > d_max:
        failures.append(f"{kind}: KS distance {d:.3f} > {d_max:.3f} (different distributions, n={na}/{nb})")
    tail = TAIL / na + TAIL / nb
    for side, x, other in (("ours", ours, theirs), ("HF", theirs, ours)):
        low, high = np.mean(other < x.min()), np.mean(other > x.max())
        if low > tail or high > tail:
            failures.append(f"{kind}: {side} range [{x.min():.4g}, {x.max():.4g}] leaves {low:.3f} / {high:.3f} of "
                            f"the other side below / above it (bound {tail:.3f}; other range "
                            f"[{other.min():.4g}, {other.max():.4g}])")
    return failures


def _check_family(model_class, config, tmp_path) -> dict[str, tuple[int, float, float]]:
    ours = [_our_tensors(model_class, config, seed) for seed in range(SEEDS)]
    theirs = [_canonical_names(config, _hf_tensors(config, seed, tmp_path)) for seed in range(SEEDS)]
    assert set(ours[0]) == set(theirs[0]), sorted(set(ours[0]) ^ set(theirs[0]))
    failures = []
    pooled: dict[str, tuple[list, list]] = {}
    for name in sorted(ours[0]):
        a = np.stack([o[name] for o in ours]).astype(np.float64)
        b = np.stack([t[name] for t in theirs]).astype(np.float64)
        if a.shape != b.shape:
            failures.append(f"{name}: shape {a.shape[1:]} vs HF {b.shape[1:]}")
            continue
        fixed_b = np.all(b == b[:1], axis=0)  # constant across HF seeds: deterministic by formula
        fixed_a = np.all(a == a[:1], axis=0)
        if np.any(fixed_b & ~np.all(a == b[:1], axis=0)):
            bad = np.argwhere(fixed_b & ~np.all(a == b[:1], axis=0))[0]
            failures.append(f"{name}: element {tuple(bad)} is {b[(0, *bad)]} in every HF seed, ours "
                            f"{a[(slice(None), *bad)][:3]} ...")
        if np.any(fixed_a & ~fixed_b):
            bad = np.argwhere(fixed_a & ~fixed_b)[0]
            failures.append(f"{name}: element {tuple(bad)} is {a[(0, *bad)]} in every jaxstack seed, random in HF")
        random = ~fixed_b & ~fixed_a
        if random.any():
            group = pooled.setdefault(_kind(name, b.shape[1:]), ([], []))
            group[0].append(a[:, random].ravel())
            group[1].append(b[:, random].ravel())
    summary = {}
    for kind, (a_parts, b_parts) in sorted(pooled.items()):
        a, b = np.concatenate(a_parts), np.concatenate(b_parts)
        failures += _compare_random(kind, a, b)
        summary[kind] = (a.size, float(a.std()), float(b.std()))
    # A reused key makes two tensors (or two layers' copies of one) identical.
    for seed_tensors in ours[:2]:
        seen: dict[bytes, str] = {}
        for name, value in seed_tensors.items():
            if np.all(value == value.flat[0]):
                continue
            key = np.ascontiguousarray(value).tobytes()
            if key in seen:
                failures.append(f"{name} equals {seen[key]}: the same RNG key was used twice")
            seen[key] = name
    assert not failures, "init differs from transformers:\n" + "\n".join(failures)
    return summary


def test_kimi_linear_init_matches_transformers(tmp_path):
    config = get_kimi_config("kimi-linear-tiny")
    assert config.pad_token_id == 0  # exercised: transformers zeroes the pad token's embedding row
    summary = _check_family(KimiLinearForCausalLM, config, tmp_path)
    # Every KDA-specific tensor is compared as a random sample (not skipped as constant).
    for tensor in ("A_log", "dt_bias", "q_conv1d.weight", "f_b_proj.weight", "g_b_proj.weight", "b_proj.weight"):
        assert any(tensor in kind for kind in summary), tensor


LLAMA_CASES = {
    "llama-gqa-tied": LlamaConfig(vocab_size=301, hidden_size=60, intermediate_size=97, num_layers=3, num_heads=6,
                                  num_kv_heads=2, tie_word_embeddings=True, max_position_embeddings=128),
    "qwen2-bias-untied": LlamaConfig(vocab_size=200, hidden_size=48, intermediate_size=64, num_layers=2, num_heads=4,
                                     num_kv_heads=2, tie_word_embeddings=False, qkv_bias=True,
                                     max_position_embeddings=128, rope_theta=1e6),
    "llama-scan-layers": LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
                                     num_kv_heads=4, tie_word_embeddings=False, scan_layers=True,
                                     max_position_embeddings=128),
}


@pytest.mark.parametrize("name", list(LLAMA_CASES))
def test_llama_family_init_matches_transformers(name, tmp_path):
    _check_family(LlamaForCausalLM, LLAMA_CASES[name], tmp_path)


def test_the_checks_catch_a_wrong_init():
    """The statistics reject the old short-conv init (uniform, bound 1/sqrt(4)) against N(0, 0.02), a
    std off by 10% and a uniform of the right std, and accept a second draw of the same normal."""
    rng = np.random.default_rng(0)
    normal = 0.02 * rng.standard_normal(3 * 4 * 64 * SEEDS * 3)
    assert _compare_random("same", 0.02 * rng.standard_normal(normal.size), normal) == []
    assert _compare_random("conv", rng.uniform(-0.5, 0.5, normal.size), normal)
    assert _compare_random("std", 0.022 * rng.standard_normal(normal.size), normal)
    bound = 0.02 * math.sqrt(3)
    assert _compare_random("family", rng.uniform(-bound, bound, normal.size), normal)
