"""``rlm chat`` driven as a real terminal session (a pty, through pexpect): state kept
between turns, forks, snapshots, usage, Ctrl-C, and no sandbox left behind."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from rlm.testing import OfflineModelServer
from rlm.testing.policy import _query
from tests.cli_support import RLM, clean_env, model_env, owner_filter, rlm
from tests.support import IMAGE, ROOT_MODEL, SUB_MODEL

PROMPT = r"rlm(:\d+)?> "
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


#: What the root model replies to each question (matched by substring, longest first).
#: Each turn is a fresh conversation, so the reply depends on the question alone: what
#: carries from one turn to the next is the sandbox.
REPLIES = {
    "set x": cell("x = 41\nprint('x is set')") + "\nFINAL(x is set)",
    "set x to 100": cell("x = 100") + "\nFINAL(x is 100 now)",
    "x plus one": cell("y = x + 1\nprint(y)") + "\nFINAL_VAR(y)",
    "ask the sub model": cell("r = llm_query('ping')\nprint(r)") + "\nFINAL_VAR(r)",
    "spin": cell("while True:\n    pass"),
}


class ChatModelServer(OfflineModelServer):
    """The offline server, with the root model's reply chosen by the turn's question."""

    def __init__(self, replies: dict[str, str] | None = None) -> None:
        super().__init__()
        self.replies = {**REPLIES, **(replies or {})}

    def _root_reply(self, messages: list[dict[str, Any]], model: str | None = None) -> str:
        query = _query(messages)
        for key in sorted(self.replies, key=len, reverse=True):
            if key in query:
                return self.replies[key]
        return "FINAL(I was not asked anything I know)"


@pytest.fixture
def chat_server() -> Iterator[ChatModelServer]:
    with ChatModelServer() as server:
        yield server


@pytest.fixture
def context_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("the code is 7\n")
    return path


class Chat:
    """An ``rlm chat`` process in a pty."""

    def __init__(self, server: OfflineModelServer, *args: str, backend: str = "restricted"):
        env = clean_env({**model_env(server), "RLM_IMAGE": IMAGE})
        self.child = pexpect.spawn(
            RLM,
            ["chat", "--backend", backend, *args],
            env=env,
            encoding="utf-8",
            timeout=60,
            dimensions=(50, 250),
        )
        self.banner = self.wait()

    def wait(self) -> str:
        """What the chat printed up to its next prompt, without terminal codes."""
        self.child.expect(PROMPT)
        return _ANSI.sub("", self.child.before or "").replace("\r", "")

    def say(self, line: str) -> str:
        self.child.sendline(line)
        return self.wait()

    def ask(self, question: str) -> str:
        """The answer: the last line the turn printed."""
        out = self.say(question)
        lines = [line for line in out.splitlines() if line.strip()]
        return lines[-1].strip()

    def quit(self, how: str = "/quit") -> int:
        if how == "/quit":
            self.child.sendline("/quit")
        elif how == "ctrl-d":
            self.child.sendeof()
        else:
            self.child.sendintr()
        self.child.expect(pexpect.EOF)
        self.child.close()
        assert self.child.exitstatus is not None, self.child.signalstatus
        return int(self.child.exitstatus)


def test_a_variable_set_in_one_turn_is_read_in_the_next(
    chat_server: ChatModelServer, context_file: Path
) -> None:
    chat = Chat(chat_server, "--context", str(context_file))
    assert "started a session on restricted" in chat.banner
    assert chat.ask("please set x") == "x is set"
    out = chat.say("what is x plus one?")
    assert out.strip().splitlines()[-1] == "42"
    assert re.search(r"turn 2 in [0-9.]+ s: 1 iterations, 0 sub-calls, [0-9,]+ tokens", out)
    assert chat.quit() == 0
    assert chat_server.stats.models[ROOT_MODEL] == 2


def test_forks_diverge_and_each_branch_keeps_its_own_variables(
    chat_server: ChatModelServer, context_file: Path
) -> None:
    chat = Chat(chat_server, "--context", str(context_file))
    chat.ask("set x")
    out = chat.say("/fork")
    assert "2 branches; now on branch 1" in out
    assert "could not carry" not in out  # x is an int: it travels
    assert chat.ask("set x to 100") == "x is 100 now"
    assert chat.ask("x plus one") == "101"
    assert "now on branch 0" in chat.say("/switch 0")
    assert chat.ask("x plus one") == "42"
    branches = chat.say("/branches")
    assert "* 0: 2 turns" in branches
    assert "1: 3 turns, forked from branch 0 at turn 1" in branches
    assert "branch number" in chat.say("/switch 7")
    assert chat.quit() == 0


def test_a_saved_session_goes_on_in_a_new_chat(
    chat_server: ChatModelServer, context_file: Path, tmp_path: Path
) -> None:
    saved = tmp_path / "session.rlm"
    chat = Chat(chat_server, "--context", str(context_file))
    chat.ask("set x")
    out = chat.say(f"/save {saved}")
    assert f"to {saved}" in out and "could not carry" not in out
    assert chat.quit() == 0
    assert saved.stat().st_size > 0

    again = Chat(chat_server, "--restore", str(saved))
    assert "restored a session at turn 1" in again.banner
    out = again.say("x plus one")
    assert out.strip().splitlines()[-1] == "42"
    assert "turn 2 in" in out
    assert again.quit("ctrl-d") == 0


def test_save_names_what_it_could_not_carry(context_file: Path, tmp_path: Path) -> None:
    function = cell("def double(n):\n    return 2 * n") + "\nFINAL(ok)"
    with ChatModelServer({"define a function": function}) as server:
        chat = Chat(server, "--context", str(context_file))
        chat.ask("define a function")
        out = chat.say(f"/save {tmp_path / 's.rlm'}")
        assert "could not carry: double" in out
        assert "/save takes a file name" in chat.say("/save")
        unwritable = chat.say(f"/save {tmp_path / 'no-such-dir' / 's.rlm'}")
        assert "could not write" in unwritable
        assert chat.quit() == 0


def test_usage_shows_each_turn_and_each_model(
    chat_server: ChatModelServer, context_file: Path
) -> None:
    chat = Chat(chat_server, "--context", str(context_file))
    assert "no turns yet" in chat.say("/usage")
    chat.ask("set x")
    assert chat.ask("ask the sub model").startswith("echo")
    usage = chat.say("/usage")
    assert re.search(r"turn 1: 1 iterations, 0 sub-calls, [0-9,]+ tokens", usage)
    assert re.search(r"turn 2: 1 iterations, 1 sub-calls, [0-9,]+ tokens", usage)
    assert ROOT_MODEL in usage and SUB_MODEL in usage
    assert re.search(r"all: 2 turns, 1 sub-calls, [0-9,]+ tokens", usage)
    assert "/fork" in chat.say("/help")
    assert "unknown command /nope" in chat.say("/nope")
    assert chat.quit() == 0


def test_ctrl_c_cancels_the_turn_and_the_session_goes_on(
    chat_server: ChatModelServer, context_file: Path
) -> None:
    chat = Chat(chat_server, "--context", str(context_file))
    chat.ask("set x")
    chat.child.sendline("spin")
    chat.child.expect("iteration 1")
    time.sleep(0.3)  # the cell is running
    chat.child.sendintr()
    out = chat.wait()
    assert "cancelled; the session goes on" in out
    assert "Traceback" not in out
    # The restricted backend stops the cell and keeps the namespace.
    assert chat.ask("x plus one") == "42"
    # Ctrl-C at the prompt leaves, cleanly.
    assert chat.quit("ctrl-c") == 0


def test_a_stop_signal_ends_the_chat_like_rlm_run(
    chat_server: ChatModelServer, context_file: Path
) -> None:
    chat = Chat(chat_server, "--context", str(context_file))
    chat.ask("set x")
    chat.child.kill(signal.SIGTERM)
    chat.child.expect(pexpect.EOF)
    chat.child.close()
    assert chat.child.exitstatus == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in _ANSI.sub("", chat.child.before or "")


@pytest.mark.docker
@pytest.mark.parametrize("how", ["/quit", "ctrl-c", "ctrl-d"])
def test_leaving_removes_the_container_docker(
    docker_client: Any, chat_server: ChatModelServer, context_file: Path, how: str
) -> None:
    chat = Chat(chat_server, "--context", str(context_file), backend="docker")
    assert "started a session on docker" in chat.banner
    chat.ask("set x")
    assert chat.ask("x plus one") == "42"
    mine = owner_filter(chat.child.pid)
    assert docker_client.containers.list(all=True, filters=mine)
    assert chat.quit(how) == 0
    # The chat closed its sandbox before it exited: nothing is left to sweep.
    assert docker_client.containers.list(all=True, filters=mine) == []


@pytest.mark.docker
def test_ctrl_c_mid_cell_says_whether_variables_survived_docker(
    docker_client: Any, chat_server: ChatModelServer, context_file: Path
) -> None:
    # Docker replaces a container whose cell was stopped mid-run; whatever the
    # backend does, the chat must say so exactly when the variables are gone.
    chat = Chat(chat_server, "--context", str(context_file), backend="docker")
    chat.ask("set x")
    chat.child.sendline("spin")
    chat.child.expect("iteration 1")
    time.sleep(0.5)
    chat.child.sendintr()
    out = chat.wait()
    assert "cancelled; the session goes on" in out
    warned = "variables from earlier turns are lost" in out
    survived = chat.ask("x plus one") == "42"
    assert warned != survived, out
    # The session goes on either way: the context is there, and new variables stick.
    assert chat.ask("set x") == "x is set"
    assert chat.ask("x plus one") == "42"
    assert chat.quit() == 0


def test_without_a_context_or_a_session_is_one_clear_line() -> None:
    proc = rlm("chat", "--backend", "restricted", env={"OPENAI_API_KEY": "k", "RLM_MODEL": "m"})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--restore FILE" in proc.stderr


def test_a_context_from_stdin_is_refused(context_file: Path) -> None:
    proc = rlm("chat", "--context", "-", env={"OPENAI_API_KEY": "k", "RLM_MODEL": "m"})
    assert proc.returncode == 2
    assert "reads its questions from standard input" in proc.stderr


def test_restoring_a_file_that_is_no_snapshot_is_a_config_error(
    chat_server: ChatModelServer, tmp_path: Path
) -> None:
    bogus = tmp_path / "bogus.rlm"
    bogus.write_bytes(b"not a snapshot at all")
    proc = rlm(
        "chat", "--restore", str(bogus), "--backend", "restricted", env=model_env(chat_server)
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"--restore {bogus}" in proc.stderr and "snapshot" in proc.stderr
