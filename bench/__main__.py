"""`python -m bench`: measure the CRS services against the floor and the naive approach."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.report import render, write_json
from bench.run import SERVICE_FACTORY, Options, run

RESULTS_DIR = Path(__file__).parent / "results"


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(sorted({int(item.replace("_", "")) for item in text.split(",") if item}))
    if not sizes or min(sizes) < 6:
        raise argparse.ArgumentTypeError("sizes are numbers of resources, each at least 6")
    return sizes


def parse_options(argv: Sequence[str] | None = None) -> tuple[Options, Path]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="few repetitions and a short RSS soak (~1 minute)"
    )
    parser.add_argument(
        "--sizes", type=_sizes, default=(100, 1_000, 10_000), help="resources per payload"
    )
    parser.add_argument(
        "--reps", type=int, help="repetitions per size (default 300/200/25 by size; quick: 30/20/3)"
    )
    parser.add_argument(
        "--rss-requests", type=int, help="requests of the RSS soak (default 10,000; quick 1,000)"
    )
    parser.add_argument("--rss-size", type=int, default=1_000, help="resources per soak request")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--service-factory",
        default=SERVICE_FACTORY,
        help="uvicorn app factory of the service (module:function), to measure a change",
    )
    args = parser.parse_args(argv)
    if args.reps is not None:
        repetitions = {size: args.reps for size in args.sizes}
    elif args.quick:
        repetitions = {100: 30, 1_000: 20, 10_000: 3}
    else:
        repetitions = {100: 300, 1_000: 200, 10_000: 25}
    rss_requests = args.rss_requests or (1_000 if args.quick else 10_000)
    options = Options(
        sizes=args.sizes,
        repetitions=repetitions,
        rss_requests=rss_requests,
        rss_size=args.rss_size,
        service_factory=args.service_factory,
    )
    return options, args.results_dir


def main(argv: Sequence[str] | None = None) -> int:
    options, results_dir = parse_options(argv)
    results = run(options, log=lambda line: print(line, file=sys.stderr, flush=True))
    figures = results.figures()
    print(render(figures))
    path = write_json(figures, results_dir)
    print(f"\nfigures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
