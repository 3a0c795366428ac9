"""Entry-point glue: logging setup, and errors a user can fix printed as one clear line."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

from omegaconf.errors import OmegaConfBaseException

from recmovie.errors import RecmovieError


def run_cli(fn: Callable[[Any], Any], cfg) -> Any:
    """Call fn(cfg); a RecmovieError or a config error exits with status 2 and a one-line message
    (set RECMOVIE_TRACEBACK=1 for the full traceback)."""
    logging.getLogger("recmovie").setLevel(logging.INFO)
    try:
        return fn(cfg)
    except (RecmovieError, OmegaConfBaseException, FileNotFoundError, LookupError) as e:
        if os.environ.get("RECMOVIE_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
