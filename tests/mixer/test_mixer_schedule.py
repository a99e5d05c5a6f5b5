import numpy as np
import pytest

from motif_data import DOMAINS
from motif_data.mixer import MixtureSchedule, Stage

# Motif-2.6B report, Table 2 (start and end of the first stage), typed from the report.
TABLE2_START = dict(web=0.68, multilingual=0.07, korean=0.01, academic=0.06, specialized=0.05, code=0.10,
                    math=0.02, reasoning=0.01)  # fmt: skip
TABLE2_END = dict(web=0.33, multilingual=0.00, korean=0.30, academic=0.03, specialized=0.01, code=0.18,
                  math=0.10, reasoning=0.05)  # fmt: skip


def test_preset_reproduces_table_2_and_anneals_at_the_final_weights():
    s = MixtureSchedule.preset("motif-2.6b")
    assert s.total_tokens == 2.5e12
    for d in DOMAINS:
        assert s.weights_at(0)[d] == pytest.approx(TABLE2_START[d], abs=1e-12)
        assert s.weights_at(2e12)[d] == pytest.approx(TABLE2_END[d], abs=1e-12)
        assert s.weights_at(1e12)[d] == pytest.approx((TABLE2_START[d] + TABLE2_END[d]) / 2, abs=1e-12)
        assert s.weights_at(2.3e12)[d] == pytest.approx(TABLE2_END[d], abs=1e-12)
        assert s.weights_at(9e12)[d] == pytest.approx(TABLE2_END[d], abs=1e-12)  # past the end: held
    assert MixtureSchedule.preset("motif-2.6b", stage1_tokens=1e9, anneal_tokens=1e8).total_tokens == 1.1e9


def _reference_weight(stages, t):
    """Plain-Python linear interpolation, independent of MixtureSchedule's vectorized code."""
    a = 0.0
    for tokens, start, end in stages:
        if t < a + tokens:
            f = (t - a) / tokens
            return {d: start.get(d, 0) + (end.get(d, 0) - start.get(d, 0)) * f for d in DOMAINS}
        a += tokens
    return {d: stages[-1][2].get(d, 0) for d in DOMAINS}


def test_expected_tokens_is_the_exact_integral_across_stage_boundaries():
    stages = [
        (1000.0, {"web": 1.0}, {"web": 0.2, "code": 0.8}),
        (500.0, {"math": 1.0}, {"math": 0.5, "korean": 0.5}),  # jumps at the boundary
        (2000.0, {"korean": 0.25, "code": 0.75}, {"korean": 0.25, "code": 0.75}),
    ]
    s = MixtureSchedule([Stage(f"s{i}", t, a, b) for i, (t, a, b) in enumerate(stages)])
    for t0, t1 in [(0, 1000), (100, 1300), (999, 1001), (0, 5000), (1200, 4000), (3600, 3700)]:
        # midpoint rule on a fine grid that has the stage boundaries as cell edges: exact for linear pieces
        edges = np.union1d(np.linspace(t0, t1, 4001), [x for x in (1000, 1500, 3500) if t0 < x < t1])
        mids = (edges[:-1] + edges[1:]) / 2
        for d in DOMAINS:
            ref = sum(_reference_weight(stages, m)[d] * w for m, w in zip(mids, np.diff(edges), strict=True))
            assert s.expected_tokens(d, t0, t1) == pytest.approx(ref, abs=1e-6)
    total = sum(s.expected_tokens(d, 0, 3500) for d in DOMAINS)
    assert total == pytest.approx(3500)


def test_invalid_schedules_are_rejected_with_every_problem_named():
    with pytest.raises(ValueError) as e:
        MixtureSchedule(
            [
                Stage("a", 100, {"web": 0.5, "code": 0.4}, {"web": 1.0}),
                Stage("b", 0, {"web": 1.2, "math": -0.2}, {"webz": 1.0}),
                Stage("c", 10, {}, {"web": 1.0}),
            ]
        )
    msg = str(e.value)
    assert "stage 0 ('a') start: weights sum to 0.9" in msg
    assert "token budget must be > 0" in msg
    assert "negative weights {'math': -0.2}" in msg
    assert "unknown domains ['webz']" in msg
    assert "start weights are empty" in msg
    with pytest.raises(ValueError, match="at least one stage"):
        MixtureSchedule([])
    with pytest.raises(ValueError, match="unknown schedule preset 'motif-3'"):
        MixtureSchedule.preset("motif-3")
    with pytest.raises(ValueError, match="missing \\['tokens'\\]"):
        MixtureSchedule.from_dict({"stage": [{"start": {"web": 1.0}}]})


def test_toml_and_dict_round_trip_and_the_shipped_config_equals_the_preset(tmp_path):
    preset = MixtureSchedule.preset("motif-2.6b")
    assert MixtureSchedule.load("configs/schedule-motif-2.6b.toml") == preset
    custom = MixtureSchedule(
        [Stage('warm "up"', 1.5e9, {"web": 0.9, "code": 0.1}, {"web": 0.5, "math": 0.5})], name="mine"
    )
    custom.save(tmp_path / "s.toml")
    back = MixtureSchedule.load(tmp_path / "s.toml")
    assert back == custom and back.name == "mine" and back.stages[0].name == 'warm "up"'
    assert MixtureSchedule.from_dict(custom.to_dict()) == custom
    (tmp_path / "bad.toml").write_text("[[stage]]\ntokens = 10\n[stage.start]\nweb = 0.5\n")
    with pytest.raises(ValueError, match="(?s)bad.toml: .*sum to 0.5"):
        MixtureSchedule.load(tmp_path / "bad.toml")
    with pytest.raises(FileNotFoundError, match="preset"):
        MixtureSchedule.load(tmp_path / "nope.toml")
