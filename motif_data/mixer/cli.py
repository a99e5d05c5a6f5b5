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


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="tokens each domain needs under a mixture schedule vs what a build holds",
        description="Per domain: tokens needed vs available, epochs, and where a domain runs out "
        "under exhaustion policy 'error'. Optionally plots target weights and realized shares.",
    )
    p.add_argument("--manifest", required=True, help="manifest.json of a build")
    p.add_argument("--schedule", default="motif-2.6b", help="preset name (motif-2.6b) or TOML file")
    p.add_argument("--total-tokens", type=_positive_float, required=True, help="training tokens, e.g. 2.5e12")
    p.add_argument("--seq-len", type=_positive_int, required=True, help="training sequence length")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (tie-breaks only)")
    p.add_argument("--plot", help="write a PNG of target weights and realized shares here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from motif_data.mixer.plan import format_plan, plan, plot_plan
    from motif_data.mixer.sampler import QuotaSampler
    from motif_data.mixer.schedule import MixtureSchedule
    from motif_data.shards import Manifest

    schedule = MixtureSchedule.load(args.schedule)
    sampler = QuotaSampler(schedule, args.seq_len, args.seed)
    rows = plan(Manifest.load(args.manifest), sampler, args.total_tokens)
    print(
        f"schedule {schedule.name!r}, {args.total_tokens:.4g} training tokens, seq_len {args.seq_len} "
        f"({args.seq_len + 1}-token packed sequences)"
    )
    print(format_plan(rows, args.total_tokens))
    if args.plot:
        plot_plan(sampler, args.total_tokens, args.plot)
        print(f"plot written to {args.plot}")
    return 0
