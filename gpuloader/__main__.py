"""``python -m gpuloader info``: what gpuloader sees here, and where a Loader would put your data."""

from __future__ import annotations

import argparse
import decimal
import json
import os
import sys
from typing import NoReturn

#: Sizes above this are no dataset: refused, as Python's int64 arithmetic (and NumPy's) would overflow.
MAX_COUNT = 2**63 - 1


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose every refusal is one line on stderr, naming the flag, the value and the rule."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _shape(text: str) -> tuple[int, ...]:
    wrong = argparse.ArgumentTypeError(f"expected sizes >= 1 separated by commas, e.g. 50000,32,32,3; got {text!r}")
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise wrong from None
    if not shape or min(shape) < 1:
        raise wrong
    if max(shape) > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"each size must be at most 2**63 - 1; got {text!r}")
    return shape


def _whole(text: str, what: str) -> int:
    """``text`` as a whole number in [1, 2**63): digits, or a float notation of a whole number (6e9)."""
    try:
        value = decimal.Decimal(text.strip().replace("_", ""))
    except decimal.InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        raise argparse.ArgumentTypeError(f"expected a whole number of {what}, e.g. 6000000000 or 6e9; got {text!r}")
    if value != value.to_integral_value():
        raise argparse.ArgumentTypeError(
            f"expected a whole number of {what}; got {text!r}, which is not whole: round it, e.g. "
            f"{int(value.to_integral_value(decimal.ROUND_CEILING))}"
        )
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected a number of {what} from 1 to 2**63 - 1; got {text!r}")
    return int(value)


def _device(text: str) -> str:
    from gpuloader.placement import resolve_device

    try:
        return resolve_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _fraction(text: str) -> float:
    from gpuloader.placement import DEFAULT_GPU_MEMORY_FRACTION, check_fraction

    try:
        return check_fraction(float(text))
    except ValueError:  # not a number, or outside (0, 1] (nan and inf included)
        raise argparse.ArgumentTypeError(
            f"expected the share of free GPU memory the data may take, a number in (0, 1]; got {text!r}. "
            f"The default {DEFAULT_GPU_MEMORY_FRACTION} leaves half of it to the model"
        ) from None


def _bytes(text: str) -> int:
    return _whole(text, "bytes")


def _rows(text: str) -> int:
    return _whole(text, "samples")


def _batch_size(text: str) -> int:
    return _whole(text, "samples per batch")


def parser() -> argparse.ArgumentParser:
    main = _OneLineParser(prog="python -m gpuloader", description="gpuloader's command line.")
    commands = main.add_subparsers(dest="command", required=True)
    info = commands.add_parser(
        "info",
        help="versions, frameworks, CUDA devices, and where a Loader would place a dataset",
        description="Print gpuloader's view of this machine. With --shape/--dtype (or --bytes), also say "
        "which placement a Loader over such data would choose and why; nothing is loaded or allocated.",
    )
    data = info.add_mutually_exclusive_group()
    data.add_argument("--shape", type=_shape, help="shape of x, samples first, e.g. 50000,32,32,3")
    data.add_argument("--bytes", type=_bytes, dest="nbytes", help="size of the data in bytes (e.g. 6e9)")
    info.add_argument("--dtype", help="dtype of x with --shape (default float32)")
    info.add_argument("--rows", type=_rows, help="with --bytes: number of samples")
    info.add_argument("--y-dtype", help="count in a label array of this dtype, one value per sample (e.g. int32)")
    info.add_argument("--batch-size", type=_batch_size, default=32, help="the Loader's batch_size (default 32)")
    info.add_argument("--device", type=_device, help="the Loader's device (default: $GPULOADER_DEVICE, else auto)")
    info.add_argument("--gpu-memory-fraction", type=_fraction, default=0.5, help="default 0.5")
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
    except (ValueError, TypeError) as error:  # a dtype NumPy or a Loader refuses, or sizes that contradict
        print(f"{arguments.prog} info: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_info(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
