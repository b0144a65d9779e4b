"""A process killed while it writes a checkpoint, for tests/scenarios/torn_write.py.

This folder is on the PYTHONPATH of that scenario's Ray workers only, so Python imports this
module as each worker starts. The first checkpoint write of step ``GECKO_TEST_KILL_SEQ`` then
SIGKILLs the process (the coordinator, the only writer): at ``data``, after writing half of the
step's data object (the worst a store can leave: a truncated object in place; every step gets
an object here, however small); at ``marker``, after the data object and before its commit
marker.
"""

import os
import signal

_WHERE = os.environ.get("GECKO_TEST_KILL_AT")

if _WHERE:
    from gecko_actors.checkpoint import CheckpointStore as _Store

    if _WHERE == "data":  # small steps go inside their marker: make every step an object
        _Store.__init__.__kwdefaults__["inline_limit"] = 0
    _put, _put_if_absent = _Store._put, _Store._put_if_absent
    _seq = os.environ["GECKO_TEST_KILL_SEQ"]
    _flag = os.environ["GECKO_TEST_KILL_FLAG"]  # created first: only the first writer dies

    def _dies_here(path):
        return f"/steps/{_seq}" in path and not os.path.exists(_flag)

    def _killing_put(self, path, data, run_id):
        if _WHERE == "data" and _dies_here(path) and path.endswith(".msgpack"):
            open(_flag, "w").close()
            _put(self, path, data[: len(data) // 2], run_id)  # a truncated data object
            os.kill(os.getpid(), signal.SIGKILL)
        return _put(self, path, data, run_id)

    def _killing_put_if_absent(self, path, data, run_id):
        if _WHERE == "marker" and _dies_here(path) and path.endswith(".commit"):
            open(_flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)  # the data is written, its marker is not
        return _put_if_absent(self, path, data, run_id)

    _Store._put, _Store._put_if_absent = _killing_put, _killing_put_if_absent
