"""Recurring runs: cron ticks in a time zone across DST changes, catch-up after downtime, never
twice when firers race or restart, pause/resume/delete, bad input refused before anything is
stored, the CLI; the firer is driven by a fake clock and a fake start backed by a real
checkpoint store's create-if-absent manifests (no Ray). One test on Ray: a schedule's tick
starts a real run, whose id is the tick's."""

from __future__ import annotations

import pickle
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner

from gecko_actors.checkpoint import CheckpointStore, Manifest
from gecko_actors.checkpoint.schedules import Schedule, ScheduleBook, tick_of
from gecko_actors.cli import main as cli
from gecko_actors.core import cron
from gecko_actors.exceptions import CheckpointError, UserError
from gecko_actors.workflow import NodeContext, Workflow
from gecko_actors.workflow import schedules as schedules_module
from gecko_actors.workflow.firing import Firer
from gecko_actors.workflow.rules import already_exists
from gecko_actors.workflow.schedules import ScheduleHandle

UTC = timezone.utc
HOUR, DAY = 3600, 86400


def at(*parts: int) -> int:
    """A UTC time as seconds since the epoch."""
    return int(datetime(*parts, tzinfo=UTC).timestamp())


class Clock:
    """A fake clock, shared by firers and starts."""

    def __init__(self, now: float) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now


class Starts:
    """A fake start, as a workflow host makes one: the run's manifest, created only if
    absent (another start's run is a UserError); records who started what, and when."""

    def __init__(self, clock: Clock, pause: float = 0.0) -> None:
        self.clock, self.pause = clock, pause
        self.made: list[tuple[str, float]] = []
        self.calls = self.lost = 0
        self.lock = threading.Lock()

    def __call__(self, uri: str, schedule: Schedule, run_id: str) -> None:
        with self.lock:
            self.calls += 1
        time.sleep(self.pause)  # a window in which a rival firer also finds no run
        store = CheckpointStore(uri)
        mine = Manifest(run_id, schedule.workflow, "0" * 64, schedule.input, time.time_ns() / 1e9)
        if store.create_manifest(mine).created_at != mine.created_at:
            with self.lock:
                self.lost += 1
            raise already_exists(run_id, uri)
        with self.lock:
            self.made.append((run_id, self.clock()))


def save(uri: str, name: str, expr: str, created: float, **fields: Any) -> Schedule:
    schedule = Schedule(name, expr, "report", {"n": 1}, created_at=created, updated_at=created)
    for key, value in fields.items():
        schedule = Schedule(**{**schedule.__dict__, key: value})
    return ScheduleBook(CheckpointStore(uri)).save(schedule)


def run_until(firer: Firer, clock: Clock, end: float) -> None:
    """Drive ``firer`` as its actor does: a round, then sleep as long as it says."""
    for _ in range(100_000):
        delay = firer.step()
        if clock.now + delay > end:
            clock.now = end
            firer.step()
            return
        clock.now += delay
    raise AssertionError("the firer never slept")


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"file://{tmp_path}/runs"


# --- cron and time zones ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "start", "expected"),
    [
        # New York springs forward on 2026-03-08: 02:30 does not exist that day (fires at
        # 03:00 EDT, the first valid minute after it), and 09:00 moves from 14:00 to 13:00 UTC.
        (
            "30 2 * * *",
            at(2026, 3, 5),
            [at(2026, 3, d, 7, 30) for d in (5, 6, 7)]
            + [at(2026, 3, 8, 7, 0)]
            + [at(2026, 3, d, 6, 30) for d in (9, 10, 11)],
        ),
        (
            "0 9 * * *",
            at(2026, 3, 5),
            [at(2026, 3, d, 14) for d in (5, 6, 7)] + [at(2026, 3, d, 13) for d in range(8, 12)],
        ),
        # ... and falls back on 2026-11-01: 01:30 happens twice that day and fires once.
        (
            "30 1 * * *",
            at(2026, 10, 29),
            [at(2026, 10, d, 5, 30) for d in (29, 30, 31)]
            + [at(2026, 11, 1, 5, 30)]
            + [at(2026, 11, d, 6, 30) for d in (2, 3, 4)],
        ),
    ],
)
def test_a_week_of_ticks_fires_at_exactly_the_right_times_across_dst(
    expr: str, start: int, expected: list[int]
) -> None:
    store = f"memory://{uuid.uuid4().hex}"
    clock = Clock(start)
    save(store, "nightly", expr, start, timezone="America/New_York")
    starts = Starts(clock)
    firer = Firer(starts, clock=clock, refresh_every=6 * HOUR, stores=CheckpointStore)
    firer.watch(store)
    run_until(firer, clock, start + 7 * DAY)
    assert starts.made == [(f"nightly-{cron.tick_label(t)}", float(t)) for t in expected]
    assert [tick_of("nightly", run_id) for run_id, _ in starts.made] == expected


