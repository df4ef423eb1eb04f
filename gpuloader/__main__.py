"""``python -m gpuloader info``: what gpuloader sees here, and where a Loader would put your data."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _shape(text: str) -> tuple[int, ...]:
    wrong = argparse.ArgumentTypeError(f"expected sizes >= 1 separated by commas, e.g. 50000,32,32,3; got {text!r}")
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise wrong from None
    if not shape or min(shape) < 1:
        raise wrong
    return shape


def _positive(text: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m gpuloader", description="gpuloader's command line.")
    commands = main.add_subparsers(dest="command", required=True)
    info = commands.add_parser(
        "info",
        help="versions, frameworks, CUDA devices, and where a Loader would place a dataset",
        description="Print gpuloader's view of this machine. With --shape/--dtype (or --bytes), also say "
        "which placement a Loader over such data would choose and why; nothing is loaded or allocated.",
    )
    data = info.add_mutually_exclusive_group()
    data.add_argument("--shape", type=_shape, help="shape of x, samples first, e.g. 50000,32,32,3")
    data.add_argument("--bytes", type=_positive, dest="nbytes", help="size of the data in bytes (e.g. 6e9)")
    info.add_argument("--dtype", help="dtype of x with --shape (default float32)")
    info.add_argument("--rows", type=_positive, help="with --bytes: number of samples")
    info.add_argument("--y-dtype", help="count in a label array of this dtype, one value per sample (e.g. int32)")
    info.add_argument("--batch-size", type=_positive, default=32, help="the Loader's batch_size (default 32)")
    info.add_argument("--device", help="the Loader's device (default: $GPULOADER_DEVICE, else auto)")
    info.add_argument("--gpu-memory-fraction", type=float, default=0.5, help="default 0.5")
    info.add_argument("--json", action="store_true", help="print gpuloader.info()'s dict as JSON")
    return main


def main(argv: list[str] | None = None) -> int:
    arguments = parser()
    args = arguments.parse_args(argv)
    unused = [flag for flag, given in (("--dtype", args.dtype is not None), ("--rows", args.rows is not None),
                                        ("--y-dtype", args.y_dtype is not None))
              if given and args.shape is None and args.nbytes is None]
    if unused:
        arguments.error(f"{', '.join(unused)} only apply to a dataset given by --shape or --bytes; add one")
    if args.dtype is None:
        args.dtype = "float32"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, in this process only
    from gpuloader.info import format_info, info

    try:
        report = info(
            args.shape, args.dtype, nbytes=args.nbytes, rows=args.rows, y_dtype=args.y_dtype,
            batch_size=args.batch_size, device=args.device, gpu_memory_fraction=args.gpu_memory_fraction,
        )
    except (ValueError, TypeError) as error:
        print(f"gpuloader info: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_info(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
