import hashlib
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from motif_data import DOMAINS
from motif_data.mixer import MixtureSchedule, QuotaSampler, Stage

SEQ = 4096
TABLE2_START = {"web": 0.68, "multilingual": 0.07, "korean": 0.01, "academic": 0.06, "specialized": 0.05,
                "code": 0.10, "math": 0.02, "reasoning": 0.01}  # fmt: skip
TABLE2_END = {"web": 0.33, "korean": 0.30, "academic": 0.03, "specialized": 0.01, "code": 0.18, "math": 0.10,
              "reasoning": 0.05}  # fmt: skip
# A schedule that moves fast enough for a few hundred thousand sequences to cross every kind of change:
# the Table 2 anneal compressed, a jump at a stage boundary that no block boundary meets, a domain dropping
# to 0, a one-domain stage, equal weights (exact ties).
FAST = [
    (400_000 * SEQ, TABLE2_START, TABLE2_END),
    (150_000 * SEQ, {"math": 0.5, "code": 0.5}, {"math": 0.001, "code": 0.999}),
    (50_000 * SEQ, {"web": 1.0}, {"web": 1.0}),
    (100_000 * SEQ, {d: 1 / 8 for d in DOMAINS}, {d: 1 / 8 for d in DOMAINS}),
]
N = 800_000


