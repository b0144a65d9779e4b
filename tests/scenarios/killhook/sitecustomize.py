"""A process killed while it writes a checkpoint, for tests/scenarios/torn_write.py.

This folder is on the PYTHONPATH of that scenario's Ray workers only, so Python imports this
module as each worker starts. The first checkpoint write of step ``GECKO_TEST_KILL_SEQ`` of
run ``torn-data`` or ``torn-marker`` then SIGKILLs the process (the coordinator, the only
writer): for ``torn-data``, after writing half of the step's data object (the worst a store
can leave: a truncated object in place); for ``torn-marker``, after the data object and
before its commit marker. Every step gets a data object here, however small.
"""

import os
import signal

if os.environ.get("GECKO_TEST_KILL_SEQ"):
    from gecko_actors.checkpoint import CheckpointStore as _Store

    _Store.__init__.__kwdefaults__["inline_limit"] = 0  # no step inside its marker
    _put, _put_if_absent = _Store._put, _Store._put_if_absent
    _seq = os.environ["GECKO_TEST_KILL_SEQ"]
    _flags = os.environ["GECKO_TEST_KILL_FLAGS"]  # killed-<where> created first: once each

    def _dies_here(path, where):
        flag = os.path.join(_flags, f"killed-{where}")
        if f"torn-{where}/steps/{_seq}" not in path or os.path.exists(flag):
            return False
        open(flag, "w").close()
        return True

    def _killing_put(self, path, data, run_id):
        if path.endswith(".msgpack") and _dies_here(path, "data"):
            _put(self, path, data[: len(data) // 2], run_id)  # a truncated data object
            os.kill(os.getpid(), signal.SIGKILL)
        return _put(self, path, data, run_id)

    def _killing_put_if_absent(self, path, data, run_id):
        if path.endswith(".commit") and _dies_here(path, "marker"):
            os.kill(os.getpid(), signal.SIGKILL)  # the data is written, its marker is not
        return _put_if_absent(self, path, data, run_id)

    _Store._put, _Store._put_if_absent = _killing_put, _killing_put_if_absent
