"""What the offline models say: a root policy that runs a real RLM trajectory, and a
sub model that answers questions about an excerpt deterministically.

The root policy reads only what a real model would: the conversation. It finds the
query in the first user message (the line starting ``Query:``), then in three turns
inspects the context, fans a question out over chunks with ``llm_batch``, and ends
with ``FINAL_VAR``. The sub model answers "What is the X?" by finding "the X is Y"
in the excerpt after a ``---`` line, and echoes any other prompt.
"""

from __future__ import annotations

import re
from typing import Any

#: How many chunks the root policy splits the context into (at most).
TARGET_CHUNKS = 64

_QUERY = re.compile(r"^Query:\s*(.+)$", re.MULTILINE)
_SUBJECT = re.compile(r"what(?:'s| is| are)\s+(?:the\s+)?(.+?)\s*\??\s*$", re.IGNORECASE)

NOT_FOUND = "NOT FOUND"


def _query(messages: list[dict[str, Any]]) -> str:
    for message in messages:
        if message.get("role") == "user":
            found = _QUERY.search(str(message.get("content") or ""))
            if found:
                return found.group(1).strip()
    return "What is the answer?"


def root_reply(messages: list[dict[str, Any]]) -> str:
    step = sum(1 for m in messages if m.get("role") == "assistant")
    query = _query(messages)
    if step == 0:
        return (
            "Let me look at the context first.\n"
            "```repl\n"
            "print(type(context).__name__, len(context))\n"
            "print(repr(context[:200]) if isinstance(context, str) else repr(context)[:200])\n"
            "```"
        )
    if step == 1:
        return (
            "The context is too large to read at once, so I will ask a sub-model about "
            "each chunk in parallel.\n"
            "```repl\n"
            "import json\n"
            "if isinstance(context, str):\n"
            "    text = context\n"
            "elif isinstance(context, list):\n"
            '    text = "\\n".join(map(str, context))\n'
            "else:\n"
            "    text = json.dumps(context, indent=1)\n"
            "lines = text.splitlines() or [text]\n"
            f"size = max(1, -(-len(lines) // {TARGET_CHUNKS}))\n"
            'chunks = ["\\n".join(lines[i:i + size]) for i in range(0, len(lines), size)]\n'
            f"question = {query!r}\n"
            "prompts = [\n"
            '    "Question: " + question + "\\nAnswer with the answer only, or '
            f'{NOT_FOUND} if this excerpt does not contain it.\\n---\\n" + chunk\n'
            "    for chunk in chunks\n"
            "]\n"
            "answers = llm_batch(prompts, max_concurrent=16)\n"
            "failed = [i for i, a in enumerate(answers) if isinstance(a, LLMError)]\n"
            "hits = [a.strip() for a in answers\n"
            f'        if not isinstance(a, LLMError) and a.strip() != "{NOT_FOUND}"]\n'
            'print(len(chunks), "chunks,", len(hits), "hits,", len(failed), "failed")\n'
            "print(hits[:5])\n"
            "```"
        )
    return (
        "Combining the chunk answers.\n"
        "```repl\n"
        f'answer = hits[0] if hits else "{NOT_FOUND}"\n'
        "print(answer)\n"
        "```\n"
        "FINAL_VAR(answer)"
    )


def sub_reply(prompt: str) -> str:
    head, sep, excerpt = prompt.partition("\n---\n")
    question = re.search(r"^Question:\s*(.+)$", head, re.MULTILINE)
    if not sep or question is None:
        return f"echo: {prompt[:200]}"
    subject = _SUBJECT.search(question.group(1))
    if subject is None:
        return NOT_FOUND
    pattern = re.compile(
        re.escape(subject.group(1)) + r"\s+(?:is|was|are)\s*:?\s*([^\n]+?)\s*(?:\.\s|\.$|$)",
        re.IGNORECASE | re.MULTILINE,
    )
    found = pattern.search(excerpt)
    return found.group(1) if found else NOT_FOUND
