"""A process killed while it writes a checkpoint, for tests/scenarios/torn_write.py.

This folder is on the PYTHONPATH of that scenario's Ray workers only, so Python imports this
module as each worker starts. The first checkpoint write of step ``GECKO_TEST_KILL_SEQ`` then
SIGKILLs the process (the coordinator, the only writer): at ``data``, after writing half of the
step's data object (the worst a store can leave: a truncated object in place); at ``marker``,
after the data object and before its commit marker.
"""

import os
import signal

_WHERE = os.environ.get("GECKO_TEST_KILL_AT")

if _WHERE:
    from gecko_actors import checkpoint as _checkpoint

    _put = _checkpoint.CheckpointStore._put
    _seq = os.environ["GECKO_TEST_KILL_SEQ"]
    _flag = os.environ["GECKO_TEST_KILL_FLAG"]  # created first: only the first writer dies

    def _killing_put(self, path, data, run_id):
        if f"/steps/{_seq}." in path and not os.path.exists(_flag):
            if _WHERE == "data" and path.endswith(".msgpack"):
                open(_flag, "w").close()
                _put(self, path, data[: len(data) // 2], run_id)
                os.kill(os.getpid(), signal.SIGKILL)
            if _WHERE == "marker" and path.endswith(".commit"):
                open(_flag, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        return _put(self, path, data, run_id)

    _checkpoint.CheckpointStore._put = _killing_put
