"""Budgets with a hard stop: the ledger (no Ray), an agent's budget, a hosted agent's."""

from __future__ import annotations

import asyncio
import pickle
import uuid
from typing import Any

import pytest

from gecko_actors import (
    Agent,
    Budget,
    BudgetExceededError,
    LocalAgent,
    Message,
    ScriptedModel,
    Usage,
    UserError,
)
from gecko_actors.agents.spec import AgentSpec, from_data, to_data
from gecko_actors.core.budget import BudgetedModel, Ledger
from gecko_actors.core.models import ModelResponse


def usage(tokens: int, cost: float | None = None) -> Usage:
    return Usage(requests=1, prompt_tokens=tokens, total_tokens=tokens, cost=cost)


# --- the ledger -------------------------------------------------------------------------------


def test_a_call_that_would_go_over_the_tokens_is_refused_before_it_is_made() -> None:
    ledger = Ledger(Budget(tokens=1000), scope="run 'r1'")
    for _ in range(3):
        ledger.settle(ledger.reserve(300), usage(300))
    with pytest.raises(BudgetExceededError) as caught:
        ledger.reserve(300)
    error = caught.value
    assert error.scope == "run 'r1'" and error.spent["tokens"] == 900
    assert error.budget == {"tokens": 1000, "usd": None, "model_calls": None}
    assert "1000 tokens" in str(error) and error.hint
    assert ledger.spent.model_calls == 3  # the refused call was not counted
    again = pickle.loads(pickle.dumps(error))  # errors cross processes on Ray
    assert again.spent == error.spent and again.scope == error.scope


def test_calls_in_flight_count_at_their_estimate() -> None:
    ledger = Ledger(Budget(tokens=1000, model_calls=3), scope="agent 'a'")
    holds = [ledger.reserve(400), ledger.reserve(400)]
    with pytest.raises(BudgetExceededError, match="1000 tokens"):
        ledger.reserve(400)  # 800 reserved: a third would overshoot
    ledger.settle(holds[0], usage(100))  # it used less than estimated
    ledger.reserve(400)
    with pytest.raises(BudgetExceededError, match="3 model calls"):
        ledger.reserve(1)


def test_dollars_stop_the_next_call_once_reached() -> None:
    ledger = Ledger(Budget(usd=0.01), scope="team 't'")
    ledger.settle(ledger.reserve(10), usage(10, cost=0.006))
    ledger.settle(ledger.reserve(10), usage(10, cost=0.006))  # started under the limit
    with pytest.raises(BudgetExceededError, match=r"\$0.01"):
        ledger.reserve(10)
    assert ledger.spent.usd == pytest.approx(0.012)


def test_budgets_nest_a_child_spends_its_parent_s_budget_too() -> None:
    run = Ledger(Budget(tokens=500), scope="run 'r'")
    writer = Ledger(Budget(tokens=400), scope="agent 'writer'", parent=run)
    critic = Ledger(Budget(tokens=400), scope="agent 'critic'", parent=run)
    writer.settle(writer.reserve(300), usage(300))
    with pytest.raises(BudgetExceededError) as caught:
        critic.reserve(300)  # fits the critic's own budget, not the run's
    assert caught.value.scope == "run 'r'"
    assert (run.spent.tokens, writer.spent.tokens, critic.spent.tokens) == (300, 300, 0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tokens": 0}, "tokens"),
        ({"tokens": 1.5}, "tokens"),
        ({"model_calls": True}, "model_calls"),
        ({"usd": -1}, "usd"),
        ({"usd": float("nan")}, "usd"),
    ],
)
def test_bad_budgets_are_user_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(UserError) as caught:
        Budget(**kwargs)
    assert caught.value.field == field


async def test_a_failed_call_still_counts_as_a_call() -> None:
    model = ScriptedModel([RuntimeError("provider down"), "ok"])
    budgeted = BudgetedModel(model, Ledger(Budget(model_calls=2), scope="agent 'x'"))
    with pytest.raises(RuntimeError):
        await budgeted.complete([Message.user("hi")])
    reply = await budgeted.complete([Message.user("hi")])
    assert isinstance(reply, ModelResponse)
    assert budgeted.ledger.spent.model_calls == 2
    with pytest.raises(BudgetExceededError):
        await budgeted.complete([Message.user("hi")])


# --- an agent ---------------------------------------------------------------------------------


async def test_an_agent_stops_at_its_budget_across_runs_and_its_output_is_kept() -> None:
    model = ScriptedModel(["one", "two", "three"])
    agent = LocalAgent(model, budget=Budget(model_calls=2))
    assert (await agent.arun("a")).content == "one"
    assert (await agent.arun("b")).content == "two"
    with pytest.raises(BudgetExceededError):
        await agent.arun("c")
    assert model.remaining == 1  # the third reply was never asked for
    assert agent.ledger.spent.model_calls == 2


async def test_a_streamed_run_is_counted_with_its_usage() -> None:
    agent = LocalAgent(ScriptedModel(["a streamed answer"]), budget=Budget(tokens=10_000))
    chunks = [chunk async for chunk in agent.stream("hi")]
    assert "".join(chunks) == "a streamed answer"
    assert agent.ledger.spent.tokens > 0 and agent.ledger.spent.model_calls == 1


async def test_a_dollar_budget_stops_an_agent_offline_with_a_priced_script() -> None:
    model = ScriptedModel(["a" * 400] * 5, price=(1e-4, 1e-4))  # ~100 tokens: ~$0.01 a reply
    agent = LocalAgent(model, budget=Budget(usd=0.025))
    replies = 0
    with pytest.raises(BudgetExceededError, match=r"\$0.025"):
        for _ in range(5):
            await agent.arun("hi")
            replies += 1
    assert replies == 3 and model.remaining == 2  # stopped once $0.025 was reached
    assert agent.ledger.spent.usd >= 0.025


