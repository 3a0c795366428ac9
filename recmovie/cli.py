"""Entry-point glue: logging setup, and errors a user can fix printed as one clear line."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any, Callable

from omegaconf.errors import OmegaConfBaseException

from recmovie.errors import RecmovieError

INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C (128 + SIGINT)


def _terminate(signum, frame) -> None:
    # `kill` (SIGTERM) stops the run like Ctrl-C does: temporary files are removed, the MLflow run
    # is marked KILLED, a gradient training can be resumed from its last epoch
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def run_cli(fn: Callable[[Any], Any], cfg) -> Any:
    """Call fn(cfg); a RecmovieError or a config error exits with status 2 and a one-line message
    (set RECMOVIE_TRACEBACK=1 for the full traceback); Ctrl-C or SIGTERM exit with status 130
    and one line."""
    logging.getLogger("recmovie").setLevel(logging.INFO)
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


def check_output_folder(config_name: str, argv: list[str]) -> None:
    """Stop in one line, before Hydra sets up the run, when the run's folder (hydra.run.dir, or
    hydra.sweep.dir with -m) cannot be written: Hydra would fail in its logging set-up with a
    traceback (`Unable to configure handler 'file'`). Nothing is created here; a command line
    Hydra cannot compose is left for Hydra to report."""
    import errno
    import tempfile
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from recmovie.config import CONF_DIR

    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        folder = Path(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir))
    except Exception:
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


def prepare_command_line(config_name: str) -> None:
    """Before an entry point's Hydra main: quote what Hydra could not read unquoted (a Korean
    folder name) and stop in one line if the run's folder cannot be written."""
    sys.argv[1:] = quote_overrides(sys.argv[1:])
    check_output_folder(config_name, sys.argv[1:])
