"""smolagents with Switchboard as its code executor.

A smolagents ``CodeAgent`` writes Python; instead of running it in-process (``LocalPythonExecutor``
is not a sandbox), :class:`SwitchboardExecutor` sends every step to the gateway's code channel:
Pyodide in a locked-down Deno process, backends reachable only through ``from sdk import ...``,
every host call authorised by the policy as the agent's principal and audited. Variables persist
across the agent's steps through a gateway session.

No hosted model is reachable here, so :class:`ScriptedModel` plays the LLM with a fixed two-step
plan for the demo task. Swap in any smolagents model (``InferenceClientModel``,
``LiteLLMModel``, ...) for a real agent.

Run against a gateway started with ``switchboard serve``::

    .venv/bin/python examples/smolagents_executor.py --target 127.0.0.1:50051 --token dev-agent
"""

from __future__ import annotations

import argparse
import ast
import json
import uuid
from collections.abc import Sequence
from typing import Any

from smolagents import CodeAgent
from smolagents.local_python_executor import CodeOutput, InterpreterError, PythonExecutor
from smolagents.models import ChatMessage, MessageRole, Model
from smolagents.tools import Tool
from switchboard_client import SwitchboardClient

__all__ = ["DEMO_STEPS", "ScriptedModel", "SwitchboardExecutor", "run_demo"]

# Runs in the sandbox before each step: smolagents' final_answer() ends the step with a value.
_PRELUDE = """\
class FinalAnswerException(BaseException):
    pass

def final_answer(answer):
    raise FinalAnswerException(answer)

globals().update(inputs.get("variables") or {})
__sb_last__ = None
try:
    exec(compile(inputs["code"], "<code>", "exec"), globals())
    __sb_out__ = {"final": False, "value": __sb_last__}
except FinalAnswerException as __sb_final:
    __sb_out__ = {"final": True, "value": __sb_final.args[0]}
__sb_out__
"""


def _capture_last_expression(code: str) -> str:
    """Make the step's last expression observable (smolagents shows it to the model)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code  # let the sandbox report the syntax error with its line
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        tree.body[-1] = ast.Assign(
            targets=[ast.Name(id="__sb_last__", ctx=ast.Store())], value=last.value
        )
        ast.fix_missing_locations(tree)
        return ast.unparse(tree)
    return code


class SwitchboardExecutor(PythonExecutor):
    """A smolagents ``PythonExecutor`` that runs each code step on a Switchboard gateway."""

    def __init__(
        self, client: SwitchboardClient, *, session: bool = True, timeout_ms: int = 0
    ) -> None:
        self.client = client
        self.session_id = f"smolagents-{uuid.uuid4()}" if session else None
        self.timeout_ms = timeout_ms
        self._variables: dict[str, Any] = {}
        self.runs: list[Any] = []  # every ExecutionResult, for inspection and audit links

    def send_tools(self, tools: dict[str, Tool]) -> None:
        # Tools live in the gateway (its catalog, reached through `sdk`); only final_answer,
        # which the prelude provides, runs in the sandbox.
        extra = sorted(set(tools) - {"final_answer"})
        if extra:
            raise ValueError(
                f"tools {extra} would run on the agent's host; expose them as gateway backends "
                "and call them from code with `from sdk import <backend>` instead"
            )

    def send_variables(self, variables: dict[str, Any]) -> None:
        for name, value in variables.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue  # only JSON data crosses into the sandbox
            self._variables[name] = value

    def __call__(self, code_action: str) -> CodeOutput:
        inputs = {"code": _capture_last_expression(code_action), "variables": self._variables}
        self._variables = {}
        res = self.client.run_code(
            _PRELUDE, inputs=inputs, timeout_ms=self.timeout_ms, session_id=self.session_id
        )
        self.runs.append(res)
        if not res.ok:
            err = res.error or {}
            detail = (err.get("details") or {}).get("traceback") or err.get("message", "")
            # smolagents turns executor exceptions into an observation the model can fix.
            raise InterpreterError(f"{err.get('code', 'error')}: {detail}\n{res.stdout}".strip())
        out = res.result or {}
        return CodeOutput(
            output=out.get("value"), logs=res.stdout, is_final_answer=bool(out.get("final"))
        )


# The scripted plan for "find today's longest meeting and email the team about it".
DEMO_STEPS = (
    """Thought: I need today's calendar events. Let me find the operation and fetch them.
<code>
import sdk, datetime
print([op["name"] for op in sdk.search("list calendar events", 3)])
from sdk import workspace
today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
events = workspace.list_events(date=today)
print(len(events), "events today")
</code>""",
    """Thought: Now pick the longest meeting and email its attendees.
<code>
def minutes(e):
    start = datetime.datetime.fromisoformat(e["start"])
    end = datetime.datetime.fromisoformat(e["end"])
    return (end - start).total_seconds() / 60
longest = max(events, key=minutes)
sent = workspace.send_email(
    to=longest["attendees"],
    subject="Today's longest meeting: " + longest["title"],
    body=f"Hi team, today's longest meeting is {longest['title']} ({minutes(longest):.0f} min).",
)
final_answer(f"Emailed {len(sent['to'])} people about {longest['title']!r} ({sent['id']}).")
</code>""",
)


class ScriptedModel(Model):
    """Returns the given replies in order, and records what it was shown."""

    def __init__(self, replies: Sequence[str]) -> None:
        super().__init__(model_id="scripted")
        self.replies = list(replies)
        self.seen: list[list[Any]] = []

    def generate(
        self,
        messages: list[Any],
        stop_sequences: list[str] | None = None,
        response_format: dict[str, str] | None = None,
        tools_to_call_from: list[Tool] | None = None,
        **kwargs: Any,
    ) -> ChatMessage:
        self.seen.append(list(messages))
        if not self.replies:
            raise RuntimeError("the scripted model has no more replies")
        return ChatMessage(role=MessageRole.ASSISTANT, content=self.replies.pop(0))


def run_demo(target: str, token: str, *, steps: Sequence[str] = DEMO_STEPS) -> tuple[Any, Any]:
    """Run the demo task; returns (final answer, the agent) so callers can inspect its memory."""
    with SwitchboardClient(target, token, timeout=60) as client:
        agent = CodeAgent(
            tools=[],
            model=ScriptedModel(steps),
            executor=SwitchboardExecutor(client),
            max_steps=len(steps) + 1,
            verbosity_level=0,
        )
        answer = agent.run("Find today's longest meeting and email the team about it.")
        return answer, agent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--token", default="dev-agent")
    args = parser.parse_args(argv)
    answer, _agent = run_demo(args.target, args.token)
    print(answer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