def test_next_fire_times_are_in_the_schedule_time_zone() -> None:
    schedule = Schedule("daily", "0 6 * * *", "report", timezone="Europe/Paris")
    times = schedule.next_fire_times(3, now=at(2026, 3, 27, 12))
    assert [t.isoformat() for t in times] == [
        "2026-03-28T06:00:00+01:00",
        "2026-03-29T06:00:00+02:00",  # Paris springs forward that night
        "2026-03-30T06:00:00+02:00",
    ]
    assert Schedule("p", "0 6 * * *", "report", paused=True).next_fire_times(3) == []


# --- catch-up after downtime ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "fired_after_downtime"),
    [
        ("latest", [at(2026, 5, 4, 6)]),
        ("all", [at(2026, 5, d, 6) for d in (2, 3, 4)]),
        ("skip", []),
    ],
)
def test_catch_up_after_three_days_down(
    uri: str, policy: str, fired_after_downtime: list[int]
) -> None:
    created = at(2026, 5, 1)
    clock = Clock(created)
    save(uri, "daily", "0 6 * * *", created, catch_up=policy)
    starts = Starts(clock)
    firer = Firer(starts, clock=clock)
    firer.watch(uri)
    run_until(firer, clock, at(2026, 5, 1, 12))
    assert [t for _, t in starts.made] == [at(2026, 5, 1, 6)]

    clock.now = at(2026, 5, 4, 12)  # down for three days; a new firer (a restart) takes over
    starts.made.clear()
    firer = Firer(starts, clock=clock)
    firer.watch(uri)
    firer.step()
    assert [tick_of("daily", run_id) for run_id, _ in starts.made] == fired_after_downtime
    starts.made.clear()
    run_until(firer, clock, at(2026, 5, 5, 12))  # then on time again, whatever the policy
    assert [t for _, t in starts.made] == [at(2026, 5, 5, 6)]


def test_catch_up_all_is_bounded() -> None:
    now = at(2026, 5, 4)
    due = cron.due("* * * * *", "UTC", "all", now - 3 * DAY, now)
    assert due.capped and len(due.fire) == cron.MAX_CATCH_UP
    assert list(due.fire) == [now - 60 * i for i in range(cron.MAX_CATCH_UP - 1, -1, -1)]
    latest = cron.due("* * * * *", "UTC", "latest", now - 3 * DAY, now + 5)
    assert latest.fire == (now,) and latest.handled == now and not latest.capped
    skipped = cron.due("0 * * * *", "UTC", "skip", now - 3 * DAY, now + 90)
    assert skipped.fire == () and skipped.handled == now  # 90 s late: missed
    assert cron.due("0 * * * *", "UTC", "skip", now - 3 * DAY, now + 30).fire == (now,)


# --- never twice -------------------------------------------------------------------------------


