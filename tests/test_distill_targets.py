"""Compact top-k teacher targets: exactness at k = vocab, the lower bound, gradients, storage, files."""

from __future__ import annotations

import pytest
import torch

from adaptbench.methods.cd.targets import DEFAULT_TOP_K, CompactTargets, compact_kl, compress_topk, distill_loss, full_bytes_per_position, full_kl, topk_error
from adaptbench.errors import ConfigError, DataError


def random_pair(n=6, vocab=40, scale=3.0, seed=0):
    """Teacher log-probs and student logits with peaked-ish random distributions."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.log_softmax(torch.randn(n, vocab, generator=g) * scale, dim=-1)
    student = torch.randn(n, vocab, generator=g) * scale
    return teacher, student


def test_compress_keeps_topk_and_rest_mass():
    teacher, _ = random_pair()
    c = compress_topk(teacher, 5)
    assert c.ids.dtype == torch.int32 and c.ids.shape == (6, 5)
    assert c.logprobs.dtype == torch.float32 and c.rest.dtype == torch.float32 and c.rest.shape == (6,)
    top, ids = torch.topk(teacher, 5)
    assert torch.equal(c.ids.long(), ids) and torch.allclose(c.logprobs, top)
    total = c.logprobs.exp().sum(-1) + c.rest.exp()
    assert torch.allclose(total, torch.ones(6), atol=1e-6)
    assert not c.clamped and c.k == 5 and c.vocab_size == 40


def test_rest_bucket_is_stable_when_topk_holds_nearly_everything():
    # one token with all but ~1e-12 of the mass: 1 - sum(top) is 0 in float32, the rest is not
    logits = torch.full((1, 10), -30.0)
    logits[0, 3] = 0.0
    c = compress_topk(torch.log_softmax(logits, -1), 1)
    expected = torch.logsumexp(torch.full((9,), -30.0), 0)  # log(9 e^-30), relative to the near-1 top token
    assert torch.isfinite(c.rest).all() and abs(c.rest.item() - expected.item()) < 1e-4


def test_k_is_clamped_to_the_vocabulary():
    teacher, _ = random_pair(vocab=12)
    c = compress_topk(teacher, 50)
    assert c.k == 12 and c.requested_k == 50 and c.clamped
    assert torch.isneginf(c.rest).all()  # nothing left over


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_k_is_a_config_error(bad):
    teacher, _ = random_pair()
    with pytest.raises(ConfigError, match="cd.top_k"):
        compress_topk(teacher, bad)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_full_k_equals_full_kl(temperature):
    raw, student = random_pair(n=8, vocab=64, seed=1)
    teacher = torch.log_softmax(raw / temperature, -1)  # the caller scales the teacher
    compact = compact_kl(student, compress_topk(teacher, 64), temperature)
    reference = torch.nn.functional.kl_div(torch.log_softmax(student / temperature, -1), teacher,
                                           log_target=True, reduction="none").sum(-1)
    assert torch.allclose(compact, reference, atol=1e-5)
    assert torch.allclose(full_kl(teacher, student, temperature), reference, atol=1e-5)


def test_same_distribution_gives_zero():
    teacher, _ = random_pair()
    logits = teacher * 2.0  # student logits at T = 2 give back the teacher's distribution
    assert compact_kl(logits, compress_topk(teacher, 7), 2.0).abs().max() < 1e-5


@pytest.mark.parametrize("k", [1, 3, 10, 39])
def test_topk_kl_is_a_lower_bound_of_the_full_kl(k):
    for seed in range(5):
        teacher, student = random_pair(seed=seed)
        compact = compact_kl(student, compress_topk(teacher, k), 1.5)
        assert (compact >= -1e-6).all()
        assert (compact <= full_kl(teacher, student, 1.5) + 1e-5).all()


def test_error_shrinks_with_k():
    teacher, student = random_pair(n=16, vocab=200, seed=3)
    errors = [topk_error(teacher, student, k, 1.0) for k in (1, 10, 50, 200)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5


def test_gradients_flow_and_match_full_kl_at_full_k():
    teacher, student = random_pair(n=4, vocab=30, seed=2)
    a = student.clone().requires_grad_(True)
    compact_kl(a, compress_topk(teacher, 30), 2.0).sum().backward()
    b = student.clone().requires_grad_(True)
    full_kl(teacher, b, 2.0).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    c = student.clone().requires_grad_(True)
    distill_loss(c, compress_topk(teacher, 5), 2.0).backward()
    assert torch.isfinite(c.grad).all() and c.grad.abs().sum() > 0


def test_teacher_with_zero_probability_tokens_gives_no_nan():
    teacher = torch.log_softmax(torch.tensor([[2.0, 1.0, -float("inf"), -float("inf")]]), -1)
    student = torch.randn(1, 4, requires_grad=True)
    for k in (1, 2, 3, 4):
        kl = compact_kl(student, compress_topk(teacher, k))
        kl.sum().backward()
        assert torch.isfinite(kl).all() and torch.isfinite(student.grad).all()


def zipf_pair(exponent, n=32, vocab=4096, noise=0.3, seed=0):
    """A Zipf-shaped teacher (as language models' next-token distributions are) and a student that
    disagrees with it by Gaussian noise on every logit."""
    g = torch.Generator().manual_seed(seed)
    zipf = -exponent * torch.arange(1, vocab + 1, dtype=torch.float32).log()
    teacher = torch.stack([torch.log_softmax(zipf[torch.randperm(vocab, generator=g)], -1) for _ in range(n)])
    return teacher, teacher + noise * torch.randn(n, vocab, generator=g)


def test_default_k_error_is_small_on_peaked_distributions():
    teacher, student = zipf_pair(2.0)  # the top 128 hold ~99.5% of the mass
    assert compress_topk(teacher).rest.exp().mean() < 0.01
    assert topk_error(teacher, student, DEFAULT_TOP_K, 1.0) < 1e-3


def test_the_gap_is_the_rest_mass_times_the_tails_kl():
    # chain rule of KL: full - compact = p_rest * KL(teacher tail || student tail), tails renormalised
    teacher, student = zipf_pair(1.1, n=8, vocab=500)  # a heavy tail: a large gap
    c = compress_topk(teacher, 16)
    tail = torch.ones_like(teacher, dtype=torch.bool).scatter(1, c.ids.long(), False)
    inf = torch.tensor(float("-inf"))
    p_tail = torch.log_softmax(torch.where(tail, teacher, inf), -1)
    q_tail = torch.log_softmax(torch.where(tail, torch.log_softmax(student, -1), inf), -1)
    tail_kl = torch.where(tail, p_tail.exp() * (p_tail - q_tail), torch.zeros(())).sum(-1)
    gap = full_kl(teacher, student) - compact_kl(student, c)
    assert gap.mean() > 1e-2
    assert torch.allclose(gap, c.rest.exp() * tail_kl, atol=1e-5)


def test_gradient_is_exact_on_the_kept_tokens():
    teacher, student = random_pair(n=5, vocab=50, seed=4)
    c = compress_topk(teacher, 6)
    a = student.clone().requires_grad_(True)
    compact_kl(a, c, 1.5).sum().backward()
    b = student.clone().requires_grad_(True)
    full_kl(teacher, b, 1.5).sum().backward()
    kept = c.ids.long()
    assert torch.allclose(a.grad.gather(1, kept), b.grad.gather(1, kept), atol=1e-6)


def test_default_k_fits_in_one_percent_of_smollm2_vocabulary():
    c = compress_topk(torch.log_softmax(torch.randn(2, 49152), -1))
    assert c.k == DEFAULT_TOP_K and c.bytes_per_position == DEFAULT_TOP_K * 8 + 4
    assert full_bytes_per_position(49152) == 196608
    assert c.bytes_per_position <= 0.01 * full_bytes_per_position(49152)


def test_save_and_load_round_trip(tmp_path):
    teacher, student = random_pair()
    c = compress_topk(teacher, 8)
    path = str(tmp_path / "targets.safetensors")
    c.save(path, {"temperature": 2.0, "context": "file:doc.txt"})
    back = CompactTargets.load(path)
    assert torch.equal(back.ids, c.ids) and torch.equal(back.logprobs, c.logprobs) and torch.equal(back.rest, c.rest)
    assert (back.vocab_size, back.requested_k, back.k) == (40, 8, 8)
    assert back.metadata == {"temperature": 2.0, "context": "file:doc.txt"}
    assert torch.equal(compact_kl(student, back), compact_kl(student, c))
    assert not list(tmp_path.glob("*.tmp*"))


def test_loading_a_missing_or_foreign_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nothing.safetensors"):
        CompactTargets.load(str(tmp_path / "nothing.safetensors"))
    from safetensors.torch import save_file

    other = str(tmp_path / "other.safetensors")
    save_file({"weight": torch.zeros(2)}, other)
    with pytest.raises(DataError, match="other.safetensors.*missing ids"):
        CompactTargets.load(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="junk.safetensors"):
        CompactTargets.load(str(junk))


def test_student_vocabulary_must_cover_the_targets():
    teacher, student = random_pair(vocab=40)
    with pytest.raises(ValueError, match="smaller than the teacher"):
        compact_kl(student[:, :20], compress_topk(teacher, 4))
    with pytest.raises(ValueError, match="student_logits must be"):
        compact_kl(student[:3], compress_topk(teacher, 4))
