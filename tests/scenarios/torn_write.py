"""The coordinator is SIGKILLed in the middle of committing a step (see killhook/), once
halfway through its data object (run ``torn-data``) and once between the data object and its
commit marker (run ``torn-marker``), in one Ray instance; Ray restarts it, and each run
finishes with the step run again. Run in its own process by tests/test_workflow_restart.py:
``torn_write.py WORKDIR file|s3``. Prints "RESULT <json>" (per run: data or marker)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the moto helper

from ray_restart import build  # noqa: E402

import gecko_actors as ga  # noqa: E402
from gecko_actors.checkpoint import CheckpointStore  # noqa: E402


def main(workdir: str, scheme: str) -> None:
    server = None
    if scheme == "s3":
        from s3util import AWS_ENV, MotoS3

        os.environ.update(AWS_ENV)  # before Ray starts: its workers inherit them
        server = MotoS3("gecko-torn").start()
        checkpoint = server.uri()
    else:
        checkpoint = f"file://{workdir}/runs"
    hook = {
        "PYTHONPATH": str(HERE / "killhook"),
        "GECKO_TEST_KILL_SEQ": "00000001",  # node b's step
        "GECKO_TEST_KILL_FLAGS": workdir,
    }
    ga.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": hook})
    found = {}
    try:
        for where in ("data", "marker"):
            ledger = Path(workdir) / f"ledger-{where}"
            run = build(ledger, "torn", 0.2).start(
                "in", run_id=f"torn-{where}", checkpoint=checkpoint
            )
            result = run.result(timeout=120)
            steps = [s.node for s in CheckpointStore(checkpoint).load_steps(run.run_id)]
            lines = [line.split() for line in ledger.read_text().splitlines()]
            killed = (Path(workdir) / f"killed-{where}").exists()
            found[where] = {"killed": killed, "result": result, "ledger": lines, "steps": steps}
    finally:
        ga.shutdown()
        if server is not None:
            server.stop()
    print("RESULT " + json.dumps(found))


if __name__ == "__main__":
    main(*sys.argv[1:3])
