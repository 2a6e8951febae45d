"""How progress reaches a person: rich in a terminal (colour, a traffic bar), plain lines otherwise."""

from __future__ import annotations

import io
import re

from rich.console import Console

from deployer.cli import _printer
from deployer.events import Event


def test_a_terminal_gets_colour_and_a_bar_of_the_traffic_split() -> None:
    screen = io.StringIO()
    show = _printer("text", Console(file=screen, force_terminal=True, color_system="standard", width=120))
    show(Event("canary", "weights stable 80% / canary 20%", data={"canary_weight": 20}))
    show(Event("canary", "rolling back: 2 failed rounds", kind="warning"))
    show(Event("build", "STEP 1/3: FROM busybox", kind="output"))
    text = screen.getvalue()
    assert "\x1b[" in text  # ANSI colour
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()
    assert plain == [
        "  canary weights stable 80% / canary 20%  " + "█" * 20,
        "  canary rolling back: 2 failed rounds",
        "STEP 1/3: FROM busybox",
    ]
    assert "\x1b[33m" in text or "\x1b[1;33m" in text  # the warning in yellow
    green, magenta = text.index("\x1b[32m"), text.index("\x1b[35m")  # 16 blocks stable, then 4 canary
    assert green < magenta
    assert text[magenta:].count("█") == 4


def test_a_pipe_gets_plain_lines(capsys) -> None:  # type: ignore[no-untyped-def]
    show = _printer("text")
    show(Event("canary", "weights stable 80% / canary 20%", data={"canary_weight": 20}))
    show(Event("build", "STEP 1/3", kind="output"))
    assert capsys.readouterr().out == "[canary] weights stable 80% / canary 20%\nSTEP 1/3\n"
