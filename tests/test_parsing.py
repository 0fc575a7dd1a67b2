from rlm.parsing import Final, parse_reply


def test_repl_blocks_in_order_and_final_outside_code() -> None:
    text = "Look:\n```repl\nx = 1\n```\nthen\n```repl\nprint(x)\n```\nFINAL(one)"
    reply = parse_reply(text)
    assert reply.cells == ["x = 1", "print(x)"]
    assert reply.final == Final(answer="one")
    assert reply.problem is None


def test_final_inside_code_is_not_an_answer() -> None:
    reply = parse_reply("```repl\nprint('FINAL(no)')\nFINAL_VAR(x)\n```")
    assert reply.final is None
    assert len(reply.cells) == 1


def test_final_var_wins_and_accepts_quotes() -> None:
    assert parse_reply("FINAL_VAR('answer')").final == Final(variable="answer")
    assert parse_reply("FINAL_VAR(answer)\nFINAL(x)").final == Final(variable="answer")


def test_multiline_final_and_quoted_answer() -> None:
    assert parse_reply('FINAL("a, b")').final == Final(answer="a, b")
    assert parse_reply("FINAL(line one\nline two)").final == Final(answer="line one\nline two")


def test_unclosed_block_is_reported_not_run() -> None:
    reply = parse_reply("```repl\nprint(1)\n")
    assert reply.cells == []
    assert reply.problem is not None and "never closed" in reply.problem


def test_python_fence_is_accepted_but_other_languages_are_not() -> None:
    assert parse_reply("```python\nprint(1)\n```").cells == ["print(1)"]
    assert parse_reply("```bash\nls\n```").cells == []
