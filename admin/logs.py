"""Log lines of Flask-AppBuilder and waitress that say nothing true about a Heartline admin.

- FAB's "No user yet created, use flask fab command to do it." at every start before the first admin
  exists: `heartline dev` creates one right after, `heartline create-admin` is the command (not `flask fab`).
- waitress's "Task queue depth is N" while N is below the number of threads: a browser loading a page
  with its scripts and styles queues a few requests for milliseconds; a queue as long as the thread pool
  (a real backlog) still warns.
"""

from __future__ import annotations

import logging

from flask_appbuilder.const import LOGMSG_WAR_SEC_NO_USER


class _NoUserYet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != LOGMSG_WAR_SEC_NO_USER


class _ShortQueue(logging.Filter):
    def __init__(self, threads: int) -> None:
        super().__init__()
        self.threads = threads

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Task queue depth is %d" and isinstance(record.args, tuple) and record.args:
            depth = record.args[0]
            return isinstance(depth, int) and depth >= self.threads
        return True


_no_user_yet = _NoUserYet()


def quiet_fab() -> None:
    """Idempotent: a filter instance is added to a logger once."""
    logging.getLogger("flask_appbuilder.security.manager").addFilter(_no_user_yet)


def quiet_waitress(threads: int) -> None:
    queue = logging.getLogger("waitress.queue")
    for old in [f for f in queue.filters if isinstance(f, _ShortQueue)]:
        queue.removeFilter(old)
    queue.addFilter(_ShortQueue(threads))
