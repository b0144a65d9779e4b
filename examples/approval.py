"""An approval workflow: a writer drafts a refund mail while a second branch checks the order;
the mail goes out only once a human approved (or edited) the call, and the refund is paid
once however often its node runs.

    python examples/approval.py                      # the whole story, on a local Ray
    gecko-actors run examples/approval.py:workflow --input "order 42"   # it waits
    gecko-actors respond RUN_ID send approve --address auto             # the mail goes

The graph: start → (check the order ‖ draft and send the mail, waiting for approval) → done.
The mailer is an agent whose `send_mail` tool asks for approval: its branch parks with the
call, the other branch finishes, and `run.respond("send", ...)` lets the mail go.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import gecko_actors
from gecko_actors import Agent, ScriptedModel, tool
from gecko_actors.workflow import NodeContext, Workflow

OUTBOX: list[dict[str, str]] = []  # what was "sent" (in the agent's process)


@tool(approval=True)
def send_mail(to: str, body: str) -> str:
    """Send a mail.

    Args:
        to: the address.
        body: the text.
    """
    OUTBOX.append({"to": to, "body": body})
    return f"sent to {to}"


def writer(messages: list[Any], tools: Any) -> Any:
    """The mailer's (scripted) model: draft the mail as a tool call, then report."""
    if messages[-1].role == "tool":
        return f"Done: {messages[-1].text}."
    order = messages[-1].text
    body = f"Your refund for {order} is on its way."
    return ScriptedModel.call("send_mail", to="ann@example.com", body=body)


def check(ctx: NodeContext) -> str:
    return f"{ctx.input}: paid by card, refundable"


def refund(ctx: NodeContext) -> str:
    # A side effect inside a node: journaled, so a re-run of the visit does not pay twice.
    receipt = ctx.step("pay", lambda order: f"refund of {order} paid", ctx.outputs["start"])
    return f"{ctx.outputs['check']}; {receipt}; {ctx.outputs['send'].content}"


def mailer() -> Agent:
    """The mailer agent (one of that name in the cluster)."""
    return Agent.spawn(
        "refund-mailer", model=ScriptedModel(writer), tools=[send_mail], get_if_exists=True
    )


def build() -> Workflow:
    return (
        Workflow("approval")
        .add_node("start", lambda ctx: ctx.input or "order 42")
        .add_node("check", check)
        .add_node("send", mailer())
        .add_node("refund", refund)
        .add_edge("start", "check")
        .add_edge("start", "send")
        .add_edge("check", "refund")
        .add_edge("send", "refund")
    )


def main(checkpoint: str | None = None) -> dict[str, Any]:
    """Start a run, wait until the mail waits for approval, approve an edited mail."""
    info = gecko_actors.init()
    checkpoint = checkpoint or tempfile.mkdtemp(prefix="gecko-approval-")
    wf = build()
    try:
        run = wf.start("order 42", checkpoint=checkpoint)
        while (status := run.status())["status"] != "waiting":
            time.sleep(0.05)
        asked = status["waiting"]["send"]
        print(f"run {run.run_id} waits: {asked}")
        edited = {**asked["arguments"], "body": asked["arguments"]["body"] + " Sorry!"}
        run.respond("send", {"arguments": edited}, by="support")
        result = run.result(timeout=120)
        print(run.summary())
        print(f"result: {result}")
        return {"asked": asked, "result": result}
    finally:
        mailer().kill()
        if info["new"]:
            gecko_actors.shutdown()


workflow = build


if __name__ == "__main__":
    main()
