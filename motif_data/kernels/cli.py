"""``motif-data kernels check``: will the kernels build on a given GPU, and how well (compile-only, no GPU)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]

_DEFAULT_ARCHS = "gfx90a,gfx942,gfx950,sm_90"


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(subparsers) -> None:
    from motif_data.kernels.targets import TARGETS

    kernels = subparsers.add_parser("kernels", help="inspect the Triton kernels", description=__doc__)
    sub = kernels.add_subparsers(dest="kernels_command", metavar="SUBCOMMAND", required=True)
    known = ", ".join(f"{name} ({t.gpu})" for name, t in TARGETS.items())
    p = sub.add_parser(
        "check",
        help="compile every kernel the ops launch for AMD/NVIDIA targets and report their resources",
        description="Compiles (does not run) every Triton kernel that poly_norm, poly_norm_mul, diff_attention "
        "and linear_cross_entropy launch, forward and backward, in every autotune config the op may pick on "
        "each target, at Motif's shapes, with Triton's own backends; no GPU needed. Reports shared memory / "
        "LDS against the target's limit, registers, spill bytes and occupancy. Exit 1 when a config the op "
        "would use does not compile or overflows, an AMD config spills, or a kernel has no spill-free config.",
    )
    p.add_argument(
        "--arch",
        default=_DEFAULT_ARCHS,
        help=f"comma-separated targets (default {_DEFAULT_ARCHS}); known: {known}",
    )
    p.add_argument("--json", action="store_true", help="print the whole report as JSON on stdout")
    p.add_argument("--table", action="store_true", help="one line per kernel × shape × config")
    p.add_argument(
        "--candidates", action="store_true",
        help="also compile the AMD candidate configs that the lists leave out (how the lists are chosen)",
    )  # fmt: skip
    p.add_argument("--jobs", type=_jobs, default=None, help="compiler processes (default: one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_check)


def _kib(n: int | None) -> str:
    return "—" if n is None else f"{n / 1024:.0f}"


def _print_report(report, table: bool) -> None:
    from motif_data.kernels.check import Result

    groups: dict[tuple, list[Result]] = {}
    for r in report.results:
        groups.setdefault((r.target, r.op, r.kernel, r.shape), []).append(r)
    if table:
        print(
            f"{'target':7} {'kernel':30} {'shape':34} {'config':46} {'LDS KiB':>8} {'regs':>5} {'spill':>6} {'occ':>4}  status"
        )
        for r in report.results:
            status = (
                "error: " + r.error
                if r.error
                else ("over limit" if not r.fits else ("spills" if r.spills else "ok"))
            )
            status += " (candidate)" if r.candidate_only else ""
            print(
                f"{r.target:7} {r.kernel:30} {r.shape:34} {r.config:46} {_kib(r.shared):>8} "
                f"{r.registers if r.registers is not None else '—':>5} {r.scratch if r.scratch is not None else '—':>6} "
                f"{r.occupancy if r.occupancy is not None else '—':>4}  {status}"
            )  # fmt: skip
        print()
    else:
        print(
            f"{'target':7} {'kernel':30} {'shape':34} {'configs':>7} {'fit':>4} {'no spill':>8} {'max LDS KiB':>11} {'best occ':>8}"
        )
        for (target, _, kernel, shape), rows in groups.items():
            offered = [r for r in rows if not r.candidate_only]
            fit = [r for r in offered if r.fits]
            clean = [r for r in fit if not r.spills]
            occ = max((r.occupancy or 0 for r in clean), default=0)
            print(
                f"{target:7} {kernel:30} {shape:34} {len(offered):>7} {len(fit):>4} {len(clean):>8} "
                f"{_kib(max((r.shared or 0 for r in offered), default=0)):>11} {occ:>8}"
            )  # fmt: skip
        print()
    print(
        f"{'target':7} {'GPU':38} {'compiled':>9} {'fit':>9} {'spilling':>8} {'max LDS / limit KiB':>20} "
        f"{'binaries':>8}"
    )
    for s in report.summary():
        print(
            f"{s['target']:7} {s['gpu']:38} {s['compiled']:>4}/{s['variants']:<4} {s['fit']:>4}/{s['variants']:<4} "
            f"{s['spilling']:>8} {_kib(s['max_shared']):>9} / {_kib(s['shared_limit']):<9} {s['binaries']:>8}"
        )  # fmt: skip


def _check(args: argparse.Namespace) -> int:
    from motif_data.kernels.check import check
    from motif_data.kernels.targets import parse_targets

    targets = parse_targets(args.arch)
    report = check(targets, candidates=args.candidates, jobs=args.jobs, progress=not args.no_progress)
    if args.json:
        print(report.to_json())
    else:
        _print_report(report, args.table)
    failures = report.failures()
    for line in failures:
        print(f"FAIL {line}", file=sys.stderr)
    if not failures:
        print(
            f"kernels check: every kernel compiles and fits on {', '.join(t.name for t in targets)}",
            file=sys.stderr,
        )
    return 1 if failures else 0
