"""What a run tells its user while it trains: ``log.txt``, ``metrics.jsonl``, TensorBoard.

The pieces the logging hook (:class:`training.hooks.TrainingLogger`) is made of, each usable on
its own: the run's log file (:class:`RunLogFile`), the JSON-lines + TensorBoard writer
(:class:`MetricsWriter`), the reductions across ranks (:func:`reduce_mean`, :func:`reduce_max`,
detectron2's ``reduce_dict``), the step-time window behind the ETA (:class:`StepTimes`, as
detectron2's ``CommonMetricPrinter``) and the peak memory (:func:`peak_memory`).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import resource
import statistics
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("maskx.train")

LOG_FILE = "log.txt"
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"
# The loggers of maskx's packages: what log.txt holds (the data set's held-out count is
# logged by training.datasets, the trainer's lines by maskx.train).
RUN_LOGGERS = ("maskx", "training", "model")


def timestamp() -> dict[str, Any]:
    """``{"time": ISO 8601 UTC, "unix": seconds since the epoch}`` for a record of now."""
    now = time.time()
    iso = _dt.datetime.fromtimestamp(now, _dt.UTC).isoformat(timespec="milliseconds")
    return {"time": iso.replace("+00:00", "Z"), "unix": round(now, 3)}


# ----------------------------------------------------------------------------- log.txt
class LogCapture(logging.Handler):
    """Holds the records of maskx's loggers while a run is being built, before its folder
    exists (a run that cannot start leaves no folder); :class:`RunLogFile` writes them first.
    Use as a context manager; ``records`` stays readable after it closes."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self._levels = _LoggerLevels()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> LogCapture:
        self._levels.raise_to_info()
        for name in RUN_LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in RUN_LOGGERS:
            logging.getLogger(name).removeHandler(self)
        self._levels.restore()


class RunLogFile:
    """``log.txt`` of a run folder: every INFO record of maskx's loggers, appended (a resumed
    run continues the file), while :meth:`open` … :meth:`close`. What reaches stderr is left
    to the logging configuration of the program (``maskx train`` logs INFO to stderr)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOG_FILE
        self.handler: logging.FileHandler | None = None
        self._levels = _LoggerLevels()

    def open(self, earlier: Iterable[logging.LogRecord] = ()) -> None:
        """Start writing; ``earlier`` records (a :class:`LogCapture`'s) are written first."""
        handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        for record in earlier:
            handler.handle(record)
        self._levels.raise_to_info()
        for name in RUN_LOGGERS:
            logging.getLogger(name).addHandler(handler)
        self.handler = handler

    def close(self) -> None:
        if self.handler is None:
            return
        for name in RUN_LOGGERS:
            logging.getLogger(name).removeHandler(self.handler)
        self.handler.close()
        self.handler = None
        self._levels.restore()


class _LoggerLevels:
    # A library must not change what the program's own logging shows, yet log.txt needs INFO
    # records even when the program logs only warnings (or never configured logging: the
    # Python API, tests). For the run's duration, maskx's loggers that would drop INFO are
    # lowered to INFO and stop propagating; a forwarder passes on to the program's handlers
    # only what they passed on before. Everything is put back afterwards.
    def __init__(self) -> None:
        self._saved: dict[str, tuple[int, bool, logging.Handler]] = {}

    def raise_to_info(self) -> None:
        for name in RUN_LOGGERS:
            logger = logging.getLogger(name)
            before = logger.getEffectiveLevel()
            if before > logging.INFO:
                forward = _Forward(logger, self._saved)
                self._saved[name] = (logger.level, logger.propagate, forward)
                logger.setLevel(logging.INFO)
                logger.propagate = False
                logger.addHandler(forward)

    def restore(self) -> None:
        for name, (level, propagate, forward) in self._saved.items():
            logger = logging.getLogger(name)
            logger.removeHandler(forward)
            logger.setLevel(level)
            logger.propagate = propagate
        self._saved.clear()


class _Forward(logging.Handler):
    """Propagates the records that the logger they were made at would have made before the
    run lowered its level (a child with a level of its own, such as ``maskx.train`` at INFO,
    kept making them, and they reached the program's handlers)."""

    def __init__(self, logger: logging.Logger, saved: dict[str, tuple[int, bool, Any]]) -> None:
        super().__init__(logging.NOTSET)
        self.logger = logger
        self.propagate = logger.propagate
        self._saved = saved

    def _level_before(self, name: str) -> int:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            level = self._saved[logger.name][0] if logger.name in self._saved else logger.level
            if level != logging.NOTSET:
                return level
            logger = logger.parent  # type: ignore[assignment]
        return logging.WARNING

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < self._level_before(record.name):
            return
        if self.propagate and self.logger.parent is not None:
            self.logger.parent.handle(record)


# ------------------------------------------------------------------------ across ranks
def reduce_mean(values: Mapping[str, float], device: torch.device) -> dict[str, float]:
    """Each value averaged over the ranks (detectron2's ``reduce_dict``); ``values`` unchanged
    without a process group. Every rank must call it with the same keys."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def reduce_max(values: list[float], device: torch.device) -> list[float]:
    """The largest of each value over the ranks (the slowest rank's time sets the pace)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


# ------------------------------------------------------------------------ time, memory
class StepTimes:
    """Step and data-loading times of the last ``window`` steps.

    The ETA is the median step time of the window times the steps left (detectron2's
    ``CommonMetricPrinter`` takes the median of 1000): a median shrugs off the slow first steps
    and the odd stall, and evaluation and checkpointing are left out of it.
    """

    def __init__(self, window: int = 1000) -> None:
        self.step: deque[float] = deque(maxlen=window)
        self.data: deque[float] = deque(maxlen=window)

    def add(self, step_s: float, data_s: float) -> None:
        self.step.append(step_s)
        self.data.append(data_s)

    def recent(self, n: int) -> tuple[float, float]:
        """Median (step, data) time of the last ``n`` steps, in seconds (0 before any)."""
        if not self.step:
            return 0.0, 0.0
        n = max(1, min(n, len(self.step)))
        return (
            statistics.median(list(self.step)[-n:]),
            statistics.median(list(self.data)[-n:]),
        )

    def eta_seconds(self, steps_left: int) -> float:
        return statistics.median(self.step) * max(steps_left, 0) if self.step else 0.0


def format_eta(seconds: float) -> str:
    """``1 day, 2:03:04`` / ``0:05:00``: whole seconds."""
    return str(_dt.timedelta(seconds=int(seconds)))


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(MiB, kind): the most CUDA memory torch allocated on ``device`` since the start
    (``cuda allocated``), else the process's peak resident set (``process max RSS``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process max RSS"


# ------------------------------------------------------------------------ metrics.jsonl
class MetricsWriter:
    """JSON lines (``metrics.jsonl``) + TensorBoard scalars (rank 0 only)."""

    def __init__(self, out_dir: Path, tensorboard: bool) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.out_dir = out_dir
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                log.warning("tensorboard is not installed: no TensorBoard scalars")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["step"]
            for k, v in flatten(record).items():
                if k not in ("step", "unix") and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a/b": 1}`` (TensorBoard tags)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
