"""Data loaders that neither hang nor outlive the trainer.

* A worker that produces no batch within ``DATA.LOADER_TIMEOUT`` seconds (a read stuck on an unreachable
  network file system, a deadlock) stops the run with one line naming the key, instead of waiting forever.
* Workers end as soon as the trainer ends, however it ends (SIGKILL, SIGTERM, Ctrl-C). torch's workers watch
  only their parent process, and workers started from a forkserver have the forkserver as parent; the forkserver
  in turn waits until every worker has closed its end of the "alive" pipe. So after ``kill -9`` of the trainer
  both waited for each other forever. Here each worker also watches the trainer (the process that asked for
  it) from a daemon thread; once the workers are gone the forkserver and torch's resource tracker exit too.
"""
import multiprocessing
import os
import select
import threading
import time

import torch

from ..errors import ISGANError

_TIMEOUT_MESSAGE = "DataLoader timed out"  # how torch's RuntimeError for a worker past its timeout starts


class GuardedLoader(torch.utils.data.DataLoader):
    """A DataLoader whose timeout (with workers) ends the run with an :class:`ISGANError` naming the key."""

    def __iter__(self):
        batches = super().__iter__()
        try:
            yield from batches
        except RuntimeError as e:
            if not str(e).startswith(_TIMEOUT_MESSAGE):
                raise
            raise ISGANError(f"a data-loader worker produced no batch in {self.timeout:g} s (DATA.LOADER_TIMEOUT): "
                             f"a read is stuck (e.g. an unreachable network file system) or the machine is "
                             f"overloaded; rerunning resumes from the latest checkpoint; raise "
                             f"DATA.LOADER_TIMEOUT (0: no limit) if reads are just slow") from None


def guarded(loader, timeout):
    """``loader`` (same dataset, sampler, batches) as a :class:`GuardedLoader` with ``timeout`` seconds per batch
    (0: none) whose workers end with the trainer."""
    workers = loader.num_workers > 0
    return GuardedLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=timeout if workers else 0, worker_init_fn=exit_with_trainer if workers else None,
        multiprocessing_context=loader.multiprocessing_context, persistent_workers=loader.persistent_workers)


def wait_for_exit(pid, poll=1.0):
    """Return once process ``pid`` has ended (a zombie counts as ended).

    Linux >= 5.3 (``os.pidfd_open``) is told by the kernel; elsewhere the process is polled every ``poll`` s.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd on this system
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:  # alive, owned by someone else
                pass
            time.sleep(poll)
    try:
        select.select([fd], [], [])  # readable once the process has exited
    finally:
        os.close(fd)


def _exit_after(pid):
    wait_for_exit(pid)
    os._exit(0)  # no clean-up: the trainer, which would read this worker's results, is gone


def exit_with_trainer(worker_id):
    """DataLoader ``worker_init_fn``: end this worker as soon as the trainer that asked for it ends."""
    trainer = multiprocessing.parent_process()  # the requesting process, also when started by a forkserver
    threading.Thread(target=_exit_after, args=(trainer.pid,), name="exit-with-trainer", daemon=True).start()
