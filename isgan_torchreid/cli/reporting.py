"""The one place the tools report errors: a user error or an interruption is one line and an exit status."""
import functools
import signal
import sys
import threading

from .. import comm
from ..console import line_buffered
from ..engine import distributed
from ..errors import ISGANError


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop), raised like Ctrl-C's KeyboardInterrupt so that the same cleanup runs:
    temp files are removed, data-loader workers end, nothing half-written is left."""

def _terminate(signum, frame):
    raise Terminated()

def reports_errors(main):
    """Print an ISGANError as one line (exit 2), and Ctrl-C or SIGTERM as one line (exit 130 or 143, as a shell
    reports them), unless ``--debug`` is given. Every tool's entry point: stdout and stderr are made
    line-buffered here first (:func:`~isgan_torchreid.console.line_buffered`).

    Under torchrun every rank meets a user error alike (they read the same config, data and checkpoints, and
    decide on non-finite losses together): rank 0 prints it, and torchrun stops the job when rank 0 exits.
    The other ranks wait for that, quietly; one that is still running after
    :data:`~isgan_torchreid.engine.distributed.report_grace_s` met an error of its own, and prints it.
    """
    @functools.wraps(main)
    def wrapper(argv=None):
        argv = sys.argv[1:] if argv is None else list(argv)
        line_buffered()
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
        try:
            return main(argv)
        except ISGANError as e:
            if "--debug" in argv:
                raise
            rank = comm.env_rank()
            if rank:
                if in_main_thread:  # torchrun's stop ends this wait as it did before: quietly
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                distributed.wait_for_main_to_report()
            print(f"error{f' (rank {rank})' if rank else ''}: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as e:
            if "--debug" in argv:
                raise
            what, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)
            print(f"{what}: nothing half-written is left; run the same command again (training resumes from its "
                  f"last checkpoint)", file=sys.stderr)
            sys.exit(code)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
    return wrapper
