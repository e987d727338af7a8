"""Preloaded first into livekit's forkserver, so that the forkserver dies with the worker that started it.

Room processes fork from the forkserver and die with it (``limits.die_with_parent`` in prewarm). The forkserver
itself only exits when a pipe whose write end every room process also holds reaches EOF: after a SIGKILL of the
worker the two waited on each other forever (seen: a forkserver and its idle process, ~700 MB, outliving a
killed worker). With this, they go with the worker, and supervisord's new worker starts clean.
"""

from __future__ import annotations

import sys

from agent.limits import die_with_parent

# The forkserver is `python -c "from multiprocessing.forkserver import main; ..."`; the worker itself never
# imports this module (it only names it to preload).
if sys.argv[:1] == ["-c"]:
    die_with_parent()