def _jumpy(seed: int, stages: int, seqs: int):
    """Random weights that jump every ``seqs`` sequences (several stage bounds inside one block)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(stages):
        a, b = rng.dirichlet(np.full(8, 0.5), size=2)
        a[rng.random(8) < 0.3] = 0
        a = a / a.sum()
        out.append(
            (
                seqs * SEQ,
                dict(zip(DOMAINS, a.tolist(), strict=True)),
                dict(zip(DOMAINS, b.tolist(), strict=True)),
            )
        )
    return out


def _schedule(stages):
    return MixtureSchedule([Stage(f"s{i}", t, a, b) for i, (t, a, b) in enumerate(stages)])


# -- independent references ---------------------------------------------------------------------------


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


def _block_expected(stages, b, block, seq_len):
    """Exact expected sequences per domain in block ``b``: rational integral of piecewise-linear weights."""
    lo, hi = Fraction(b * block * seq_len), Fraction((b + 1) * block * seq_len)
    out = [Fraction(0)] * len(DOMAINS)
    a = Fraction(0)
    for tokens, w0, w1 in stages:
        end = a + Fraction(tokens)
        x0, x1 = max(lo, a), min(hi, end)
        if x1 > x0:
            for i, d in enumerate(DOMAINS):
                s, e = Fraction(w0.get(d, 0)), Fraction(w1.get(d, 0))
                at0 = s + (e - s) * (x0 - a) / (end - a)
                at1 = s + (e - s) * (x1 - a) / (end - a)
                out[i] += (x1 - x0) * (at0 + at1) / 2
        a = end
    if hi > max(lo, a):  # after the schedule its final weights hold
        for i, d in enumerate(DOMAINS):
            out[i] += (hi - max(lo, a)) * Fraction(stages[-1][2].get(d, 0))
    return [v / seq_len for v in out]


def _largest_remainder(expected, block, tie_order):
    """Hamilton's method on the expected counts scaled to sum to the block. Remainders are compared to
    2^-32 (closer than that is float noise of weights like 0.01 and 0.05, not a real difference) and equal
    ones go to the domain earlier in ``tie_order``; a domain with nothing expected never rounds up."""
    total = sum(expected)
    e = [v * block / total for v in expected]
    q = [math.floor(v) for v in e]
    ranked = sorted(
        (i for i in range(len(e)) if expected[i] > 0),
        key=lambda i: (-round((e[i] - q[i]) * 2**32), tie_order.index(i)),
    )
    for i in ranked[: block - sum(q)]:
        q[i] += 1
    return q


def _running(dom):
    """Counts per domain among the first 0..n of a stream."""
    return np.vstack(
        [
            np.zeros((1, len(DOMAINS)), dtype=np.int64),
            np.cumsum(np.eye(len(DOMAINS), dtype=np.int64)[dom], axis=0),
        ]
    )


@pytest.fixture(scope="module")
def fast_stream():
    sampler = QuotaSampler(_schedule(FAST), SEQ, seed=3)
    dom = sampler.domains(0, N)
    return sampler, dom, _running(dom), _reference_prefix(FAST, N, SEQ)


# -- block quotas -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stages", "seq_len", "block", "blocks"),
    [
        (FAST, SEQ, 4096, range(0, 200)),  # every block of FAST, stage bounds inside blocks 97, 134, 146
        (FAST, SEQ, 1000, range(0, 805)),  # a block size that divides nothing
        (_jumpy(1, 6, 1500), SEQ, 4096, range(0, 4)),  # up to three stage bounds inside one block
        ([(400 * 24, TABLE2_START, TABLE2_END), (100 * 24, TABLE2_END, TABLE2_END)], 24, 4096, range(3)),
    ],
)
def test_block_quotas_are_the_largest_remainder_of_each_blocks_integral(stages, seq_len, block, blocks):
    sampler = QuotaSampler(_schedule(stages), seq_len, seed=7, block=block)
    got = sampler.block_counts(blocks.start, blocks.stop)
    tie = sampler.priority.tolist()
    want = [_largest_remainder(_block_expected(stages, b, block, seq_len), block, tie) for b in blocks]
    assert np.array_equal(got, np.array(want))


def test_block_quotas_far_into_the_real_preset_and_after_its_end():
    stages = [(2e12, TABLE2_START, TABLE2_END), (0.5e12, TABLE2_END, TABLE2_END)]
    sampler = QuotaSampler(MixtureSchedule.preset("motif-2.6b"), SEQ, seed=2)
    rng = np.random.default_rng(2)
    # 119_209 holds the end of stage 1, 149_011 the end of the schedule, 244_140 is i = 10^9
    for b in [0, 119_208, 119_209, 119_210, 149_011, 149_012, 244_140, *rng.integers(0, 150_000, 8).tolist()]:
        want = _largest_remainder(_block_expected(stages, b, 4096, SEQ), 4096, sampler.priority.tolist())
        assert sampler.block_counts(b, b + 1)[0].tolist() == want, b


def test_equal_remainders_go_by_the_seeded_order():
    thirds = MixtureSchedule.constant({"web": 1 / 3, "code": 1 / 3, "math": 1 / 3})
    winners = set()
    for seed in range(12):
        q = QuotaSampler(thirds, SEQ, seed=seed, block=1024).block_counts(0, 3)
        assert (q == q[0]).all() and sorted(q[0][q[0] > 0].tolist()) == [341, 341, 342]
        winners.add(int(np.argmax(q[0])))
    assert winners == {DOMAINS.index(d) for d in ("web", "code", "math")}


def test_block_counts_are_what_the_stream_holds(fast_stream):
    sampler, dom, _, _ = fast_stream
    B = sampler.block
    blocks = sampler.block_counts(0, N // B)
    assert np.array_equal(
        blocks, np.stack([np.bincount(dom[i : i + B], minlength=8) for i in range(0, N - B + 1, B)])
    )


# -- order inside a block -----------------------------------------------------------------------------


def test_every_prefix_of_a_block_is_within_one_sequence_of_its_share_constant_weights():
    rng = np.random.default_rng(5)
    for trial in range(12):
        w = rng.dirichlet(np.full(8, 0.4))
        w[rng.random(8) < 0.2] = 0
        w[int(rng.integers(8))] += 1e-4  # a domain with a tiny share
        block = int(rng.integers(50, 5000))
        sampler = QuotaSampler(
            MixtureSchedule.constant(dict(zip(DOMAINS, (w / w.sum()).tolist(), strict=True))),
            64,
            seed=trial,
            block=block,
        )
        for b in (0, 1, 7):
            counts = _running(sampler.domains(b * block, (b + 1) * block))
            share = counts[-1] * np.arange(block + 1)[:, None] / block
            assert np.abs(counts - share).max() < 1, (trial, block, b)


def test_every_prefix_of_a_block_is_within_one_sequence_of_its_share_in_the_real_preset():
    sampler = QuotaSampler(MixtureSchedule.preset("motif-2.6b"), SEQ, seed=4)
    for b in np.random.default_rng(4).integers(0, 150_000, 6).tolist():
        counts = _running(sampler.domains(b * 4096, (b + 1) * 4096))
        share = counts[-1] * np.arange(4097)[:, None] / 4096
        assert np.abs(counts - share).max() < 1.01, b  # weights move ~3e-6 across a block


def test_every_prefix_of_a_block_follows_the_schedule_inside_it(fast_stream):
    """Where weights move or jump inside a block, its prefix follows the quota spread like the schedule."""
    sampler, _, prefix, ref = fast_stream
    B = sampler.block
    worst = 0.0
    for b in range(N // B):
        counts = prefix[b * B : (b + 1) * B + 1] - prefix[b * B]
        inside = ref[b * B : (b + 1) * B + 1] - ref[b * B]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(inside[-1] > 0, counts[-1] * inside / inside[-1], 0)
        worst = max(worst, np.abs(counts - share).max())
    assert worst < 1.1, worst


# -- windows ------------------------------------------------------------------------------------------


def test_every_window_of_10k_sequences_is_within_0_1_percent_of_the_schedule(fast_stream):
    _, _, prefix, ref = fast_stream
    for w in (10_000, 10_007, 37_000, 250_000):
        worst = np.abs((prefix[w:] - prefix[:-w]) - (ref[w:] - ref[:-w])).max() / w
        assert worst <= 0.001, (w, worst)


@pytest.mark.parametrize("block", [1024, 4096])
def test_windows_stay_within_0_1_percent_with_weights_that_jump_every_1500_sequences(block):
    stages = _jumpy(11, 60, 1500)
    n = 60 * 1500 + 20_000
    prefix = _running(QuotaSampler(_schedule(stages), SEQ, seed=1, block=block).domains(0, n))
    ref = _reference_prefix(stages, n, SEQ)
    w = 10_000
    worst = np.abs((prefix[w:] - prefix[:-w]) - (ref[w:] - ref[:-w])).max() / w
    assert worst <= 0.001, worst


def test_windows_far_into_the_real_preset_match_an_independent_integral():
    """Windows of 10,000 sequences anywhere in the 2.5T-token Table 2 schedule, against the midpoint rule."""
    sampler = QuotaSampler(MixtureSchedule.preset("motif-2.6b"), SEQ, seed=9)
    a = np.array([TABLE2_START.get(d, 0) for d in DOMAINS])
    b = np.array([TABLE2_END.get(d, 0) for d in DOMAINS])
    rng = np.random.default_rng(9)
    for start in [0, 488_280_000, 488_281_000, 610_350_000, *rng.integers(0, 700_000_000, size=8).tolist()]:
        f = np.clip((start + np.arange(10_000) + 0.5) * SEQ / 2e12, 0, 1)[:, None]
        target = (a + (b - a) * f).sum(axis=0)
        realized = np.bincount(sampler.domains(start, start + 10_000), minlength=len(DOMAINS))
        assert np.abs(realized - target).max() / 10_000 <= 0.001, start


# -- resume -------------------------------------------------------------------------------------------


def test_draw_number_k_is_the_running_count_of_the_domain(fast_stream):
    sampler, dom, prefix, _ = fast_stream
    d, k = sampler.draws(0, N)
    assert np.array_equal(d, dom)
    assert np.array_equal(k, prefix[np.arange(N), d])
    for n in (0, 1, 999, 4096, 123_456, 400_000, N):
        assert np.array_equal(sampler.counts_before(n), prefix[n])


def test_any_slice_or_set_of_runs_resumes_the_same_stream(fast_stream):
    sampler, dom, prefix, _ = fast_stream
    rng = np.random.default_rng(0)
    for _ in range(30):
        a = int(rng.integers(0, N - 1))
        b = int(rng.integers(a, min(N, a + 20_000)))
        d, k = sampler.draws(a, b)
        assert np.array_equal(d, dom[a:b]) and np.array_equal(k, prefix[np.arange(a, b), dom[a:b]])
    assert [sampler.domain_of(i) for i in range(5000, 5040)] == [DOMAINS[x] for x in dom[5000:5040]]
    starts = np.sort(rng.integers(0, N - 64, 300))
    d, k = sampler.draws_runs(starts, 64)
    where = starts[:, None] + np.arange(64)
    assert np.array_equal(d, dom[where]) and np.array_equal(k, prefix[where, dom[where]])


def test_resume_far_away_counts_every_earlier_block():
    """k at i = 10^9 and mid-schedule equals the sum of brute-force quotas of all earlier blocks."""
    stages = [(300 * 4096 * SEQ, TABLE2_START, TABLE2_END), (60 * 4096 * SEQ, TABLE2_END, TABLE2_END)]
    sampler = QuotaSampler(_schedule(stages), SEQ, seed=6)
    tie = sampler.priority.tolist()
    quotas = np.array(
        [_largest_remainder(_block_expected(stages, b, 4096, SEQ), 4096, tie) for b in range(361)]
    )
    # blocks from 360 on lie wholly after the schedule: same integral, so the same quotas as block 360
    for i in (150 * 4096 + 1234, 10**9):
        b, off = divmod(i, 4096)
        before = quotas[: min(b, 360)].sum(axis=0) + max(b - 360, 0) * quotas[360]
        d, k = sampler.draws(b * 4096, i + 5000)
        want = before[d] + _running(d)[np.arange(len(d)), d]
        assert np.array_equal(k, want), i
        assert np.array_equal(sampler.counts_before(i), before + np.bincount(d[:off], minlength=8))


def test_due_is_the_position_of_the_kth_draw(fast_stream):
    sampler, dom, _, _ = fast_stream
    for d, k in [(0, 0), (0, 5000), (DOMAINS.index("math"), 30_000), (DOMAINS.index("korean"), 40_000)]:
        assert sampler.due(d, np.array([k]))[0] == np.flatnonzero(dom == d)[k]
    preset = QuotaSampler(MixtureSchedule.preset("motif-2.6b"), SEQ, seed=0)
    ml = DOMAINS.index("multilingual")  # weight 0 from the end of stage 1 on
    total = int(preset.counts_before(700_000_000)[ml])
    assert preset.due(ml, np.array([total]))[0] == math.inf
    last = preset.due(ml, np.array([total - 1]))[0]
    assert preset.domain_of(int(last)) == "multilingual"
    assert preset.counts_before(int(last))[ml] == total - 1
    web_far = preset.due(0, np.array([10**9]))[0]
    d, k = preset.draws(int(web_far), int(web_far) + 1)
    assert d[0] == 0 and k[0] == 10**9


# -- determinism, arguments ---------------------------------------------------------------------------


def test_stream_is_identical_in_another_process_and_depends_on_the_seed():
    code = (
        "from motif_data.mixer import MixtureSchedule, QuotaSampler;"
        "import hashlib;"
        "q = QuotaSampler(MixtureSchedule.preset('motif-2.6b'), 4096, seed=11);"
        "d, k = q.draws(488_000_000, 488_500_000);"
        "print(hashlib.sha256(d.tobytes() + k.tobytes()).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    q = QuotaSampler(MixtureSchedule.preset("motif-2.6b"), 4096, seed=11)
    d, k = q.draws(488_000_000, 488_500_000)
    assert out == hashlib.sha256(d.tobytes() + k.tobytes()).hexdigest()
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
