"""Writes the synthetic demo dataset (``ssl4eo_jax.data.demo``) to a directory, like a converter.

    python -m data_prep.demo --out ~/data/demo [--variant demo_ben] [--train 4000 --val 1000 --test 1000]

The generator lives in the library, which uses it when no data directory is given; this is only
its command line.
"""

from __future__ import annotations

import os

from ssl4eo_jax.data.demo import DEFAULT_SIZES, VARIANTS, generate
from ssl4eo_jax.errors import OneLineArgumentParser


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(prog="python -m data_prep.demo", description="Writes the synthetic demo dataset (NOT real imagery) to a directory.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train", type=int, default=DEFAULT_SIZES["train"])
    parser.add_argument("--val", type=int, default=DEFAULT_SIZES["val"])
    parser.add_argument("--test", type=int, default=DEFAULT_SIZES["test"])
    parser.add_argument("--size", type=int, default=48, help="patch size in pixels (multiple of 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="demo", choices=sorted(VARIANTS), help="band set and task")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--records-per-shard", type=int, default=1000)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    generate(args.out, {"train": args.train, "val": args.val, "test": args.test}, args.size, args.seed, args.workers,
             records_per_shard=args.records_per_shard, progress=not args.no_progress, name=args.variant)
    print(f"Wrote the demo dataset to {args.out}")


if __name__ == "__main__":
    from data_prep.convert import main_guard

    main_guard(main)
