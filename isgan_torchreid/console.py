"""What the tools write to the console: progress of long loops, line-buffered output, the mirror into train.log.

* :func:`progress` wraps every long loop (the image check before training, feature extraction in evaluation,
  tools/extract.py, the benchmarks that go over a dataset): a tqdm bar on a terminal, and where stderr is
  not a terminal (nohup, a batch scheduler, ``| tee``) one plain line per ``every`` percent instead of a
  bar's carriage returns. Loops shorter than ``quiet_s`` seconds show nothing; processes of rank > 0 under
  torchrun show nothing.
* :func:`line_buffered`: stdout and stderr written to a file or a pipe are flushed at every newline, so that
  a log shows each line as it is printed, not blocks of 8 KiB at a time (or everything at exit).
* :func:`console_log` mirrors stdout and stderr into a file (train.log); a progress bar goes to the
  terminal only, its plain lines to both.
"""
import contextlib
import io
import sys
import time
import traceback

from tqdm import tqdm

from . import comm
from .errors import ISGANError

EVERY = 10  # percent of the work between two plain progress lines
QUIET_S = 5.0  # seconds a loop runs before its progress shows: short loops stay silent


def terminal(stream):
    """The stream behind ``stream``: the console itself where ``stream`` is :func:`console_log`'s mirror."""
    while isinstance(stream, _Tee):
        stream = stream.streams[0]
    return stream


def interactive(stream=None):
    """Whether ``stream`` (default: stderr, where progress goes) is a terminal."""
    stream = terminal(sys.stderr if stream is None else stream)
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable=None, total=None, desc="", unit="it", every=None, quiet_s=None, disable=False):
    """``iterable`` (or, without one, a counter advanced by ``update(n)``) with its progress shown on stderr.

    A terminal gets a tqdm bar (from ``quiet_s`` seconds on, gone when done); a file or a pipe gets
    :class:`ProgressLines` instead. Either is a context manager with ``update(n)``, ``set_postfix(**values)``
    and ``close()``. ``total``: the number of items (default: ``len(iterable)`` where it has one);
    ``every``, ``quiet_s``: default :data:`EVERY`, :data:`QUIET_S`. Nothing is shown with ``disable`` or on
    ranks other than 0.
    """
    every = EVERY if every is None else every
    quiet_s = QUIET_S if quiet_s is None else quiet_s
    silent = disable or comm.env_rank() != 0
    if not silent and interactive():
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=terminal(sys.stderr), leave=False,
                    delay=quiet_s, dynamic_ncols=True)
    return ProgressLines(iterable, total, desc, unit, every, quiet_s, silent)


class ProgressLines:
    """Progress as plain lines on stderr: one each time the work done crosses a multiple of ``every`` percent
    (one line for several multiples crossed in one update), from ``quiet_s`` seconds on; e.g.
    ``checking market1501 train images: 3880/12936 img (30%) in 0:00:41, eta 0:01:36``. Without a total,
    one line at the end (after ``quiet_s`` seconds)."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", every=EVERY, quiet_s=QUIET_S, silent=False,
                 clock=time.monotonic):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.steps = max(1, -(-100 // max(1, int(every))))  # lines over the whole work: 100 / every, rounded up
        self.quiet_s, self.silent, self.clock = quiet_s, silent, clock
        self.n, self.shown, self.postfix, self.closed = 0, 0, {}, False
        self.start = clock()

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1):
        self.n += n
        if self.silent or not self.total:
            return
        step = min(self.steps, self.n * self.steps // self.total)
        if step > self.shown and self.clock() - self.start >= self.quiet_s:
            self.shown = step
            self._line()

    def set_postfix(self, **values):
        self.postfix = values

    def close(self):
        if self.closed:
            return
        self.closed = True
        if not self.silent and not self.total and self.n and self.clock() - self.start >= self.quiet_s:
            self._line()

    def _line(self):
        elapsed = self.clock() - self.start
        done = f"{self.n}/{self.total} {self.unit} ({100 * self.n // self.total}%)" if self.total else \
            f"{self.n} {self.unit}"
        text = f"{self.desc}: {done} in {_clock(elapsed)}"
        if self.total and 0 < self.n < self.total:
            text += f", eta {_clock(elapsed * (self.total - self.n) / self.n)}"
        text += "".join(f", {key} {value}" for key, value in self.postfix.items())
        print(text, file=sys.stderr, flush=True)


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def line_buffered():
    """Make stdout and stderr flush at every newline where they are not a terminal (a terminal's already do):
    under nohup or a batch scheduler, or piped into ``tee``, each line shows when printed. Every tool calls
    this first (:func:`~isgan_torchreid.cli.reports_errors`)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None or interactive(stream) or not hasattr(stream, "reconfigure"):
            continue
        try:
            stream.reconfigure(line_buffering=True)
        except (ValueError, io.UnsupportedOperation):  # a closed or detached stream
            pass


class _Tee:
    """A text stream writing to several streams; anything else (isatty, fileno, encoding) is the first's."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()

    def __getattr__(self, name):
        return getattr(self.streams[0], name)


@contextlib.contextmanager
def console_log(path, command=""):
    """Mirror stdout and stderr into ``path`` (appended, line-buffered) within the block, after a header line
    with the time and ``command``; an exception that ends the block is written there too (ISGANError as its
    one ``error:`` line, anything else as its traceback)."""
    with open(path, "a", buffering=1) as log:
        log.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} {command}\n")
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield
        except ISGANError as e:
            log.write(f"error: {e}\n")
            raise
        except BaseException:
            log.write(traceback.format_exc())
            raise
        finally:
            sys.stdout, sys.stderr = out, err