def test_an_agent_spec_keeps_its_budget_as_data() -> None:
    spec = AgentSpec(name="a", model=ScriptedModel(["x"]), budget=Budget(tokens=5, usd=0.5))
    assert from_data(to_data(spec)).budget == Budget(tokens=5, usd=0.5)


@pytest.mark.usefixtures("ray_session")
def test_a_hosted_agent_stops_at_its_budget() -> None:
    name = f"budget-{uuid.uuid4().hex[:8]}"
    agent = Agent.spawn(name, model=ScriptedModel(["one", "two"]), budget=Budget(model_calls=1))
    try:
        assert agent.run("a").content == "one"
        with pytest.raises(BudgetExceededError) as caught:
            agent.run("b")
        assert caught.value.scope == f"agent {name!r}" and caught.value.spent["model_calls"] == 1
        with pytest.raises(UserError, match="must be a Budget"):
            Agent.spawn(f"{name}-bad", model=ScriptedModel(["x"]), budget={"tokens": 5})
    finally:
        agent.kill()


def test_the_ledger_counts_every_call_made_from_many_threads() -> None:
    ledger = Ledger(Budget(model_calls=500), scope="shared")

    async def spend(n: int) -> None:
        for _ in range(n):
            ledger.settle(ledger.reserve(1), usage(1))
            await asyncio.sleep(0)

    def worker() -> None:
        asyncio.run(spend(100))

    import threading

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.spent.model_calls == 500 and ledger.spent.tokens == 500
    with pytest.raises(BudgetExceededError):
        ledger.reserve(1)


# --- the governor's book (no Ray) -------------------------------------------------------------


def test_a_book_keeps_ledgers_by_key_and_names_them_in_errors() -> None:
    from gecko_actors.core.budget import BudgetBook

    book = BudgetBook()
    book.open("run 'r' in file:///a", Budget(model_calls=1), name="run 'r'", owner=2)
    book.reserve(["run 'r' in file:///a"], 10, ["node:a/1"], "h1")
    book.settle("h1", usage(10))
    book.settle("h1", usage(10))  # settled twice: once
    with pytest.raises(BudgetExceededError) as caught:
        book.reserve(["run 'r' in file:///a"], 10, [], "h2")
    assert caught.value.scope == "run 'r'"
    total, labelled = book.usage("run 'r' in file:///a", "node:")
    assert total.requests == 1 and labelled["node:a/1"].total_tokens == 10

    book.close("run 'r' in file:///a", owner=1)  # an older engine: not its ledger to close
    assert book.usage("run 'r' in file:///a")[0].requests == 1
    book.close("run 'r' in file:///a", owner=2)
    with pytest.raises(BudgetExceededError, match="not kept any more"):
        book.reserve(["run 'r' in file:///a"], 10, [], "h3")


def test_a_fresh_ledger_keeps_what_the_last_engine_counted_beyond_the_record() -> None:
    from gecko_actors.core.budget import BudgetBook

    book = BudgetBook()
    book.open("k", Budget(tokens=1000), spent=usage(100), owner=2)
    book.reserve(["k"], 50, [], "lost")  # a call of an engine that then crashed
    book.reserve(["k"], 50, [], "done")
    book.settle("done", usage(400))  # settled, but never committed in a step
    book.open("k", Budget(tokens=1000), spent=usage(100), fresh=True, owner=3)
    total, _ = book.usage("k")
    assert total.total_tokens == 500  # more than the record says: what was counted
    book.reserve(["k"], 500, [], "next")  # the lost hold no longer counts


def test_a_reservation_cancelled_on_its_way_back_is_taken_back(monkeypatch) -> None:
    """A caller cancelled while the governor's answer is on its way (a team's "first", a
    node's timeout) must not leave its reservation counted for ever."""
    from gecko_actors._actors import budgets
    from gecko_actors.core.budget import BudgetBook

    book = BudgetBook()
    book.open("team", Budget(model_calls=2))
    answered = asyncio.Event()

    async def call(method: str, *args: Any) -> Any:
        getattr(book, method)(*args)  # the governor acts at once...
        await answered.wait()  # ...and its answer is slow to come back

    class Method:
        def __init__(self, name: str) -> None:
            self.name = name

        def remote(self, *args: Any) -> None:
            getattr(book, self.name)(*args)

    class Governor:
        def __getattr__(self, name: str) -> Method:
            return Method(name)

    monkeypatch.setattr(budgets, "_call", call)
    monkeypatch.setattr(budgets, "governor", Governor)
    ledger = budgets.RemoteLedger(("team",))

    async def main() -> None:
        task = asyncio.create_task(ledger.acquire(10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    book.reserve(["team"], 10, [], "a")  # two calls still fit a budget of two
    book.reserve(["team"], 10, [], "b")
    assert book.usage("team")[0].requests == 0


def test_a_manifest_without_a_budget_is_written_as_before() -> None:
    from gecko_actors.checkpoint import Manifest
    from gecko_actors.checkpoint.records import manifest_data

    plain = manifest_data(Manifest("r1", "wf", "f" * 64, "in", 1.0))
    assert "budget" not in plain and "spent" not in plain  # readable by older releases
    budgeted = manifest_data(Manifest("r1", "wf", "f" * 64, "in", 1.0, budget={"tokens": 5}))
    assert budgeted["budget"] == {"tokens": 5}
