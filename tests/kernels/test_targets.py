"""Per-target choices (dot precision, autotune lists) and the compile-only check, on a CPU: Triton's own HIP
and NVIDIA backends compile here without a GPU (../shared/FACTS.md), so each claim is checked against what
the compiler itself accepts or reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from motif_data.kernels import _device, check, diff_attn
from motif_data.kernels.targets import AMD_ARCHS, TARGETS, dot_precision, parse_targets

# What Triton 3.9's backends accept for tl.dot(input_precision=...), from ../shared/FACTS.md: the HIP backend
# on gfx90a and gfx950 only ieee/bf16x3/bf16x6, gfx942 tf32 too; NVIDIA tf32 from sm_80 on.
ACCEPTS_TF32 = {"gfx90a": False, "gfx942": True, "gfx950": False, "sm_80": True, "sm_90": True}


# Compiling needs real JITFunctions, and this directory's conftest switches Triton's interpreter on for the
# session: each compile runs in a fresh interpreter-free Python, which prints what check._compile reported.
_PROBE = """
import json, sys
import torch, triton, triton.language as tl
from motif_data.kernels import check
from motif_data.kernels.targets import TARGETS

@triton.jit
def _dot_kernel(A, B, C, PREC: tl.constexpr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
    # C = A @ B over 8 steps of K columns: a loop the software pipeliner stages in shared memory / LDS.
    rm, rn, rk = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    acc = tl.zeros([M, N], tl.float32)
    for i in range(8):
        a = tl.load(A + rm[:, None] * 8 * K + i * K + rk[None, :])
        b = tl.load(B + (i * K + rk[:, None]) * N + rn[None, :])
        acc += tl.dot(a, b, input_precision=PREC)
    tl.store(C + rm[:, None] * N + rn[None, :], acc)

out = []
for i, (target, dtype, prec, m, n, k, stages) in enumerate(json.loads(sys.argv[1])):
    meta = [torch.empty(1, dtype=getattr(torch, dtype), device="meta") for _ in range(2)]
    args = (*meta, torch.empty(1, device="meta"))
    kwargs = dict(PREC=prec, M=m, N=n, K=k, num_warps=4, num_stages=stages)
    r = check._compile(TARGETS[target], i, check.Launch("test", "dot", _dot_kernel, args, kwargs), None)
    out.append(dict(vars(r), fits=r.fits, failures=check.Report([r]).failures()))
print(json.dumps(out))
"""


def _compile_dots(cases, tmp_path):
    """cases: (target, dtype name, precision, M, N, K, num_stages) → what the check reports for each."""
    script = tmp_path / "compile_dots.py"  # Triton reads a kernel's source from its file
    script.write_text(_PROBE)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script), json.dumps(cases)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def test_the_chosen_precision_compiles_on_every_target_and_tf32_where_refused_is_reported(tmp_path):
    cases, expected = [], []
    for name in sorted(ACCEPTS_TF32):
        for dtype_name, dtype in _DTYPES.items():
            for allow in (False, True):
                prec = dot_precision(dtype, TARGETS[name], allow_tf32=allow)
                # Half-precision operands take the native product; fp32 stays exact unless tf32 is allowed
                # and the target has it.
                assert prec == ("tf32" if dtype_name == "fp32" and allow and ACCEPTS_TF32[name] else "ieee")
                cases.append((name, str(dtype).removeprefix("torch."), prec, 32, 32, 32, 1))
                expected.append("compiles")
    # The failure the kernels had before: tf32 passed for bf16 operands, which CDNA2 and CDNA4 refuse.
    for name in ("gfx90a", "gfx950"):
        cases.append((name, "bfloat16", "tf32", 32, 32, 32, 1))
        expected.append("refused")
    for case, want, got in zip(cases, expected, _compile_dots(cases, tmp_path), strict=True):
        if want == "compiles":
            assert got["error"] is None and got["fits"] and got["failures"] == [], (case, got["error"])
        else:
            assert "input_precision" in got["error"], case
            assert "does not compile" in got["failures"][0]


def test_the_interpreter_upcasts_half_precision_and_keeps_fp32_exact():
    assert dot_precision(torch.bfloat16, None) == "upcast"
    assert dot_precision(torch.float32, None, allow_tf32=True) == "ieee"


def test_shared_memory_is_read_from_the_compiler_and_held_against_each_arch_limit(tmp_path):
    # One step's operand tiles of a 128 × 128 × 128 bf16 product: (128·128 + 128·128) · 2 bytes = 64 KiB.
    # Three pipeline stages keep at least two steps in flight (128 KiB), over gfx942's 64 KiB of LDS; two
    # stages on gfx950 keep one (64 KiB), inside its 160 KiB.
    one_step = (128 * 128 + 128 * 128) * 2
    small, big = _compile_dots([("gfx942", "bfloat16", "ieee", 128, 128, 128, 3),
                                ("gfx950", "bfloat16", "ieee", 128, 128, 128, 2)], tmp_path)  # fmt: skip
    assert TARGETS["gfx942"].shared_limit == 64 * 1024 and TARGETS["gfx950"].shared_limit == 160 * 1024
    assert small["error"] is None and small["shared"] >= 2 * one_step and not small["fits"]
    assert any(f"{small['shared']} bytes of shared memory, limit 65536" in f for f in small["failures"])
    assert big["fits"] and big["shared"] >= one_step and big["failures"] == []
    assert big["registers"] > 0 and big["occupancy"] > 0 and big["scratch"] == 0


def _result(target, kernel="k", shape="s", config="c", **kw):
    defaults = dict(
        shared=1024, shared_limit=TARGETS[target].shared_limit, registers=64, scratch=0, occupancy=4
    )
    return check.Result(target, "op", kernel, shape, config, **{**defaults, **kw})


def test_failures_name_every_rule_and_ignore_candidates():
    ok = _result("gfx942", config="a")
    spill_amd = _result("gfx942", config="b", scratch=128)
    spill_nv = _result("sm_90", config="b", scratch=128)
    clean_nv = _result("sm_90", config="a")
    over = _result("gfx90a", config="a", shared=70 * 1024)
    candidate = _result("gfx90a", config="z", shared=1 << 20, candidate_only=True)
    failures = check.Report([ok, spill_amd, spill_nv, clean_nv, over, candidate]).failures()
    assert any("gfx942" in f and "spills 128" in f for f in failures)
    assert not any(f.startswith("sm_90") for f in failures)  # NVIDIA: a spill is reported, not a failure
    assert any("gfx90a" in f and "71680 bytes" in f for f in failures)
    assert any("gfx90a k [s]: no config without spills" in f for f in failures)
    assert not any("config=z" in f or " z:" in f for f in failures)
    assert check.Report([ok, spill_nv, clean_nv]).failures() == []
    assert check.Report([spill_nv]).failures() == ["sm_90 k [s]: no config without spills"]


def test_each_target_runs_its_own_lists_and_amd_lists_come_from_the_candidates():
    for family in ("cuda", *AMD_ARCHS):
        for tuners in (diff_attn._FWD, diff_attn._BWD_KV, diff_attn._BWD_Q):
            tuner = tuners[family]
            assert tuner.configs and all(c.num_warps <= 16 for c in tuner.configs)
            if family != "cuda":
                assert all(c in tuner.candidates for c in tuner.configs)
    for name in ("gfx90a", "gfx950", "sm_90"):
        with _device.compile_only(TARGETS[name], lambda *a: None):
            picked = _device.tuned(diff_attn._FWD, torch.device("meta"))
        assert picked is diff_attn._FWD[TARGETS[name].family]
    assert _device.tuned(diff_attn._FWD, torch.device("cpu")) is diff_attn._FWD["cuda"]  # the interpreter


def test_the_check_sees_every_kernel_the_ops_launch_forward_and_backward():
    names = {check.kernel_name(x.kernel) for x in check.launches(TARGETS["gfx942"])}
    assert names == {
        "_diff_attn_fwd_kernel", "_diff_attn_bwd_delta_kernel", "_diff_attn_bwd_kv_kernel",
        "_diff_attn_bwd_q_kernel", "_grouped_bwd_delta_kernel", "_map_bwd_kv_kernel", "_map_bwd_q_kernel",
        "_poly_norm_fwd", "_poly_norm_bwd", "_softmax_minus_onehot_kernel",
    }  # fmt: skip
    attention = [x for x in check.launches(TARGETS["gfx90a"]) if x.op == "diff_attention"]
    assert {x.kwargs["PREC"] for x in attention if "PREC" in x.kwargs} == {"ieee"}
    assert {x.kwargs.get("PART") for x in attention} >= {"dk", "dv"}
    assert {x.kwargs.get("SIGNAL") for x in attention} >= {False, True}
    grouped = [x for x in check.launches(TARGETS["gfx90a"]) if x.op == "grouped_diff_attention"]
    assert {x.kwargs.get("ADD_NOISE") for x in grouped} >= {False, True}


def test_alike_launches_compile_once_and_each_is_still_reported():
    target = TARGETS["gfx90a"]
    jobs = check._jobs(target, False)
    launched = {(x.op, x.shape, check.kernel_name(x.kernel)) for x in check.launches(target)}
    reported = {(op, shape, check.kernel_name(j.launch.kernel)) for j in jobs for op, shape in j.uses}
    assert reported == launched
    # The delta kernels read no document table: the causal and the document-masked launches share them.
    shared = {check.kernel_name(j.launch.kernel) for j in jobs if len(j.uses) > 1}
    assert {"_diff_attn_bwd_delta_kernel", "_grouped_bwd_delta_kernel"} <= shared
    # Constexprs specialize by value: no binary serves two head shapes.
    for job in jobs:
        heads = {shape.split(" S=")[0] for op, shape in job.uses if "attention" in op}
        assert len(heads) <= 1, (check.kernel_name(job.launch.kernel), job.uses)


def test_unknown_targets_fail_naming_the_known_ones():
    assert [t.name for t in parse_targets("gfx942, sm_90,gfx942")] == ["gfx942", "sm_90"]
    with pytest.raises(ValueError, match="unknown target.*gfx1100.*known: gfx90a"):
        parse_targets("gfx942,gfx1100")


def test_a_causal_launch_compiles_what_its_document_masked_twin_does_not():
    # The causal launches of the kernels whose masked build needs at least their resources compile their first
    # config and the configs the masked list lacks; the masked launches compile their whole lists.
    target = TARGETS["gfx950"]  # its lists hold a causal-only config of the grouped forward
    compiled: dict[tuple, set] = {}
    for job in check._jobs(target, False):
        for op, shape in job.uses:
            compiled.setdefault((op, shape, check.kernel_name(job.launch.kernel)), set()).add(str(job.config))
    found = {(x.op, x.shape, check.kernel_name(x.kernel)): x.kernel for x in check.launches(target)}
    covered = [
        ("grouped_diff_attention", "D=128 Dv=256 S=4096 r=4 bf16 causal", "_diff_attn_fwd_kernel"),
        ("diff_attention", "D=128 Dv=256 S=4096 bf16 causal", "_diff_attn_bwd_kv_kernel"),
    ]
    for op, shape, name in covered:
        offered = [str(c) for c in found[(op, shape, name)].configs]
        masked = {str(c) for c in found[(op, shape + " documents", name)].configs}
        assert compiled[(op, shape, name)] == {offered[0]} | (set(offered) - masked)
        assert compiled[(op, shape + " documents", name)] == masked
    assert len(compiled[covered[0]]) > 1  # a config of the causal list alone is compiled
    # A kernel whose masked build used fewer registers at some config keeps its whole causal list.
    kv = ("grouped_diff_attention", "D=128 Dv=256 S=4096 r=4 bf16 causal", "_map_bwd_kv_kernel")
    assert compiled[kv] == {str(c) for c in found[kv].configs}
