"""Entry-point glue: logging setup, and errors a user can fix printed as one clear line."""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from omegaconf.errors import OmegaConfBaseException

from recmovie.errors import RecmovieError

INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C (128 + SIGINT)


def _terminate(signum, frame) -> None:
    # `kill` (SIGTERM) stops the run like Ctrl-C does: temporary files are removed, the MLflow run
    # is marked KILLED, a gradient training can be resumed from its last epoch
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def stdout_gone() -> None:
    """Point stdout at /dev/null because its reader has gone (`python train.py | head -1`): the
    run's outputs are written and tracked whatever the console shows, so a closed pipe must not
    fail it (Python's own advice for BrokenPipeError, in the signal module's notes)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def say(text: str) -> None:
    """Print a console summary; a reader that has gone is let go (stdout_gone)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        stdout_gone()


def _console_handlers_let_a_closed_stdout_go() -> None:
    # Hydra's console handler writes the log to stdout; logging would print a "Logging error"
    # traceback for every line once stdout's reader has gone
    for handler in logging.getLogger().handlers:
        if (isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout
                and not getattr(handler, "_lets_stdout_go", False)):
            original = handler.handleError

            def handle_error(record, original=original):
                if isinstance(sys.exc_info()[1], BrokenPipeError):
                    stdout_gone()
                else:
                    original(record)

            handler.handleError = handle_error
            handler._lets_stdout_go = True


def run_cli(fn: Callable[[Any], Any], cfg) -> Any:
    """Call fn(cfg); a RecmovieError or a config error exits with status 2 and a one-line message
    (set RECMOVIE_TRACEBACK=1 for the full traceback); Ctrl-C or SIGTERM exit with status 130
    and one line. A console whose reader has gone (`| head`) does not fail the run."""
    logging.getLogger("recmovie").setLevel(logging.INFO)
    _console_handlers_let_a_closed_stdout_go()
    main_thread = threading.current_thread() is threading.main_thread()  # a parallel sweep job runs in a worker thread
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return fn(cfg)
    except (RecmovieError, OmegaConfBaseException, FileNotFoundError, LookupError) as e:
        if os.environ.get("RECMOVIE_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        if os.environ.get("RECMOVIE_TRACEBACK"):
            raise
        print(f"interrupted{f' ({e})' if str(e) else ''}", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def quote_overrides(argv: list[str]) -> list[str]:
    """Command-line overrides whose value Hydra's grammar cannot read unquoted (a folder with a
    Korean name, `data.dir=/data/데이터`), quoted, so that the user need not: an override Hydra
    reads as it is stays as it is (sweeps `a=1,2`, lists, interpolations)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if arg.startswith("-") or not eq or not value:
            out.append(arg)
            continue
        try:
            parser.parse_override(arg)
            out.append(arg)
            continue
        except HydraException:
            pass
        for quote in ("'", '"'):
            if quote not in value:
                quoted = f"{key}={quote}{value}{quote}"
                try:
                    parser.parse_override(quoted)
                except HydraException:
                    continue
                arg = quoted
                break
        out.append(arg)
    return out


def output_folder(argv: list[str]) -> Path | None:
    """The folder a command line's run (or sweep, with -m) writes into, as far as it is known
    without composing the config (a compose costs seconds): `hydra.run.dir` / `hydra.sweep.dir`
    when given, else `paths.log_dir` (given, or conf/paths/default.yaml's). None when a value holds
    an interpolation."""
    from omegaconf import OmegaConf

    from recmovie.config import CONF_DIR

    multirun = any(a in ("-m", "--multirun") for a in argv)
    given = dict(a.lstrip("+").split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = given.get(key)
    if folder is None:
        folder = given.get("paths.log_dir", str(OmegaConf.load(CONF_DIR / "paths" / "default.yaml").log_dir))
    folder = folder.strip("'\"")
    return None if "${" in folder else Path(folder)


def check_output_folder(argv: list[str]) -> None:
    """Stop in one line, before Hydra sets up the run, when the run's folder cannot be written:
    Hydra would fail in its logging set-up with a traceback (`Unable to configure handler 'file'`).
    Nothing is created here: a temporary file is made and removed in the nearest existing folder."""
    import errno
    import tempfile

    folder = output_folder(argv)
    if folder is None:
        return
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file stands where a folder should", str(probe))
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".recmovie-write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        print(f"error: cannot write the run folder {folder} ({e.strerror}: {e.filename or probe}); "
              "choose another with hydra.run.dir=... (hydra.sweep.dir=... with -m)", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def run_script(main: Callable[[], Any]) -> None:
    """An entry point's body: prepare the command line, run its Hydra `main`, and when that ends
    well, end the process at once. Python's own teardown (freeing every object of torch, MLflow,
    SQLAlchemy and numba) takes longer than reading a cached data set (benchmarks/RESULTS.md#cost);
    what it would do that matters, the atexit handlers (logging's flush, temporary folders,
    coverage), runs first. An error, a thread still running, or a profiler, debugger or `python -i` waiting
    for the script to return takes the normal way out."""
    prepare_command_line()
    main()
    main_thread = threading.main_thread()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not main_thread):
        return
    if sys.getprofile() is not None or sys.gettrace() is not None or sys.flags.interactive:
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that has gone (`| head`), a closed stream
            stream.flush()
    os._exit(0)


def prepare_command_line() -> None:
    """Before an entry point's Hydra main: quote what Hydra could not read unquoted (a Korean
    folder name) and stop in one line if the run's folder cannot be written."""
    sys.argv[1:] = quote_overrides(sys.argv[1:])
    check_output_folder(sys.argv[1:])
