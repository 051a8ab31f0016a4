"""The HUD's screen, built from the state: every window reads `HudState` when it is drawn.

Designed for 80x24 first:

    title bar: link to the daemon                                      ? help  q quit
    Suite: [path field.............................]  <Load> <Start> <Stop>
    Tasks n/m <All> <None>              │ Output: task (phase)           following
    ▸[x] ✓ task name   category  easy   │ a agent line
    ...                                 │ v verification line
    TB: suite done/total                │ s system line
    █████████░░░░░░░░░  41.6%           │
    ✓ 4  ✗ 1  ⏱ 0  ! 0                  │
    ▶ task (agent) | Turn 15 | 01:23    │
    Container: image / id / limits / use│
    status bar: key hints, or the last notice, or the stop confirmation

The run history replaces the output pane when toggled (`h`); from 120x36 up it sits below the
output all the time and the left column grows.

The text builders (`task_line`, `progress_lines`, ...) are plain functions of the state and
a width, so tests can check them without a terminal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from prompt_toolkit.application.current import get_app
from prompt_toolkit.data_structures import Point
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.layout import (
    ConditionalContainer,
    Dimension,
    Float,
    FloatContainer,
    FormattedTextControl,
    HSplit,
    Layout,
    UIContent,
    UIControl,
    VSplit,
    Window,
)
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth
from prompt_toolkit.widgets import Button, Frame, TextArea

from client.hud.state import STATUS_ICONS, HudState
from client.render import duration
from protocol.fold import DONE, Task

if TYPE_CHECKING:
    from client.hud.keys import Actions

# Wide enough for the roomier layout (history always visible, longer task names).
WIDE_COLUMNS, WIDE_ROWS = 120, 36
MAX_RUNNING_LINES = 6  # running tasks listed in the progress widget
SOURCE_TAGS = {"agent": "a", "verification": "v", "system": "s"}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")

STYLE = Style.from_dict({
    "title": "reverse",
    "title.ok": "reverse bold",
    "title.bad": "reverse bold fg:ansired",
    "status": "reverse",
    "notice": "reverse bold",
    "confirm": "reverse bold fg:ansiyellow",
    "header": "bold underline",
    "header.focused": "bold reverse",
    "cursor": "reverse",
    "dim": "fg:ansibrightblack",
    "stale": "fg:ansibrightblack",
    "success": "fg:ansigreen",
    "failure": "fg:ansired",
    "timeout": "fg:ansiyellow",
    "error": "fg:ansimagenta",
    "running": "fg:ansicyan bold",
    "bar.done": "fg:ansigreen",
    "bar.todo": "fg:ansibrightblack",
    "out.agent": "",
    "out.verification": "fg:ansicyan",
    "out.system": "fg:ansiyellow",
    "out.tag": "fg:ansibrightblack",
    "improved": "fg:ansigreen bold",
    "regressed": "fg:ansired bold",
    "added": "fg:ansicyan",
    "removed": "fg:ansibrightblack",
    "field": "underline",
    "button.focused": "reverse",
    "frame.border": "",
})

HELP = [
    ("Ctrl+L", "load the suite path in the field (Enter there too)"),
    ("Ctrl+T", "start a run of the checked tasks"),
    ("Ctrl+X y", "stop the run (y confirms, any other key cancels)"),
    ("x y", "stop only the selected task (the run goes on)"),
    ("Tab S-Tab", "move focus: path, buttons, tasks, history"),
    ("↑ ↓ j k", "move in the task list / the history"),
    ("space", "check or uncheck the task"),
    ("a  n", "check all / none"),
    ("c", "group the tasks by category (Enter/space folds one)"),
    ("f", "follow the run again (the cursor goes with the running task)"),
    ("PgUp PgDn", "scroll the output back / forward"),
    ("Home End", "the first output line / follow new output again"),
    ("w  ← →", "wrap long lines on/off; scroll sideways when off"),
    ("h", "show or hide the run history"),
    ("Enter", "history: open the run's per-task results"),
    ("b", "history: compare the opened run with this one"),
    ("p", "edit the suite path (selected: typing replaces it)"),
    ("Esc", "close help / the opened run; leave the field"),
    ("?", "this help"),
    ("q  Ctrl+C", "quit (the daemon keeps running)"),
]


def screen_size() -> tuple[int, int]:
    size = get_app().output.get_size()
    return size.columns, size.rows


def is_wide() -> bool:
    columns, rows = screen_size()
    return columns >= WIDE_COLUMNS and rows >= WIDE_ROWS


def left_width(columns: int) -> int:
    """The task column's share of the width: 45%, so that wide screens widen both sides."""
    return max(30, columns * 45 // 100) if columns >= WIDE_COLUMNS else \
        max(30, min(38, columns * 45 // 100))


def fit(text: str, width: int) -> str:
    """Cut to `width` cells, marking the cut."""
    if width <= 0:
        return ""
    if get_cwidth(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = get_cwidth(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def shorten(text: str, width: int) -> str:
    """Cut in the middle (`slow-…int-4`): task names differ at their ends, often by a
    number, and the end must stay readable."""
    if width <= 0:
        return ""
    if get_cwidth(text) <= width:
        return text
    if width < 6:
        return fit(text, width)
    tail_w = (width - 1) // 2
    head = fit(text, width - tail_w)[:-1]  # fit marks its cut: replaced by the one below
    tail, used = "", 0
    for ch in reversed(text):
        if used + get_cwidth(ch) > tail_w:
            break
        tail, used = ch + tail, used + get_cwidth(ch)
    return head + "…" + tail


def pad(text: str, width: int) -> str:
    text = fit(text, width)
    return text + " " * (width - get_cwidth(text))


def clock(ms: int | None) -> str:
    if ms is None:
        return "--:--"
    seconds = ms // 1000
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes:02d}:{seconds:02d}" if minutes < 60 else \
        f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def _status_style(status: str | None) -> str:
    return f"class:{status}" if status in STATUS_ICONS and status != "pending" else ""


# -- text builders -----------------------------------------------------------------------

def title_text(state: HudState, width: int) -> StyleAndTextTuples:
    if state.link == "connected":
        style, link = "class:title.ok", "● connected"
        if state.daemon_version:
            link += f"  daemon {state.daemon_version}"
    elif state.link == "reconnecting":
        # What the user can act on, not the exception: "daemon stopped — retrying in 2 s".
        wait = state.retry_in()
        when = f"retrying in {wait:.0f} s" if wait is not None and wait >= 0.5 else \
            "reconnecting…"
        style, link = "class:title.bad", \
            f"◌ {state.link_error or 'connection lost'} — {when} (attempt {state.attempt})"
    elif state.link == "failed":
        style, link = "class:title.bad", f"✗ disconnected by an error: {state.link_error}"
    else:
        style, link = "class:title.bad", "◌ connecting…"
    head, right = " tbhud ", "? help  q quit "
    link = fit(link, width - len(head) - len(right) - 1)
    gap = max(0, width - len(head) - get_cwidth(link) - len(right))
    return [("class:title", head), (style, link), ("class:title", " " * gap + right)]


def category_width(state: HudState, width: int) -> int:
    """Full categories when there is room (wide screens), else 8 cells of them."""
    longest = max((get_cwidth(t.category) for t in state.tasks.values()), default=8)
    room = width - 7 - 20 - 1 - 7 - (8 if width >= 50 else 0)  # a 20-cell name first
    return max(8, min(longest, room))


def highlight(line: StyleAndTextTuples) -> StyleAndTextTuples:
    """The whole row of the selection stands out, not only its marker."""
    return [(f"{style} class:cursor", text) for style, text, *_ in line]


def task_line(state: HudState, view: Task, width: int, selected: bool,
              cat_w: int = 8) -> StyleAndTextTuples:
    box = "[x]" if view.id in state.checked else "[ ]" if view.in_suite else " - "
    icon = STATUS_ICONS.get(view.status or "", " ")
    wide = width >= 50
    diff_w, time_w = 6, (7 if wide else 0)
    tail_w = cat_w + 1 + diff_w + (time_w + 1 if wide else 0)
    name_w = max(6, width - 7 - 1 - tail_w)
    name = shorten(view.name, name_w)
    line: StyleAndTextTuples = [
            ("class:cursor" if selected else "", "▸" if selected else " "),
            ("", box + " "), (_status_style(view.status), icon + " ")]
    if view.status == "running":
        # A running task says what it does and for how long in its own row, in the room
        # its name leaves; a multi-step task's step first, kept when the phase is cut.
        clock_text = clock(state.elapsed_ms(view))
        text = view.phase_text() if view.step is None else \
            f"{view.step_text()}, {view.phase or 'setup'}"
        room = tail_w - len(clock_text) - 1 + name_w - len(name)
        phase = fit(text.replace("verification", "verify"), room)
        line += [("", name + " "),
                 ("class:running", phase.rjust(room) + " " + clock_text)]
    else:
        line += [("", pad(name, name_w) + " "),
                 ("class:dim", pad(view.category, cat_w) + " "),
                 ("class:dim", pad(view.difficulty, diff_w))]
        if wide:
            ms = state.elapsed_ms(view) if view.status not in (None, "pending") else None
            line.append(("class:dim", " " + (duration(ms) if ms is not None else "")
                         .rjust(time_w)))
    return highlight(line) if selected else line


def category_line(state: HudState, category: str, width: int,
                  selected: bool) -> StyleAndTextTuples:
    """A category's row when grouped: `▾ data-processing 3/5 ✓2 ✗1` (done/total)."""
    tasks = [t for t in state.tasks.values() if t.category == category]
    statuses = [t.status for t in tasks]
    done = sum(status in DONE for status in statuses)
    passed = statuses.count("success")
    failed = done - passed
    head = f"{'▸' if category in state.folded else '▾'} "
    counts = f" {done}/{len(tasks)} ✓{passed} ✗{failed}"
    line: StyleAndTextTuples = [
        ("bold", head + shorten(category, max(6, width - 2 - len(counts)))),
        ("class:dim", counts)]
    return highlight(line) if selected else line


def task_rows(state: HudState, width: int) -> tuple[list[StyleAndTextTuples], int]:
    """The task list's rows and the row of the cursor."""
    if not state.tasks:
        return [[("class:dim", " no suite loaded: Ctrl+L loads the path above")]], 0
    cat_w = category_width(state, width)
    current = state.current()
    rows = state.rows()
    cursor = state.cursor_row(rows)
    return [category_line(state, key, width, index == cursor) if kind == "category" else
            task_line(state, state.tasks[key], width,
                      index == cursor and state.tasks[key] is current, cat_w)
            for index, (kind, key) in enumerate(rows)], cursor


def visible_rows(rows: list[StyleAndTextTuples], cursor: int, top: int,
                 height: int) -> tuple[list[StyleAndTextTuples], int]:
    """The rows a list of `height` shows, keeping the cursor in view and saying how many
    rows lie below (`↓ 4 more`); and the new first row."""
    if len(rows) <= height or height < 2:
        return rows[:max(height, 1)], 0
    top = min(max(top, cursor - (height - 2)), cursor)
    top = max(0, min(top, len(rows) - height))
    if top + height >= len(rows):
        return rows[top:], top
    shown = rows[top:top + height - 1]
    more = len(rows) - top - len(shown)
    return [*shown, [("class:dim", f"  ↓ {more} more")]], top


def bar(fraction: float, width: int) -> StyleAndTextTuples:
    filled = round(width * fraction)
    return [("class:bar.done", "█" * filled), ("class:bar.todo", "░" * (width - filled))]


def progress_lines(state: HudState, width: int) -> list[StyleAndTextTuples]:
    """The progress widget of the HUD doc: suite and done/total, bar, counts, running tasks."""
    counts = state.counts()
    name = state.run.suite_name if state.run else state.suite.name if state.suite else "-"
    lines: list[StyleAndTextTuples] = []
    head = f"TB: {name} {counts.done}/{counts.total}"
    if state.run_complete is not None:
        tail = f"  {state.run_complete.status or 'done'} in " \
               f"{duration(state.run_complete.total_duration_ms)}"
        lines.append([("bold", fit(head, width)), ("class:dim", fit(tail, width - len(head)))])
    else:
        lines.append([("bold", fit(head, width))])
    # Stopped tasks did not finish: a stopped run's bar shows what really got done.
    stopped = sum(1 for t in state.board.run_tasks() if t.error == "stopped")
    fraction = (counts.done - stopped) / counts.total if counts.total else 0.0
    bar_w = max(4, width - 8)
    lines.append([*bar(fraction, bar_w), ("", f" {fraction * 100:5.1f}%")])
    count_line: StyleAndTextTuples = [
        ("class:success", f"✓ {counts.passed}"), ("", "  "),
        ("class:failure", f"✗ {counts.failed}"), ("", "  "),
        ("class:timeout", f"⏱ {counts.timeout}"), ("", "  "),
        ("class:error", f"! {counts.error}")]
    # Issue 12: pass@K once a run of K > 1 attempts ended, and the runs queued behind it.
    extra = ""
    pass_at = state.board.pass_at_k()
    attempts = (state.run.attempts if state.run is not None else None) or 1
    if pass_at and attempts > 1:
        extra += f"  p@{attempts} {pass_at.get(str(attempts), 0.0):.0%}"
    if state.board.queue:
        extra += f"  +{len(state.board.queue)} queued"
    used = sum(len(text) for _style, text in count_line)
    if extra and width > used:
        count_line.append(("class:dim", fit(extra, width - used)))
    lines.append(count_line)
    running = state.running()
    if len(running) > MAX_RUNNING_LINES:
        more = len(running) - MAX_RUNNING_LINES + 1
        running = running[:MAX_RUNNING_LINES - 1]
    else:
        more = 0
    if not running:
        unfinished = any(t.status in ("pending", "running") for t in state.board.run_tasks())
        if state.is_running():
            note = "waiting for a free slot"
        elif state.run_complete is not None and state.run_complete.status == "stopped":
            note = "stopped"
        elif unfinished:
            note = "interrupted: tasks never finished"
        else:
            note = "finished" if counts.total else "idle"
        lines.append([("class:dim", note)])
    for view in running:
        # Agents without turns (oracle, command) report none or 0: no "Turn 0" for them.
        limit = f"/{view.max_turns}" if view.max_turns else ""
        turn = f" | Turn {view.turn}{limit}" if view.turn else ""
        tail = f" ({view.phase_text()}){turn} | {clock(state.elapsed_ms(view))}"
        # Cut the name in the middle, never the clock.
        name = shorten(view.name, max(6, width - 2 - len(tail)))
        lines.append([("class:running", "▶ "), ("", fit(name + tail, width - 2))])
    if more:
        lines.append([("class:dim", f"  … and {more} more running")])
    return lines


def join_lines(lines: list[StyleAndTextTuples]) -> StyleAndTextTuples:
    out: StyleAndTextTuples = []
    for index, line in enumerate(lines):
        if index:
            out.append(("", "\n"))
        out.extend(line)
    return out


def mib(n: int | None) -> str:
    """Bytes in MiB, the unit of every memory figure on screen (limits included)."""
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MiB" if n < 100 * 2**20 else f"{n / 2**20:.0f} MiB"


def container_lines(state: HudState, width: int) -> list[StyleAndTextTuples]:
    view = state.current()
    box = view.container if view else None
    if box is None:
        return [[("class:dim", "no container for this task")]]
    cpus = f"{box.cpus:g} cpu" if box.cpus is not None else "- cpu"
    # One unit for every memory figure: MiB (Docker's limits are in bytes, tasks say MB).
    mem = f"{box.memory_mb} MiB" if box.memory_mb is not None else "- MiB"
    state_note = " (removed)" if box.stopped else ""
    use_mem = mib(box.memory_bytes)
    if box.memory_limit_bytes:
        use_mem += f" / {mib(box.memory_limit_bytes)}"
    cpu = f"{box.cpu_percent:.1f}%" if box.cpu_percent is not None else "-"
    # A removed container's figures are the last ones seen, not live ones.
    usage = ("class:dim", fit(f"last seen: cpu {cpu}  mem {use_mem}", width)) if box.stopped \
        else ("", fit(f"cpu {cpu}  mem {use_mem}", width))
    # The engine first: a long image name is cut at the right, the engine stays. The local
    # engine alone (no engines.toml) is no news: not shown.
    where = f"engine {box.engine}  " if box.engine not in (None, "local") else ""
    return [[("", fit(f"{where}image {box.image}", width))],
            [("", fit(f"id {box.container_id[:12]}{state_note}  {cpus}, {mem}", width))],
            [usage]]


def task_numbers(view: Task) -> list[str]:
    """The figures known so far: tests passed, tokens, cost (none for agents without)."""
    out = []
    if view.tests_total is not None:
        out.append(f"tests {view.tests_passed or 0}/{view.tests_total}")
    if view.tokens:
        out.append(f"{view.tokens:,} tok")
    if view.cost_usd is not None:
        out.append(f"${view.cost_usd:.2f}")
    return out


def output_header(state: HudState, width: int) -> StyleAndTextTuples:
    view = state.current()
    if view is None:
        return [("class:header", pad("Output", width))]
    where = f" ({view.phase_text()})" if view.status == "running" and view.phase else \
        f" [{view.status}]" if view.status else ""
    where += "".join(f" · {n}" for n in task_numbers(view))
    # "following" only while the output on screen is a running task's, and the cursor
    # goes with the run.
    if state.scroll:
        mode = f"↑{state.scroll} lines, End follows"
    elif state.follow_running and view.status == "running":
        mode = "following"
    elif state.is_running():
        mode = "f follows the run"
    else:
        mode = ""
    if not state.wrap:
        mode = f"nowrap →{state.hscroll} " + mode if state.hscroll else "nowrap " + mode
    left = fit(f"Output: {view.name}{where}", max(1, width - len(mode) - 1))
    return [("class:header", left), ("", " " * max(1, width - get_cwidth(left) - len(mode))),
            ("class:dim", mode)]


def _line_rows(state: HudState, source: str, text: str,
               text_w: int) -> list[StyleAndTextTuples]:
    text = _ANSI.sub("", text.replace("\t", "    "))
    if state.wrap:
        chunks = [text[i:i + text_w] for i in range(0, len(text), text_w)] or [""]
    else:  # one row per line, `hscroll` columns cut on the left
        chunks = [text[state.hscroll:state.hscroll + text_w]]
    style = f"class:out.{source}"
    tag = SOURCE_TAGS.get(source, "?")
    return [[("class:out.tag", (tag if n == 0 else " ") + " "), (style, chunk)]
            for n, chunk in enumerate(chunks)]


def output_rows(state: HudState, width: int, height: int) -> list[StyleAndTextTuples]:
    """The rows of the output pane: the newest lines (or `scroll` lines back), wrapped.

    Works backwards from the last visible line, so a redraw costs what is on screen, never
    the 5,000 lines kept. Scrolled back past the first line, the first line stays at the
    top (as in `less`) and `state.scroll` is brought back to where that happens."""
    view = state.current()
    if view is None or height <= 0:
        return []
    lines = view.output
    if not lines:
        note = "waiting for output…" if view.status == "running" else "no output"
        return [[("class:dim", note)]]
    text_w = max(1, width - 2)
    rows: list[StyleAndTextTuples] = []
    scrolled = state.scroll > 0
    last = len(lines) - 1 - min(state.scroll, len(lines) - 1)
    index = last
    while index >= 0 and len(rows) < height:
        rows[:0] = _line_rows(state, *lines[index], text_w)
        index -= 1
    # At the top with room left: fill forward, so the screen is never short of lines.
    while len(rows) < height and last + 1 < len(lines) and scrolled:
        last += 1
        rows.extend(_line_rows(state, *lines[last], text_w))
    state.scroll = min(state.scroll, len(lines) - 1 - last)
    return rows[:height] if scrolled and index < 0 else rows[-height:]


def run_label(agent: str | None, suite: str, timestamp: str) -> str:
    """How a run is named on screen, the same everywhere: `oracle · tasks · 03:13`."""
    return " · ".join(part for part in (agent, suite, timestamp[11:16]) if part)


def label_of(state: HudState, run_id: str) -> str:
    for run in state.history:
        if run.run_id == run_id:
            return run_label(run.agent, run.suite_name, run.timestamp)
    for report in (state.report, state.baseline_report):
        if report is not None and report.run_id == run_id:
            return run_label(report.agent, report.suite_name, report.timestamp)
    return run_id


def history_lines(state: HudState, width: int) -> list[StyleAndTextTuples]:
    if not state.history:
        return [[("class:dim", "no runs yet")]]
    out: list[StyleAndTextTuples] = []
    for index, run in enumerate(state.history):
        selected = index == state.history_cursor
        mark = "b" if run.run_id == state.baseline_id else " "
        opened = "*" if state.report is not None and state.report.run_id == run.run_id else " "
        # The counts first and whole; then which run it was (agent, suite, start time),
        # cut in the middle if it must; the rest only where there is room.
        counts = (f"{run.pass_rate:>4.0%} {run.passed}/{run.task_count} "
                  f"{run.status or '':<9} {duration(run.total_duration_ms):>6}  ")
        label_w = max(8, width - 4 - get_cwidth(counts))  # and one cell for the cut mark
        label = shorten(run_label(run.agent, run.suite_name, run.timestamp), label_w)
        rest = f"  ✗{run.failed} ⏱{run.timeout} !{run.error}  {run.timestamp[:10]}  {run.run_id}"
        line: StyleAndTextTuples = [
            ("class:cursor" if selected else "", "▸" if selected else " "),
            ("bold", mark + opened), ("", fit(counts + label + rest, width - 3))]
        out.append(highlight(line) if selected else line)
    return out


# The order of a comparison's tasks: what got worse first.
CHANGE_ORDER = {"regressed": 0, "improved": 1, "added": 2, "removed": 3, "unchanged": 4}
NOISE_MS = 100  # time differences below this are noise, not shown


def _tests(passed: int | None, total: int | None) -> str | None:
    return f"{passed}/{total}" if total is not None else None


def detail_lines(state: HudState, width: int) -> list[StyleAndTextTuples]:
    """The opened run's per-task results, or its comparison with the baseline."""
    cmp = state.comparison
    if cmp is not None:
        times = {r.run_id: r.total_duration_ms for r in state.history}
        before, after = times.get(cmp.baseline_id), times.get(cmp.run_id)
        span = f"{duration(before)} → {duration(after)} " if before is not None and \
            after is not None else ""
        sign = "+" if cmp.duration_delta_ms >= 0 else "-"
        out: list[StyleAndTextTuples] = [
            [("class:header", fit(f"run      {label_of(state, cmp.run_id)}", width))],
            [("class:header", fit(f"baseline {label_of(state, cmp.baseline_id)}", width))]]
        if cmp.improved + cmp.regressed + cmp.unchanged == 0:
            # A pass-rate change over tasks that only one side ran would mean nothing.
            out.append([("class:regressed", fit("the two runs share no task: nothing to "
                                                "compare", width))])
        else:
            delta = f"({sign}{duration(abs(cmp.duration_delta_ms))})" \
                if abs(cmp.duration_delta_ms) >= NOISE_MS else "(same)"
            out.append([("", fit(f"pass rate {cmp.baseline_pass_rate:.1%} → "
                                 f"{cmp.pass_rate:.1%} ({cmp.pass_rate_delta * 100:+.1f} pts)"
                                 f"  time {span}{delta}", width))])
        out.append([("class:improved", f"↑ {cmp.improved} improved  "),
                    ("class:regressed", f"↓ {cmp.regressed} regressed  "),
                    ("", fit(f"= {cmp.unchanged} unchanged"
                             + (f"  +{cmp.added} added" if cmp.added else "")
                             + (f"  -{cmp.removed} removed" if cmp.removed else ""), width))])
        tests_now = {r.task_id: _tests(r.tests_passed, r.tests_total)
                     for r in (state.report.tasks if state.report is not None
                               and state.report.run_id == cmp.run_id else [])}
        tests_then = {r.task_id: _tests(r.tests_passed, r.tests_total)
                      for r in (state.baseline_report.tasks if state.baseline_report
                                is not None and state.baseline_report.run_id == cmp.baseline_id
                                else [])}
        for t in sorted(cmp.tasks, key=lambda t: CHANGE_ORDER.get(t.change, 9)):
            arrow = {"improved": "↑", "regressed": "↓", "added": "+", "removed": "-"}.get(
                t.change, "=")
            delta = ""
            if t.duration_delta_ms is not None and abs(t.duration_delta_ms) >= NOISE_MS:
                delta = f"  {'+' if t.duration_delta_ms >= 0 else '-'}" \
                        f"{duration(abs(t.duration_delta_ms))}"
            then, now = tests_then.get(t.task_id), tests_now.get(t.task_id)
            tests = f"  tests {then or '?'} → {now or '?'}" if (then or now) and \
                then != now else ""
            text = (f"{t.task_id}: {t.baseline_outcome or 'not run'} → "
                    f"{t.outcome or 'not run'}{tests}{delta}")
            out.append([(f"class:{t.change}", f"{arrow} "), ("", fit(text, width - 2))])
        return out
    report = state.report
    if report is None:
        return [[("class:dim", fit("Enter: open a run   b: compare the opened run with the "
                                   "run under the cursor", width))]]
    out = [[("class:header", fit(f"{report.run_id} [{report.status}]", width))],
           [("", fit(f"{report.passed}/{len(report.task_ids)} passed ({report.pass_rate:.1%})"
                     f"  ✗{report.failed} ⏱{report.timeout} !{report.error}  in "
                     f"{duration(report.total_duration_ms)}  {report.suite_name}, agent "
                     f"{report.agent}", width))]]
    recorded = {r.task_id for r in report.tasks}
    for r in report.tasks:
        tests = f" tests {r.tests_passed}/{r.tests_total}" if r.tests_total is not None else ""
        note = f"  {r.error}" if r.error else ""
        out.append([(_status_style(r.outcome), STATUS_ICONS[r.outcome] + " "),
                    ("", fit(f"{r.task_id} {r.outcome} {duration(r.duration_ms)}{tests}{note}",
                             width - 2))])
    out += [[("class:dim", fit(f"  {tid} not run", width))]
            for tid in report.task_ids if tid not in recorded]
    return out


def status_text(state: HudState, width: int) -> StyleAndTextTuples:
    stopping = state.stopping_for()
    if state.confirm_stop and stopping is not None and state.stop_task_id is None:
        return [("class:confirm", pad(f" Still stopping after {stopping:.0f} s. Force? y: stop "
                                      "every task again   any other key: wait", width))]
    if state.confirm_stop:
        run = state.run.run_id if state.run else "the run"
        if state.stop_task_id is not None:
            run = f"task {state.stop_task_id}"
        return [("class:confirm", pad(f" Stop {run}? y: stop   any other key: cancel", width))]
    if stopping is not None:
        # Never idle-looking while a stop is pending: it counts until the run ends.
        return [("class:confirm", pad(f" stopping… {stopping:.0f} s   (Ctrl+X again to force)",
                                      width))]
    notice = state.notice_text()
    if notice:
        return [("class:notice", pad(" " + notice, width))]
    hints = " ^L load  ^T start  ^X stop  Tab focus  space check  h history  ? help  q quit"
    return [("class:status", pad(hints, width))]


def help_text() -> StyleAndTextTuples:
    out: StyleAndTextTuples = []
    for key, what in HELP:
        out += [("bold", f" {key:<10}"), ("", f" {what}\n")]
    out.append(("class:dim", " press ? or Esc to close"))
    return out


# -- controls ------------------------------------------------------------------------------

class OutputControl(UIControl):
    """Draws only the visible rows of the current task's output (see `output_rows`)."""

    def __init__(self, state: HudState) -> None:
        self.state = state

    def create_content(self, width: int, height: int) -> UIContent:
        rows = output_rows(self.state, width, height)
        return UIContent(get_line=lambda i: rows[i], line_count=len(rows), show_cursor=False)

    def is_focusable(self) -> bool:
        return False


class TaskListControl(UIControl):
    """The task list: scrolls itself to keep the cursor in view and says what lies below."""

    def __init__(self, state: HudState, width: Callable[[], int]) -> None:
        self.state, self.width, self.top = state, width, 0

    def create_content(self, width: int, height: int) -> UIContent:
        rows, cursor = task_rows(self.state, self.width())
        rows, self.top = visible_rows(rows, cursor, self.top, height)
        return UIContent(get_line=lambda i: rows[i], line_count=len(rows), show_cursor=False)

    def is_focusable(self) -> bool:
        return True


def _text_window(get_text: Callable[[], StyleAndTextTuples], **kwargs: object) -> Window:
    return Window(FormattedTextControl(get_text), **kwargs)  # type: ignore[arg-type]


class HudLayout:
    """The windows the key bindings need to know about, and the Layout."""

    def __init__(self, state: HudState, actions: Actions, path: str = "") -> None:
        self.state = state

        def col_width() -> int:
            return left_width(screen_size()[0])

        def right_width() -> int:
            return max(10, screen_size()[0] - col_width() - 1)

        def on_enter(_buffer: object) -> bool:
            actions.load()
            return True  # keep the text in the field

        self.path_field = TextArea(text=path, multiline=False, wrap_lines=False,
                                   style="class:field", accept_handler=on_enter)
        self.load_button = Button("Load", handler=actions.load, width=6)
        self.start_button = Button("Start", handler=actions.start, width=7)
        self.stop_button = Button("Stop", handler=actions.ask_stop, width=6)
        self.all_button = Button("All", handler=state.check_all, width=5)
        self.none_button = Button("None", handler=state.check_none, width=6)

        self.task_window = Window(TaskListControl(state, col_width), wrap_lines=False)
        self.history_window = Window(
            FormattedTextControl(lambda: join_lines(history_lines(state, right_width())),
                                 focusable=True, show_cursor=False,
                                 get_cursor_position=lambda: Point(0, state.history_cursor)),
            # As tall as the list (up to 8 rows): the space left goes to the details.
            height=lambda: Dimension(min=2, preferred=min(max(len(state.history), 2), 8),
                                     max=min(max(len(state.history), 2), 8)),
            wrap_lines=False)
        self.output_window = Window(OutputControl(state), wrap_lines=False)

        wide = Condition(is_wide)
        history_visible = Condition(lambda: state.show_history) | wide
        output_visible = ~Condition(lambda: state.show_history) | wide

        def header(window: Window, text: str) -> Callable[[], StyleAndTextTuples]:
            # The header of the list that has the keyboard stands out.
            def get() -> StyleAndTextTuples:
                focused = get_app().layout.has_focus(window)
                return [("class:header.focused", f"▶ {text} ") if focused else
                        ("class:header", text)]
            return get

        def tasks_header() -> StyleAndTextTuples:
            selected = len(state.selected_ids())
            total = sum(1 for t in state.tasks.values() if t.in_suite)
            name = f" · {state.suite.name}" if state.suite is not None else ""
            return [*header(self.task_window, f"Tasks {selected}/{total}")(),
                    ("class:dim", fit(name, max(0, col_width() - 25)))]

        left = HSplit([
            VSplit([_text_window(tasks_header, width=Dimension(min=9)),
                    self.all_button, Window(width=1), self.none_button], height=1),
            self.task_window,
            _text_window(lambda: [("class:header", "Progress")], height=1),
            _text_window(lambda: join_lines(progress_lines(state, col_width())),
                         height=lambda: Dimension.exact(
                             3 + max(1, min(len(state.running()), MAX_RUNNING_LINES)))),
            _text_window(lambda: [("class:header", "Container")], height=1),
            _text_window(lambda: join_lines(container_lines(state, col_width())),
                         height=lambda: Dimension.exact(len(container_lines(state, 1)))),
        ], width=lambda: Dimension.exact(col_width()))

        history_panel = HSplit([
            _text_window(lambda: [*header(self.history_window, "History")(),
                                  ("class:dim", "  Enter open  b baseline  h hide")],
                         height=1),
            self.history_window,
            Window(height=1, char="─", style="class:dim"),
            # Below the output (wide screens) the details get a share, not all the rest.
            _text_window(lambda: join_lines(detail_lines(state, right_width())),
                         wrap_lines=False,
                         height=lambda: Dimension(min=3, preferred=12, max=14) if is_wide()
                         else Dimension(min=3)),
        ])
        right = HSplit([
            ConditionalContainer(HSplit([
                _text_window(lambda: output_header(state, right_width()), height=1),
                self.output_window,
            ]), filter=output_visible),
            ConditionalContainer(Window(height=1, char="─", style="class:dim"),
                                 filter=history_visible & output_visible),
            ConditionalContainer(history_panel, filter=history_visible),
        ])

        body = HSplit([
            _text_window(lambda: title_text(state, screen_size()[0]), height=1),
            VSplit([_text_window(lambda: [("bold", " Suite: ")], width=8),
                    self.path_field, Window(width=1),
                    self.load_button, Window(width=1), self.start_button, Window(width=1),
                    self.stop_button], height=1),
            # Stale while the link is down: dimmed until the resync redraws the truth.
            VSplit([left, Window(width=1, char="│", style="class:dim"), right],
                   style=lambda: "" if state.link == "connected" else "class:stale"),
            _text_window(lambda: status_text(state, screen_size()[0]), height=1),
        ])
        help_float = Float(ConditionalContainer(
            Frame(_text_window(help_text), title="Keys"),
            filter=Condition(lambda: state.show_help)))
        self.root = FloatContainer(body, floats=[help_float])
        self.layout = Layout(self.root, focused_element=self.task_window)
