"""The exception hierarchy of mla-tune: every error a user can cause or meet, with structured fields."""

from __future__ import annotations

from collections.abc import Iterable


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as one line of at most ``limit`` characters (a measurement's message, a log line)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class MlaTuneError(Exception):
    """Base class. ``str(err)`` is one line fit for a terminal; ``hint`` says how to fix it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(MlaTuneError):
    """The user asked for something that does not exist or does not fit together."""

    exit_code = 2


class UnknownNameError(UsageError):
    """An unknown backend, workload, model, sampler, runner, ...: names the valid choices."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(self.valid)}")


class BatchSpecError(UsageError):
    """A batch spec that does not parse; names the bad segment."""

    def __init__(self, spec: str, segment: str, reason: str) -> None:
        self.spec, self.segment, self.reason = spec, segment, reason
        super().__init__(f"invalid batch spec {spec!r}: segment {segment!r}: {reason}")


class DataFileError(UsageError):
    """A YAML/JSON data file that fails validation; names the file and the key."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        self.path, self.key, self.reason = str(path), key, reason
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {reason}")


class StorageError(MlaTuneError):
    """An Optuna storage that cannot be opened or does not fit the job."""


class RunnerUnavailableError(MlaTuneError):
    """No usable runner here (no GPU, vLLM missing, a backend this GPU cannot run)."""


class StudyNotFoundError(UsageError):
    """Export/show found no study for the request."""
