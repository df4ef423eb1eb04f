"""A decode worker: a fresh interpreter that decodes chunks of images into a cache file, then exits.

Run by :func:`gpuloader.ingest.decode.decode_into` as ``python -m gpuloader.ingest._decode_worker``.
It reads one pickled ``(settings, out_path, jobs)`` from standard input (``jobs``: a list of
``(items, start, names)``), writes ``done <count>`` on standard output after each chunk, then
``problems <hex of a pickled list of (row, problem)>``. A fresh interpreter, not a fork: the
caller's process may run TensorFlow's threads, whose locks a forked child could inherit held, and
unlike ``spawn`` it never imports the caller's script again.
"""

from __future__ import annotations

import pickle
import sys


def main() -> int:
    from gpuloader.ingest.decode import decode_chunk

    settings, out_path, jobs = pickle.load(sys.stdin.buffer)
    problems = []
    for items, start, names in jobs:
        problems.extend(decode_chunk(items, start, out_path, settings, names))
        print(f"done {len(items)}", flush=True)
    print(f"problems {pickle.dumps(problems).hex()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
