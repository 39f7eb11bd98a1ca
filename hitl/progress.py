"""Progress of a background round as plain log lines the app can follow and parse.

A training round started from the app writes to a log file, not a terminal. Its steps
(measuring, feature extraction, training, re-discovery) already report through tqdm
bars, which redraw one line with carriage returns; in a file that becomes one endless
line. Here the bars are turned into one parseable line per refresh:

* `child_env` gives the round's process tqdm defaults (tqdm reads ``TQDM_*`` variables
  at import): `BAR_FORMAT` and a refresh at most every `REFRESH_S` seconds;
* `LineStream` wraps the process's stderr so every redraw ends with a newline;
* `phase_line` announces each step of the round (``phase | 2/5 | training``);
* `latest_progress` reads the log's tail back into a `Progress` record for the page.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

PROGRESS_TAG = "progress"
PHASE_TAG = "phase"
# tqdm fields: the step's name, done/total and its own ETA estimate ("?" when unknown).
BAR_FORMAT = PROGRESS_TAG + " | {desc} | {n_fmt}/{total_fmt} | ETA {remaining} | {postfix}"
STOPPED_PREFIX = "stopped"  # a failed round's error starting with it was stopped on request
STARTING = "starting the round's process (loading its libraries and model)"
REFRESH_S = 1.0  # one line per second per bar: ~1,200 lines for a 20-minute round

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PROGRESS = re.compile(rf"^{PROGRESS_TAG} \| (.*?) \| (\d+)/(\d+|\?) \| ETA (\S+)")
_PHASE = re.compile(rf"^{PHASE_TAG} \| (\d+)/(\d+) \| (.+)$")


@dataclass(frozen=True)
class Progress:
    """Where a round is: its phase (``index`` of ``phases``), and the step running in it."""

    phase: str | None = None
    index: int = 0
    phases: int = 0
    step: str | None = None  # the tqdm bar's name within the phase ("features")
    done: int = 0
    total: int | None = None
    eta: str | None = None  # "01:20", as tqdm estimates it

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total else None


def child_env() -> dict[str, str]:
    """Environment variables that make every tqdm bar of a child process a `BAR_FORMAT` line."""
    return {"TQDM_BAR_FORMAT": BAR_FORMAT, "TQDM_MININTERVAL": str(REFRESH_S),
            "PYTHONUNBUFFERED": "1"}


def phase_line(index: int, total: int, name: str) -> str:
    return f"{PHASE_TAG} | {index}/{total} | {name}"


class LineStream(io.TextIOBase):
    """A text stream that ends every carriage-return redraw with a newline instead.

    ``\\r`` starts a new line, so a log file gets one line per tqdm refresh and a
    reader of its tail never meets a line cut in the middle of a kilobyte of redraws.
    """

    def __init__(self, target) -> None:
        self._target = target
        self._at_line_start = True
        self._in_redraw = False  # the line written last is a bar's redraw, left open by tqdm

    def write(self, text: str) -> int:
        redraw = text.startswith("\r")
        out = _ANSI.sub("", text)  # cursor moves of stacked bars mean nothing in a file
        if self._in_redraw and not redraw and not out.startswith("\n"):
            out = "\n" + out  # a print after a bar's redraw starts a line of its own
        out = re.sub(r"\n{2,}", "\n", out.replace("\r", "\n"))
        if self._at_line_start:  # a redraw's "\r" right after a finished line: no blank line
            out = out.lstrip("\n")
        if out:
            self._target.write(out)
            self._target.flush()
            self._at_line_start = out.endswith("\n")
            self._in_redraw = redraw and not self._at_line_start
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def latest_progress(log_text: str) -> Progress | None:
    """The round's progress from its log text (or tail): the last phase and the last bar after it.

    A bar line from an earlier phase is not reported under a later one: once a new
    phase starts, the step is unknown until its first bar line.
    """
    phase: tuple[int, int, str] | None = None
    bar: tuple[str, int, int | None, str] | None = None
    for line in log_text.splitlines():
        line = line.strip()
        if found := _PHASE.match(line):
            phase = (int(found[1]), int(found[2]), found[3])
            bar = None
        elif found := _PROGRESS.match(line):
            total = None if found[3] == "?" else int(found[3])
            bar = (found[1], int(found[2]), total, None if found[4] == "?" else found[4])
    if phase is None and bar is None:
        return None
    index, phases, name = phase or (0, 0, None)
    step, done, total, eta = bar or (None, 0, None, None)
    return Progress(name, index, phases, step, done, total, eta)
