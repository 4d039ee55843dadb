"""`downsize report` on a small real store: a slice of tau-airline imported and discovered, a specialist with a
hand-written eval report, mode changes with a rollback, and held-out calls replayed as gateway traffic with
known decisions. The page is checked for its content against the store, then opened in headless Chromium:
the screenshot is drawn (many colours, not blank) and the page raises no error.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from downsize.cli.main import main
from downsize.discover.config import DiscoverConfig
from downsize.discover.discovery import discover
from downsize.discover.names import conversation_step, role_line, schema_title, task_name, unique_names
from downsize.prompting import render_target
from downsize.report.figures import gather
from downsize.report.page import write_report
from downsize.shapes import response_message, tool_calls
from downsize.store import Store
from downsize.types import PROBE_ROUTE, Exchange, RouteDecision, Specialist, ToolCall

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KEEP = set(range(0, 10)) | {35, 36, 40, 46}  # ten dev workflows, four test ones (replayed as gateway traffic)
SECRET = "sk-proj-Zq8HcT3vW9yL2mN5pR7sA1dF4gJ6kX0b"  # in a replayed request: the page must never show it
TOOL = "get_reservation_details"
CURVE = [  # a hand-written calibration curve: coverage up, agreement down
    {
        "threshold": t,
        "served": s,
        "agreed": a,
        "coverage": s / 60,
        "agreement": a / s,
        "agreement_lower95": a / s - 0.12,
    }
    for t, s, a in ((-0.05, 10, 10), (-0.2, 20, 19), (-0.5, 32, 29), (-1.0, 45, 36), (-2.0, 60, 42))
]
EVAL = {
    "specialist": {"id": 1, "name": "tool-get_reservation_details", "student": "SmolLM2-135M-Instruct"},
    "engine": "llamacpp",
    "target_agreement": 0.9,
    "threshold": -0.5,
    "validation": {"calls": 80, "curve": CURVE, "at_threshold": {"calls": 80, "served": 32, "agreed": 29}},
    "test_tool_calls": {"calls": 50, "exact_agreement": 0.6},
    "test": {
        "calls": 50,
        "at_threshold": {
            "calls": 50,
            "tool_calls": 40,
            "served": 14,
            "agreed": 13,
            "served_share": 0.35,
            "agreement": 13 / 14,
        },
    },
    "teacher_ceiling": {"situations": 87, "answers": 220, "pairs": 418, "agreement": 0.72},
    "kind": "tool_call",
}
ROLLBACK_REASON = "disagreement 0.31 above the limit 0.20 (one-sided 95% bound 0.24) on 64 checked calls"


def _slice(tmp: Path) -> Path:
    folder = tmp / "tau"
    folder.mkdir()
    runs = json.loads((DATA / "tau-airline" / "trajectories-gpt-4o.json").read_text())
    (folder / "trajectories-gpt-4o.json").write_text(json.dumps([r for r in runs if r["task_id"] in KEEP]))
    for name in ("tools.json", "policy.md"):
        shutil.copy(DATA / "tau-airline" / name, folder / name)
    return folder


def _replay(store: Store, specialist_id: int) -> dict[str, Any]:
    """Record the test split's tool calls as gateway traffic over three hours, with decisions chosen here."""
    held = [
        ex for ex in store.exchanges(source="tau-airline", split="test") if ex.response_kind == "tool_call"
    ]
    start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    items: list[tuple[Exchange, RouteDecision | None, int | None]] = []
    expected: dict[str, Any] = {"decisions": 0, "served": 0, "shadow": 0, "shadow_agreed": 0, "fallbacks": {}}
    for i, ex in enumerate(held[:48]):
        call = tool_calls(response_message(ex.response))[0]
        request = json.loads(json.dumps(ex.request))
        if i == 0:  # an agent that pasted its key into the conversation
            request["messages"].append({"role": "user", "content": f"my key is {SECRET}"})
        replayed = Exchange(
            request=request,
            response=ex.response,
            source="gateway",
            agent=ex.agent,  # the agent header the replay sends
            task_hint=ex.task_hint,
            session=f"replay/{ex.session}",
            response_kind="tool_call",
            tool_names=[call.name],
            created_at=(start + timedelta(minutes=4 * i)).isoformat(),
        )
        kind = i % 4
        if kind == 0:
            decision = RouteDecision(served=True, reason="served", specialist=str(specialist_id))
            expected["served"] += 1
        elif kind == 1:  # shadow: every other candidate agrees with the teacher
            agree = i % 8 == 1
            candidate = render_target(call if agree else ToolCall(call.name, {"wrong": SECRET}))
            decision = RouteDecision(
                served=False, reason="shadow", specialist=str(specialist_id), candidate=candidate
            )
            expected["shadow"] += 1
            expected["shadow_agreed"] += agree
        else:
            reason = "low_confidence" if kind == 2 else "gate_text"
            decision = RouteDecision(served=False, reason=reason, specialist=str(specialist_id))
            expected["fallbacks"][reason] = expected["fallbacks"].get(reason, 0) + 1
        expected["decisions"] += 1
        replayed.route = decision.route  # as the gateway stores it
        items.append((replayed, decision, specialist_id))
    store.record_many(items)
    # the LLM asked again about the first two served calls (consistency probe): it agrees once, not the other time
    served = [ex for ex, d, _ in items if d is not None and d.served][:2]
    for n, first in enumerate(served):
        answer = (
            first.response if n == 0 else {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}
        )
        probe = Exchange(
            request=first.request,
            response=answer,
            source="gateway",
            agent=first.agent,
            session=first.session,
            route=PROBE_ROUTE,
            response_kind="tool_call" if n == 0 else "text",
            created_at=first.created_at,
        )
        store.record_many([(probe, None, None)])
    expected["probes"] = (2, 1)
    return expected


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOWNSIZE_HOME", str(tmp / "home"))
        from downsize.importers.tau_airline import import_tau_airline

        url = f"sqlite:///{tmp / 'downsize.db'}"
        store = Store.open(url)
        import_tau_airline(store, _slice(tmp))
        discover(store, DiscoverConfig(embedder="lsa", map=False, source="tau-airline"))
        tools = sorted(
            {t["function"]["name"] for t in json.loads((DATA / "tau-airline" / "tools.json").read_text())}
        )
        sp = Specialist(
            name="tool-get_reservation_details",
            task=f"tool:{TOOL}",
            base_model="SmolLM2-135M-Instruct",
            adapter_path="specialists/tool-get_reservation_details",
            config={"tasks": [f"tool:{TOOL}"], "task_tools": tools, "contract": {"kind": "tool_call"}},
            data_hash="0" * 64,
            threshold=-0.5,
            metrics={"eval": EVAL},
        )
        sp_id = store.add_specialist(sp)
        other = Specialist(
            name="tool-search_direct_flight",
            task="tool:search_direct_flight",
            base_model="SmolLM2-135M-Instruct",
            adapter_path="specialists/tool-search_direct_flight",
            config={"tasks": ["tool:search_direct_flight"], "task_tools": tools},
            data_hash="1" * 64,
        )
        store.add_specialist(other)
        store.set_status(sp_id, "shadow", actor="promote", reason="calibrated threshold -0.5")
        store.set_status(
            sp_id, "live", actor="cli", reason="operator: live after a day in shadow", evidence={}
        )
        store.set_status(sp_id, "shadow", actor="rollback", reason=ROLLBACK_REASON, evidence={"checked": 64})
        expected = _replay(store, sp_id)
        out = write_report(store, tmp / "report.html")
        figures = gather(store)
    return {
        "url": url,
        "page": out.read_text(),
        "path": out,
        "expected": expected,
        "figures": figures,
        "tmp": tmp,
    }