def test_two_firers_racing_on_one_store_start_each_tick_once(uri: str) -> None:
    created = at(2026, 6, 1)
    clock = Clock(created)
    save(uri, "quarter", "*/15 * * * *", created)
    save(uri, "hourly", "0 * * * *", created, catch_up="all")
    starts = Starts(clock, pause=0.01)
    firers = [Firer(starts, clock=clock) for _ in range(2)]
    for firer in firers:
        firer.watch(uri)
    with ThreadPoolExecutor(2) as pool:
        for tick in range(created + 900, created + 6 * HOUR + 1, 900):
            clock.now = tick
            list(pool.map(lambda firer: firer.step(), firers))  # both at once
    made = [run_id for run_id, _ in starts.made]
    assert len(made) == len(set(made)) == 24 + 6
    assert starts.lost > 0  # they did race: the losers found the winners' runs
    assert not set(firers[0].started) & set(firers[1].started)
    assert sorted(firers[0].started + firers[1].started) == sorted(made)


def test_a_restarted_firer_resumes_without_refiring(
    uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = at(2026, 6, 1)
    clock = Clock(created)
    save(uri, "hourly", "0 * * * *", created)
    starts = Starts(clock)
    first = Firer(starts, clock=clock)
    first.watch(uri)
    run_until(first, clock, created + 2 * HOUR + 1)
    # It dies after starting the next tick's run, before recording its cursor.
    clock.now = created + 3 * HOUR
    with monkeypatch.context() as patch:

        def storage_down(*args: Any) -> None:
            raise CheckpointError("storage down")

        patch.setattr(ScheduleBook, "record_fired", storage_down)
        first.step()
    assert len(starts.made) == 3
    second = Firer(starts, clock=clock)
    second.watch(uri)
    second.step()  # finds the run of that tick: fired, once, and not even tried again
    assert starts.calls == 3
    run_until(second, clock, created + 5 * HOUR + 1)
    made = [t for _, t in starts.made]
    assert made == [created + h * HOUR for h in range(1, 6)]
    _, fired = ScheduleBook(CheckpointStore(uri)).load("hourly")
    assert fired is not None and fired.tick == created + 5 * HOUR


def test_a_failed_start_is_retried_and_other_schedules_go_on(uri: str) -> None:
    created = at(2026, 6, 1)
    clock = Clock(created)
    save(uri, "broken", "0 * * * *", created)
    save(uri, "fine", "0 * * * *", created)
    starts = Starts(clock)
    failures = []

    def start(where: str, schedule: Schedule, run_id: str) -> None:
        if schedule.name == "broken" and len(failures) < 3:
            failures.append(run_id)
            raise RuntimeError("host busy")
        starts(where, schedule, run_id)

    firer = Firer(start, clock=clock)
    firer.watch(uri)
    run_until(firer, clock, created + HOUR + 60)
    assert failures == ["broken-20260601T010000Z"] * 3  # after 5 s, then 10 s
    assert sorted(run_id for run_id, _ in starts.made) == [
        "broken-20260601T010000Z",
        "fine-20260601T010000Z",
    ]


# --- pause, resume, delete ----------------------------------------------------------------------


def test_pause_resume_and_delete_hold_at_the_next_round(uri: str) -> None:
    created = at(2026, 7, 1)
    clock = Clock(created)
    book = ScheduleBook(CheckpointStore(uri))
    schedule = save(uri, "hourly", "0 * * * *", created, catch_up="all")
    starts = Starts(clock)
    firer = Firer(starts, clock=clock, refresh_every=DAY)  # it reads the schedule before firing
    firer.watch(uri)
    run_until(firer, clock, created + HOUR + 1)
    book.save(Schedule(**{**schedule.__dict__, "paused": True}))
    run_until(firer, clock, created + 4 * HOUR + 1)
    assert len(starts.made) == 1
    resumed = Schedule(**{**schedule.__dict__, "updated_at": clock.now})
    book.save(resumed)
    firer.poke()
    run_until(firer, clock, created + 6 * HOUR + 1)  # the paused ticks are not caught up
    assert [t for _, t in starts.made] == [created + h * HOUR for h in (1, 5, 6)]
    assert book.delete("hourly") and not book.delete("hourly")
    run_until(firer, clock, created + 9 * HOUR)
    assert len(starts.made) == 3 and firer.schedules() == {}


def test_the_handle_pauses_resumes_lists_runs_and_deletes(uri: str) -> None:
    now = time.time()
    save(uri, "nightly", "0 3 * * *", now - 3 * DAY)
    handle = ScheduleHandle("nightly", uri)
    starts = Starts(Clock(now))
    for tick in (at(2026, 1, 1, 3), at(2026, 1, 2, 3)):
        starts(uri, handle.schedule, handle.schedule.run_id(tick))
    starts(uri, handle.schedule, "nightly-extra")  # not a tick's run
    assert handle.runs() == ["nightly-20260101T030000Z", "nightly-20260102T030000Z"]
    assert len(handle.next_fire_times(3)) == 3
    handle.pause()
    assert handle.info()["paused"] and handle.next_fire_times() == []
    handle.resume()
    info = handle.info()
    assert not info["paused"] and info["next_fire"] == handle.next_fire_times(1)[0]
    assert handle.schedule.updated_at >= now  # ticks while paused never fire
    assert handle.delete() and not handle.delete()
    with pytest.raises(UserError, match="no schedule 'nightly'"):
        handle.pause()


# --- bad input, storage -----------------------------------------------------------------------


def workflow() -> Workflow:
    return Workflow("report").add_node("write", lambda ctx: ctx.input)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("0 6 * *", None), {}, "it has 4 field"),
        (("61 * * * *", None), {}, "Bad minute"),
        (("0 0 30 2 *", None), {}, "day-of-month"),
        (("0 6 * * *", None), {"timezone": "Mars/Olympus"}, "unknown time zone"),
        (("0 6 * * *", None), {"name": "../up"}, "invalid schedule name"),
        (("0 6 * * *", None), {"catch_up": "never"}, "invalid catch_up"),
        (("0 6 * * *", {"when": object()}), {}, "input of schedule 'report'"),
    ],
)
def test_bad_input_is_a_user_error_before_anything_is_stored(
    uri: str, monkeypatch: pytest.MonkeyPatch, args: tuple, kwargs: dict, message: str
) -> None:
    monkeypatch.setattr(schedules_module, "ensure_initialized", lambda: 1 / 0)  # no Ray
    with pytest.raises(UserError, match=message) as caught:
        workflow().schedule(*args, checkpoint=uri, **kwargs)
    assert caught.value.hint
    assert pickle.loads(pickle.dumps(caught.value)).message == caught.value.message
    assert ScheduleBook(CheckpointStore(uri)).load_all() == {}


