import subprocess
import sys

import numpy as np
import pytest

from motif_data import DOMAINS
from motif_data.mixer import MixtureSchedule, QuotaSampler, Stage

SEQ = 4096
# A schedule that moves fast enough for a few million sequences to cross every kind of change:
# the Table 2 anneal compressed, a jump at a stage boundary, a domain dropping to 0, a one-domain stage.
FAST = [
    (400_000 * SEQ, {"web": 0.68, "multilingual": 0.07, "korean": 0.01, "academic": 0.06, "specialized": 0.05,
                     "code": 0.10, "math": 0.02, "reasoning": 0.01},
                    {"web": 0.33, "korean": 0.30, "academic": 0.03, "specialized": 0.01, "code": 0.18,
                     "math": 0.10, "reasoning": 0.05}),
    (150_000 * SEQ, {"math": 0.5, "code": 0.5}, {"math": 0.001, "code": 0.999}),
    (50_000 * SEQ, {"web": 1.0}, {"web": 1.0}),
    (100_000 * SEQ, {d: 1 / 8 for d in DOMAINS}, {d: 1 / 8 for d in DOMAINS}),
]  # fmt: skip
N = 800_000


def _schedule(stages):
    return MixtureSchedule([Stage(f"s{i}", t, a, b) for i, (t, a, b) in enumerate(stages)])


def _reference_prefix(stages, n, seq_len):
    """Expected count per domain among the first 0..n sequences: midpoint rule per sequence, which is exact
    for weights linear inside a sequence (stage budgets here are multiples of seq_len)."""
    mids = (np.arange(n) + 0.5) * seq_len
    bounds = np.cumsum([0] + [t for t, _, _ in stages])
    w = np.zeros((n, len(DOMAINS)))
    for (t, a, b), lo in zip(stages, bounds[:-1], strict=True):
        sel = (mids >= lo) & (mids < lo + t)
        f = (mids[sel] - lo) / t
        for j, d in enumerate(DOMAINS):
            w[sel, j] = a.get(d, 0) + (b.get(d, 0) - a.get(d, 0)) * f
    last = stages[-1][2]
    w[mids >= bounds[-1]] = [last.get(d, 0) for d in DOMAINS]
    return np.vstack([np.zeros(len(DOMAINS)), np.cumsum(w, axis=0)])


@pytest.fixture(scope="module")
def fast_stream():
    sampler = QuotaSampler(_schedule(FAST), SEQ, seed=3)
    dom = sampler.domains(0, N)
    prefix = np.vstack(
        [np.zeros(len(DOMAINS), dtype=np.int64), np.cumsum(np.eye(len(DOMAINS), dtype=np.int64)[dom], axis=0)]
    )
    return sampler, dom, prefix, _reference_prefix(FAST, N, SEQ)


def test_every_window_of_10k_sequences_is_within_0_1_percent_of_the_schedule(fast_stream):
    _, _, prefix, ref = fast_stream
    for w in (10_000, 10_007, 37_000, 250_000):
        realized = prefix[w:] - prefix[:-w]  # every start position
        target = ref[w:] - ref[:-w]
        worst = np.abs(realized - target).max() / w
        assert worst <= 0.001, (w, worst)


def test_counts_never_drift_from_the_integral(fast_stream):
    sampler, _, prefix, ref = fast_stream
    err = np.abs(prefix - ref)
    assert err.max() < 4.5  # 1/2 + (8 domains / 2) * weight; no accumulation over 800k sequences
    for n in (0, 1, 999, 123_456, 400_000, N):
        assert np.array_equal(sampler.counts_before(n), prefix[n])
    assert np.allclose(sampler.expected_counts(np.arange(0, N + 1, 1000)), ref[::1000])