# -- names ------------------------------------------------------------------------------------------------


def test_role_lines_from_real_prompts() -> None:
    policy = (DATA / "tau-airline" / "policy.md").read_text()
    assert role_line(policy) == "Airline agent"
    assert (
        role_line("You are Crew Manager. You are a seasoned manager with a knack for ...") == "Crew Manager"
    )
    assert (
        role_line("You are a Planning Agent observing execution progress. After each step ...")
        == "Planning Agent observing execution progress"
    )
    assert (
        role_line("Convert all responses into valid JSON output.")
        == "Convert all responses into valid JSON output"
    )
    assert role_line("") is None
    masked = role_line(f"You are the billing bot for key {SECRET}. Be brief.")
    assert masked is not None and SECRET not in masked and "Billing bot" in masked
    slack = role_line("You are the bot for token xoxb-2938479238-sdkfjhskdjfhskdjfh. Be nice.")
    assert slack == "Bot for token <SECRET>"  # curation's secret scanner, before the variables are masked


def test_schema_title_and_names() -> None:
    request = {
        "response_format": {"type": "json_schema", "json_schema": {"name": "TaskEvaluation", "schema": {}}}
    }
    assert schema_title(request) == "TaskEvaluation"
    assert schema_title({"response_format": {"json_schema": {"schema": {"title": "Score"}}}}) == "Score"
    assert schema_title({}) is None
    assert task_name("Crew Manager", "json", schema="TaskEvaluation") == "Crew Manager · TaskEvaluation"
    assert task_name("Airline agent", "tool_call", tool=TOOL) == f"Airline agent · {TOOL}"
    assert task_name(None, "text") == "text reply"
    messages = [
        {"role": "system", "content": "x"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "get_user_details"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{}"},
    ]
    assert conversation_step(messages) == "after get_user_details's result"
    assert conversation_step(messages[:2]) == "on the user's first message"
    names = unique_names(
        {"a": "X · t", "b": "X · t", "c": "X · t", "d": "Y · u"},
        {"a": "after the user's message", "b": "after the user's message", "c": "at the start", "d": None},
        {"a": 5, "b": 9, "c": 1, "d": 3},
    )
    assert names == {
        "a": "X · t, after the user's message #2",
        "b": "X · t, after the user's message #1",
        "c": "X · t, at the start",
        "d": "Y · u",
    }


# -- the page's content -----------------------------------------------------------------------------------


def test_report_content_matches_the_store(built: dict[str, Any]) -> None:
    page, figures, expected = built["page"], built["figures"], built["expected"]
    for section in ("tasks", "specialists", "routing", "changes", "money", "conversion"):
        assert f'<section id="{section}">' in page
    # tasks: readable names (role line and tool), never the c-TF-IDF bag of words
    store = Store.open(built["url"])
    from downsize.discover.runs import run_tasks

    rows = run_tasks(store)
    assert len(figures.tasks) == len(rows) and len(rows) > 5
    names = [t.name for t in figures.tasks]
    assert len(set(names)) == len(names)
    assert f"Airline agent · {TOOL}" in page and "Airline agent · text reply" in page
    for row in rows:
        if row["label"] != row["dominant_tool"]:
            assert f">{row['label']}<" not in page
    assert page.count('class="task"') == len(rows)  # one bubble per task on the map
    volumes = {r["task_key"]: r["volume"] for r in rows}
    assert {t.key: t.volume for t in figures.tasks} == volumes
    covered = [t for t in figures.tasks if t.specialist == "tool-get_reservation_details"]
    assert covered and all(t.mode == "shadow" for t in covered)
    # the specialist's curve with the teacher's ceiling
    assert page.count('<figure class="curve">') == 1 and 'data-ceiling="0.72"' in page
    assert "teacher's own agreement 72% (418 pairs)" in page
    assert "served 14 of 40 calls the teacher answered in kind (35.0%), 13 of them agreeing" in page
    assert "not evaluated" in page  # the second specialist
    # routing: the counts recorded above
    assert figures.decisions == expected["decisions"] and figures.served == expected["served"]
    assert (figures.shadow_pairs, figures.shadow_agreed) == (expected["shadow"], expected["shadow_agreed"])
    assert figures.fallbacks == expected["fallbacks"]
    assert (figures.probe_pairs, figures.probe_agreed) == expected["probes"]
    assert "served calls checked by the LLM: 1/2 agreed" in page
    assert figures.bucket_unit == "hour" and len(figures.buckets) == 4  # 48 calls, 4 minutes apart, from 9:00
    served = expected["served"]
    assert f"{expected['decisions']} decisions, {served} served" in page
    for reason, count in expected["fallbacks"].items():
        assert f'data-label="{reason}" data-count="{count}"' in page
    assert page.count('<circle class="served-share"') == 4
    # mode changes: candidate -> shadow -> live -> shadow, the rollback highlighted
    assert len(figures.events) == 3
    assert page.count('<tr class="rollback">') == 1 and ROLLBACK_REASON in page
    # money: the cost model's figures, or a plain "not measured"
    from downsize.evaluate.costs import measure_savings

    costs = measure_savings(store)
    assert costs.overall.calls_served == expected["served"]
    assert f"saved ${costs.overall.net_saving_usd:,.4f} net on {expected['served']} served calls" in page
    assert "savings: not measured" not in page
    # conversion: measured on the replayed traffic, else on the eval's test split, and says which
    sources = {c.source for c in figures.conversions}
    assert "replayed traffic" in sources
    assert sources <= {
        "replayed traffic",
        "eval test split at threshold -0.5",
        "not evaluated",
        "no specialist",
    }
    replayed = [c for c in figures.conversions if c.source == "replayed traffic"]
    assert sum(c.measured_on for c in replayed) <= expected["decisions"]
    # never a secret, nor a stored body
    assert SECRET not in page and '"messages"' not in page
    assert not re.search(
        r"<script|https?://(?!www\.w3\.org/2000/svg)", page
    )  # self-contained, nothing fetched


def test_cli_report_and_empty_store(built: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "cli.html"
    result = CliRunner().invoke(main, ["report", "--db", built["url"], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"report: {out}" in result.output and out.read_text().startswith("<!DOCTYPE html>")
    empty = CliRunner().invoke(
        main, ["report", "--db", f"sqlite:///{tmp_path / 'empty.db'}", "--out", str(out)]
    )
    assert empty.exit_code == 1 and "no exchanges" in empty.output and "Traceback" not in empty.output
    assert "report" in CliRunner().invoke(main, ["--help"]).output
    listed = CliRunner().invoke(main, ["tasks", "--db", built["url"], "--limit", "5"])
    assert (
        listed.exit_code == 0 and f"Airline agent · {TOOL}" in listed.output
    )  # `downsize tasks` names them too


def test_coverage_at_the_promoted_thresholds() -> None:
    """A specialist promoted by risk tier serves, on the test split, what each tier's threshold serves there."""
    from downsize.artifacts import EvalReport
    from downsize.report.figures import test_coverage

    tiers = {"read_only": {"curve": CURVE}, "strict": {"curve": CURVE}}
    report = EvalReport.from_dict({**EVAL, "threshold": None, "calibration": {"test_tiers": tiers}})
    promotion = {"to": "live", "rule": "parity", "tier_thresholds": {"read_only": -0.5, "strict": None}}
    sp = Specialist("s", "t", "b", "a", {}, "0", metrics={"promotion": promotion, "eval": EVAL})
    coverage = test_coverage(sp, report)
    assert coverage is not None and (coverage.served, coverage.agreed, coverage.calls) == (32, 29, 40)
    assert coverage.how == "eval test split at the promoted thresholds (parity rule)"
    unpromoted = test_coverage(Specialist("s", "t", "b", "a", {}, "0"), EvalReport.from_dict(EVAL))
    assert unpromoted is not None and (unpromoted.served, unpromoted.calls) == (14, 40)
    assert unpromoted.how == "eval test split at threshold -0.5"


def test_report_before_discovery_says_what_to_run(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'small.db'}")
    request = {"model": "gpt-4o", "messages": [{"role": "system", "content": "You are a poet."}]}
    answer = {"choices": [{"message": {"role": "assistant", "content": "roses"}}]}
    store.add_exchanges([Exchange(request=request, response=answer, source="gateway", response_kind="text")])
    page = write_report(store, tmp_path / "small.html").read_text()
    assert (
        "run `downsize discover`" in page and "no specialist yet" in page and "no routed traffic yet" in page
    )
    assert (
        "savings: not measured" not in page
    )  # one gateway call: the cost model measures it (nothing served)
    assert "no mode change yet" in page


# -- in a browser -----------------------------------------------------------------------------------------


def png_pixels(path: Path, every: int = 4) -> list[tuple[int, ...]]:
    """The pixels of an 8-bit RGB or RGBA PNG (every `every`th of every `every`th row), decoded with zlib."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and colour in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    raw = zlib.decompress(idat)
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    prev = bytearray(stride)
    pixels = []
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif ftype == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = line
        if y % every == 0:
            pixels += [tuple(line[x : x + 3]) for x in range(0, stride, bpp * every)]
    return pixels


HOOK = (
    "<script>window.__errors=[];window.onerror=function(m){window.__errors.push(String(m))};"
    "addEventListener('error',function(e){if(e.target&&e.target!==window)window.__errors.push('load '+"
    "(e.target.src||e.target.href))},true);addEventListener('load',function(){var p=document.createElement('pre');"
    "p.id='page-errors';p.textContent=window.__errors.join('|')||'none';document.body.appendChild(p)})</script>"
)


def test_report_renders_in_headless_chromium(built: dict[str, Any], tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "no `chromium` binary (Debian's chromium package; `make install` installs it where it can)"
        )
    hooked = tmp_path / "hooked.html"
    hooked.write_text(built["page"].replace("<head>", "<head>" + HOOK, 1))
    shot = tmp_path / "report.png"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    shown = subprocess.run(
        [
            *flags,
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={shot}",
            "--window-size=1280,2400",
            f"--user-data-dir={tmp_path / 'profile1'}",
            hooked.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shot.is_file(), shown.stderr[-2000:]
    console = [line for line in shown.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = subprocess.run(
        [*flags, "--dump-dom", f"--user-data-dir={tmp_path / 'profile2'}", hooked.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    assert '<pre id="page-errors">none</pre>' in dom
    assert 'id="timeline"' in dom and 'class="curve"' in dom
    pixels = png_pixels(shot)
    colours = {(r >> 4, g >> 4, b >> 4) for r, g, b in pixels}
    drawn = sum(1 for p in pixels if p != (255, 255, 255)) / len(pixels)
    assert len(colours) >= 20, f"only {len(colours)} colours: the page looks blank"
    assert drawn > 0.05, f"only {drawn:.1%} of the screenshot is not white"


def test_a_short_span_is_drawn_by_the_minute() -> None:
    from downsize.report.figures import bucket_start

    stamp = "2026-12-06T19:41:06.537+00:00"
    assert bucket_start(stamp, "minute") == "2026-12-06 19:41"
    assert bucket_start(stamp, "hour") == "2026-12-06 19:00"
    assert bucket_start(stamp, "day") == "2026-12-06"