def test_schedules_are_msgpack_records_checked_when_read(uri: str) -> None:
    store = CheckpointStore(uri)
    book = ScheduleBook(store)
    saved = save(uri, "daily", " 0  6 * * * ", 100.0, timezone="Asia/Tokyo")
    assert saved.cron == "0 6 * * *"
    assert book.load_all() == {"daily": (saved, None)}
    book.record_fired("daily", 200, "daily-19700101T000320Z")
    book.record_fired("daily", 150)  # an older tick never moves the cursor back
    _, fired = book.load("daily")
    assert (fired.tick, fired.run_id) == (200, "daily-19700101T000320Z")
    path = Path(uri.removeprefix("file://")) / ".schedules" / "daily" / "schedule.msgpack"
    record = msgpack.unpackb(path.read_bytes())
    assert record["type"] == "schedule" and record["cron"] == "0 6 * * *"
    assert store.list_runs() == []  # not a run, to every listing
    save(uri, "other", "@hourly", 100.0)
    path.write_bytes(msgpack.packb({**record, "cron": 7}))
    with pytest.raises(CheckpointError, match="invalid 'cron'"):
        book.load("daily")
    assert list(book.load_all()) == ["other"]  # a damaged schedule hides no other


# --- the command line ---------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_cli_lists_pauses_resumes_and_deletes(uri: str) -> None:
    assert invoke("schedules", "--checkpoint", uri).output.startswith("no schedules in")
    save(uri, "daily-report", "0 6 * * *", time.time(), timezone="Europe/Paris")
    ScheduleBook(CheckpointStore(uri)).record_fired("daily-report", 10, "daily-report-1")
    listed = invoke("schedules", "--checkpoint", uri)
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()
    assert header.split()[:3] == ["NAME", "WORKFLOW", "CRON"]
    assert row.split()[:2] == ["daily-report", "report"] and "Europe/Paris" in row
    assert "daily-report-1" in row and row.endswith("active")
    assert invoke("schedules", "--checkpoint", uri, "--pause", "daily-report").exit_code == 0
    assert invoke("schedules", "--checkpoint", uri).output.splitlines()[1].endswith("paused")
    assert "resumed" in invoke("schedules", "--checkpoint", uri, "--resume", "daily-report").output
    as_json = invoke("schedules", "--checkpoint", uri, "--json")
    assert '"paused": false' in as_json.output
    both = invoke("schedules", "--checkpoint", uri, "--pause", "a", "--resume", "b")
    assert both.exit_code == 1 and "at most one" in both.output
    assert invoke("schedules", "--checkpoint", uri, "--delete", "daily-report").exit_code == 0
    gone = invoke("schedules", "--checkpoint", uri, "--delete", "daily-report")
    assert gone.exit_code == 1 and "no schedule 'daily-report'" in gone.output


