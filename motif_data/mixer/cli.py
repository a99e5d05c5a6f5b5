"""``motif-data plan``: what a mixture schedule needs from a build, per domain."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 2.5e12, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _phase(text: str) -> tuple[int, int]:
    tokens, _, seq_len = text.partition(":")
    try:
        value = (int(float(tokens)), int(seq_len))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected TOKENS:SEQ_LEN such as 8e10:16384, got {text!r}"
        ) from None
    if value[0] <= 0 or value[1] <= 0 or value[0] != float(tokens):
        raise argparse.ArgumentTypeError(f"tokens and seq_len must be whole numbers > 0, got {text!r}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="tokens each domain needs under a mixture schedule vs what a build holds",
        description="Per domain: tokens needed vs available, epochs, and where a domain runs out "
        "under exhaustion policy 'error'; with --phase, the phases of a long-context run. Optionally plots "
        "target weights and realized shares.",
    )
    p.add_argument("--manifest", required=True, help="manifest.json of a build")
    p.add_argument("--schedule", default="motif-2.6b", help="preset name (motif-2.6b) or TOML file")
    p.add_argument(
        "--total-tokens", type=_positive_float, help="training tokens, e.g. 2.5e12 (with --phase: theirs)"
    )
    p.add_argument("--seq-len", type=_positive_int, help="training sequence length (a run without phases)")
    p.add_argument(
        "--phase",
        type=_phase,
        action="append",
        metavar="TOKENS:SEQ_LEN",
        help="a phase of a run in phases, in order (repeat it), e.g. --phase 2.42e12:4096 --phase 8e10:16384",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed (tie-breaks only)")
    p.add_argument("--plot", help="write a PNG of target weights and realized shares here")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from motif_data.mixer.plan import format_phases, format_plan, plan, plot_plan
    from motif_data.mixer.sampler import QuotaSampler
    from motif_data.mixer.schedule import MixtureSchedule
    from motif_data.shards import Manifest

    phases = args.phase or []
    if (args.seq_len is None) == (not phases):
        args.parser.error("give --seq-len for a run without phases, or --phase for each phase, not both")
    page = max((s for _, s in phases), default=args.seq_len)
    bad = [f"{t}:{s}" for t, s in phases if page % s or t % page]
    if bad:
        args.parser.error(
            f"phases {bad}: each seq_len must divide the longest ({page}) and each phase's tokens be a multiple "
            "of it (the loader reads pages of the longest seq_len whole)"
        )
    total = args.total_tokens or sum(t for t, _ in phases)
    if not total:
        args.parser.error("give --total-tokens")
    schedule = MixtureSchedule.load(args.schedule)
    sampler = QuotaSampler(schedule, page, args.seed)
    rows = plan(Manifest.load(args.manifest), sampler, total)
    if phases:
        print(f"schedule {schedule.name!r}, {total:.4g} training tokens in {len(phases)} phases")
        print(format_phases(phases))
        print(f"\nper domain, in pages of {page + 1} tokens (the longest seq_len + 1)")
    else:
        print(
            f"schedule {schedule.name!r}, {total:.4g} training tokens, seq_len {page} "
            f"({page + 1}-token packed sequences)"
        )
    print(format_plan(rows, total))
    if args.plot:
        plot_plan(sampler, total, args.plot)
        print(f"plot written to {args.plot}")
    return 0
