"""A fork server for ``bench/run.py``: every case still gets a process of its own, without paying the imports.

Started once per run by ``bench/run.py`` (``--spawn fork``, the quick profile's
default). It imports NumPy, TensorFlow, Keras, gpuloader and ``cases`` once and
runs nothing else: no TensorFlow op, no dataset, no loader. Then, for every
request (a JSON line on stdin: ``{"argv": [...], "module": "cases", "timeout": seconds}``),
it forks a child that runs ``<module>.main(argv)`` (a module of ``bench/``,
imported by the server the first time it is named) and exits; the child's stdout and
stderr go to temporary files, and one JSON line goes back on stdout:
``{"rc": ..., "stdout": ..., "stderr": ..., "seconds": ...}``.

So each case runs in a fresh process that has never run another case (the
reason for one process per case: after a ``tf.data`` pipeline has run in a
process, later work there runs about 2x slower, shared/notes/pitfalls.md item 5),
and starting it costs a ``fork`` instead of about 4 s of imports on a 2-core
machine. The one difference from a fresh interpreter: the libraries are already
imported (pages shared with the server, copy-on-write), as they would be in any
training script by the time its first batch is read. A case whose process must
not import TensorFlow at all (the bare NumPy gather) never uses this server.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback


def _serve_one(request: dict, case_main) -> dict:
    argv, timeout = request["argv"], float(request.get("timeout", 600))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: run one case, never return into the server's loop
            code = 1
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = os.fdopen(1, "w", closefd=False)
                sys.stderr = os.fdopen(2, "w", closefd=False)
                code = case_main(argv)
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code if isinstance(code, int) else 1)
        status = None
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            elif time.perf_counter() - start > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = "timeout"
            else:
                time.sleep(0.02)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        return {
            "rc": status,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace")[-8000:],
            "seconds": seconds,
        }


def main() -> int:
    started = time.perf_counter()
    import cases  # noqa: F401
    import keras  # noqa: F401
    import numpy  # noqa: F401
    import tensorflow  # noqa: F401

    import gpuloader

    gpuloader.Loader  # noqa: B018 - load the Loader (and Keras's adapters) now, not in every child
    reply = sys.stdout
    print(json.dumps({"ready": True, "import_s": time.perf_counter() - started}), file=reply, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        module = importlib.import_module(request.get("module", "cases"))
        print(json.dumps(_serve_one(request, module.main)), file=reply, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
