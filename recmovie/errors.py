"""Errors a user can act on: each names the file and line, or the config key, at fault."""


class RecmovieError(Exception):
    """Base class: caught by the command-line entry points and printed without a traceback."""


class DataError(RecmovieError, ValueError):
    """An input file is missing, empty or malformed."""

    def __init__(self, path: object, problem: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class ConfigError(RecmovieError, ValueError):
    """A config value is wrong; raised before any work starts."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"config `{key}`: {problem}")


class TrackingError(RecmovieError):
    """The MLflow store cannot be opened or created; raised before any work starts."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        self.problem = problem
        super().__init__(f"cannot open the MLflow store {uri}: {problem} "
                         f"(set tracking.uri or MLFLOW_TRACKING_URI, or tracking.enabled=false)")
