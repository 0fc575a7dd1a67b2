"""What the root model is told."""

from __future__ import annotations

from typing import Any

SYSTEM_PROMPT = """\
You answer a query about a context that is far too large to read at once. You work in \
a Python REPL where the context is already loaded, and you can ask sub-models for help.

In the REPL you have:
- `context`: the data ({context_kind}). Inspect it with code: its length, its first \
lines, its structure. Never print all of it.
- `llm_query(prompt) -> str`: ask a sub-model one prompt (it sees only the prompt, \
up to about {max_prompt_chars:,} characters).
- `llm_batch(prompts, max_concurrent=None) -> list[str]`: ask many prompts at once; \
answers come back in the same order. Prefer it to calling `llm_query` in a loop: \
N prompts take about as long as one when they run in parallel. Use it whenever you \
have more than one independent prompt (for example one per chunk of the context). \
`max_concurrent` caps how many run at the same time.
- `llm_batch_iter(prompts, max_concurrent=None)`: like `llm_batch`, but yields \
`(index, answer)` pairs as answers arrive; `break` out of the loop as soon as you have \
what you need (for example the first chunk that has a needle) and the rest is cancelled.
{children}{tools}- A failed sub-call returns an `LLMError` (a str subclass) instead of \
raising: check with `isinstance(answer, LLMError)` and retry or skip those items. \
A call the host refuses (over a budget, bad arguments) raises `RLMCallError`.
- Variables persist between cells; `print` shows you output, cut after \
{output_limit:,} characters.
- Modules such as re, json, math, collections and itertools can be imported.

To run code, write it in a fenced block that starts with ```repl on its own line and \
ends with ``` on its own line. You will see each block's output in the next message. \
Work step by step: look at the data, split it, ask sub-models about the parts, \
combine their answers.

When you know the answer, reply with FINAL(your answer) on a line of its own, or \
FINAL_VAR(name) to answer with the value of a REPL variable. In a ```repl cell, \
`FINAL(value)` and `FINAL_VAR("name")` are functions too: the run ends after that \
cell with exactly that value. Do not answer before you have checked the context.\
"""


CHILDREN = """\
- `rlm_query(prompt, context=None) -> str`: hand a sub-task to a child RLM that works \
like you, in a REPL of its own with `context` as its data; use it for a part that \
needs several steps of its own. `rlm_batch(prompts, contexts=None, max_concurrent=None)` \
runs children in parallel, answers in the same order, and `rlm_batch_iter` yields \
them as they finish. A child is slower and costlier than `llm_query`: use it only when \
one prompt is not enough.
"""

TOOLS = """\
- Tools that run on the host; call them like functions. A tool's failure raises \
`ToolError` (a tool may refuse arguments of the wrong type):
{listing}
"""


SCHEMA = """

Your final answer must be a JSON value that matches this JSON Schema:
{schema}
Build it in a ```repl cell and end with FINAL(value) there (a dict or list is fine), \
or reply FINAL(<the JSON text>). An answer that does not match comes back to you \
with what is wrong.\
"""


def system_prompt(
    context_kind: str,
    *,
    max_prompt_chars: int,
    output_limit: int,
    children: bool = False,
    tools: str = "",
    schema: str = "",
) -> str:
    """The root model's system prompt; ``tools`` is the tools' listing and ``schema``
    the answer schema's text (each empty when there is none)."""
    text = SYSTEM_PROMPT.format(
        context_kind=context_kind,
        max_prompt_chars=max_prompt_chars,
        output_limit=output_limit,
        children=CHILDREN if children else "",
        tools=TOOLS.format(listing=tools.rstrip("\n")) if tools else "",
    )
    return text + SCHEMA.format(schema=schema) if schema else text


def describe_context(context: Any) -> str:
    if isinstance(context, str):
        lines = context.count("\n") + 1 if context else 0
        return f"a str of {len(context):,} characters in {lines:,} lines"
    if isinstance(context, list):
        return f"a list of {len(context):,} items"
    if isinstance(context, dict):
        return f"a dict with {len(context):,} keys"
    if context is None:
        return NO_CONTEXT
    return f"a {type(context).__name__}"


#: What :func:`describe_context` says of a run (a session's turn) with no data.
NO_CONTEXT = "none"


def first_message(query: str, context_kind: str) -> str:
    """The first user message; ``context_kind`` is :func:`describe_context`'s text."""
    if context_kind == NO_CONTEXT:
        return f"Query: {query}\n\nThere is no context: `context` is None."
    return (
        f"Query: {query}\n\n"
        f"The context is {context_kind}. It is in the REPL as `context`; "
        "it is not shown here. Start by inspecting it."
    )


NO_ACTION = (
    "Your reply had no ```repl block and no FINAL(...). Write code in a ```repl block "
    "to keep working, or answer with FINAL(answer) or FINAL_VAR(variable_name)."
)

FORCE_FINAL = (
    "You have used every iteration. Reply now with your best answer as FINAL(answer), "
    "or FINAL_VAR(variable_name) for a variable you already have. Do not write code."
)


def limit_reached(what: str) -> str:
    return (
        f"The run has reached a limit: {what}. Reply now with your best answer as "
        "FINAL(answer), or FINAL_VAR(variable_name) for a variable you already have. "
        "Do not write code."
    )


def invalid_answer(problem: str) -> str:
    return (
        f"Your answer does not match the answer schema: {problem}. Fix it and answer "
        "again with FINAL(value) in a ```repl cell, or FINAL(<JSON text>)."
    )


COMPACT = (
    "The conversation is getting long. Summarize your work so far for yourself: what "
    "you found, which variables in the REPL hold what, and what is left to do. Reply "
    "with the summary only; do not write code and do not answer yet."
)


def compacted(summary: str) -> str:
    return (
        "Your conversation so far was summarized to save space; the full transcript is "
        "in the REPL variable `transcript` (a list of messages). Your summary:\n\n"
        f"{summary}\n\nGo on from here."
    )


def missing_variable(name: str) -> str:
    return (
        f"FINAL_VAR({name}) failed: there is no variable named {name!r} in the REPL. "
        "Assign it in a ```repl block first, then reply FINAL_VAR(name) again, or answer "
        "with FINAL(answer)."
    )