# --- on Ray -----------------------------------------------------------------------------------


def stamp(ctx: NodeContext) -> dict:
    return {"got": ctx.input, "key": ctx.idempotency_key}


def wait_for(check: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out")


def yearly(tick: datetime) -> str:
    """A cron expression (with seconds) whose only tick this year is ``tick``."""
    return f"{tick.second} {tick.minute} {tick.hour} {tick.day} {tick.month} *"


def succeeded(store: CheckpointStore, run_id: str) -> Callable[[], Any]:
    def check() -> Any:
        manifest = store.read_manifest(run_id)
        return manifest if manifest is not None and manifest.status == "succeeded" else None

    return check


@pytest.mark.usefixtures("ray_session")
def test_a_tick_starts_a_real_run_whose_id_is_the_tick_also_after_a_scheduler_restart(
    uri: str,
) -> None:
    import ray

    from gecko_actors._actors.common import lookup
    from gecko_actors.workflow.scheduler_actor import SCHEDULER

    # A tick a few seconds ahead (if making the scheduler takes longer, it is on time still),
    # and one later, of a schedule paused until the scheduler was killed and restarted.
    now = datetime.now(UTC).replace(microsecond=0)
    first, later = now + timedelta(seconds=5), now + timedelta(seconds=20)
    name = f"yearly-{uuid.uuid4().hex[:6]}"
    wf = Workflow("stamped").add_node("stamp", stamp)
    handle = wf.schedule(yearly(first), {"report": "daily"}, name=name, checkpoint=uri)
    again = wf.schedule(yearly(first), {"report": "daily"}, name=name, checkpoint=uri)
    assert again.info()["created_at"] == handle.info()["created_at"]  # the same: no change
    other = wf.schedule(yearly(later), "later", name=f"{name}-b", checkpoint=uri)
    other.pause()
    store = CheckpointStore(uri)
    run_id = f"{name}-{first.strftime('%Y%m%dT%H%M%SZ')}"
    manifest = wait_for(succeeded(store, run_id))
    assert manifest.result == {"got": {"report": "daily"}, "key": f"{run_id}/stamp/1"}
    assert wait_for(handle.runs) == [run_id]

    ray.kill(lookup(SCHEDULER), no_restart=False)  # Ray restarts it: it finds its stores
    book = ScheduleBook(store)  # resumed in the store alone: nobody tells the scheduler
    book.save(Schedule(**{**other.schedule.__dict__, "paused": False}))
    later_id = f"{name}-b-{later.strftime('%Y%m%dT%H%M%SZ')}"
    assert wait_for(succeeded(store, later_id)).result["got"] == "later"
    assert handle.runs() == [run_id]  # each schedule's runs only
    assert handle.delete() and other.delete()
    ray.kill(lookup(SCHEDULER), no_restart=True)