def test_block_counts_sum_to_the_block_and_match_a_brute_force_count(fast_stream):
    sampler, dom, _, ref = fast_stream
    blocks = sampler.block_counts(0, N // sampler.block)
    brute = np.stack([np.bincount(dom[i : i + 1024], minlength=8) for i in range(0, N - 1023, 1024)])
    assert np.array_equal(blocks, brute)
    assert (blocks.sum(axis=1) == 1024).all()
    expected = ref[1024::1024] - ref[:-1024:1024][: len(blocks)]
    assert np.abs(blocks - expected[: len(blocks)]).max() < 9


def test_draw_number_k_counts_earlier_sequences_of_the_same_domain(fast_stream):
    sampler, dom, _, _ = fast_stream
    d, k = sampler.draws(0, 200_000)
    assert np.array_equal(d, dom[:200_000])
    for j in range(len(DOMAINS)):
        assert np.array_equal(k[d == j], np.arange((d == j).sum()))


def test_any_slice_resumes_the_same_stream(fast_stream):
    sampler, dom, _, _ = fast_stream
    rng = np.random.default_rng(0)
    for _ in range(30):
        a = int(rng.integers(0, N - 1))
        b = int(rng.integers(a, min(N, a + 20_000)))
        assert np.array_equal(sampler.domains(a, b), dom[a:b])
    assert [sampler.domain_of(i) for i in range(5000, 5040)] == [DOMAINS[x] for x in dom[5000:5040]]
    far = 10**9
    whole = sampler.draws(far, far + 30_000)
    parts = [sampler.draws(a, a + 10_000) for a in (far, far + 10_000, far + 20_000)]
    assert np.array_equal(whole[0], np.concatenate([p[0] for p in parts]))
    assert np.array_equal(whole[1], np.concatenate([p[1] for p in parts]))
    assert whole[1][whole[0] == whole[0][0]][0] == sampler.counts_before(far)[whole[0][0]]


def test_stream_is_identical_in_another_process_and_depends_on_the_seed():
    code = (
        "from motif_data.mixer import MixtureSchedule, QuotaSampler;"
        "import hashlib;"
        "q = QuotaSampler(MixtureSchedule.preset('motif-2.6b'), 4096, seed=11);"
        "print(hashlib.sha256(q.domains(123_456_789, 123_556_789).tobytes()).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    import hashlib

    q = QuotaSampler(MixtureSchedule.preset("motif-2.6b"), 4096, seed=11)
    assert out == hashlib.sha256(q.domains(123_456_789, 123_556_789).tobytes()).hexdigest()
    equal = MixtureSchedule.constant({d: 1 / 8 for d in DOMAINS})
    a = QuotaSampler(equal, 4096, seed=1).domains(0, 64)
    b = QuotaSampler(equal, 4096, seed=2).domains(0, 64)
    assert not np.array_equal(a, b)  # ties broken by the seed
    # equal weights: all eight fall due together, so every run of eight is one full round in seed order
    for rounds in (a.reshape(8, 8), b.reshape(8, 8)):
        assert (np.sort(rounds, axis=1) == np.arange(8)).all() and (rounds == rounds[0]).all()


def test_bad_sampler_arguments_fail_fast():
    s = MixtureSchedule.preset("motif-2.6b")
    with pytest.raises(ValueError, match="seq_len must be a positive integer, got 0.*block must be"):
        QuotaSampler(s, 0, seed=0, block=-1)
    with pytest.raises(ValueError, match="0 <= start <= stop"):
        QuotaSampler(s, 8, seed=0).domains(5, 3)


def test_windows_far_into_the_real_preset_match_an_independent_integral():
    """Windows of 10,000 sequences anywhere in the 2.5T-token Table 2 schedule, against the midpoint rule."""
    start_w = {"web": 0.68, "multilingual": 0.07, "korean": 0.01, "academic": 0.06, "specialized": 0.05,
               "code": 0.10, "math": 0.02, "reasoning": 0.01}  # fmt: skip
    end_w = {"web": 0.33, "korean": 0.30, "academic": 0.03, "specialized": 0.01, "code": 0.18, "math": 0.10,
             "reasoning": 0.05}  # fmt: skip
    sampler = QuotaSampler(MixtureSchedule.preset("motif-2.6b"), SEQ, seed=9)
    rng = np.random.default_rng(9)
    for start in [0, 488_280_000, 488_281_000, *rng.integers(0, 700_000_000, size=6).tolist()]:
        mids = (start + np.arange(10_000) + 0.5) * SEQ
        f = np.clip(mids / 2e12, 0, 1)[:, None]
        a = np.array([start_w.get(d, 0) for d in DOMAINS])
        b = np.array([end_w.get(d, 0) for d in DOMAINS])
        target = (a + (b - a) * f).sum(axis=0)
        realized = np.bincount(sampler.domains(start, start + 10_000), minlength=len(DOMAINS))
        assert np.abs(realized - target).max() / 10_000 <= 0.001, start
