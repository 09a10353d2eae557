"""The report as one self-contained HTML page: plotly charts with plotly.js inlined once (the
page loads nothing at view time), plain tables, simple CSS in system fonts.

plotly is an optional dependency (``pip install 'pgcleave[report]'``), imported only here and
only when a page is rendered, so no other command pays its import time.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from ..errors import Refused
from ..journal import args_text
from ..status import human_rows as _rows
from ..status import human_size as _size

#: bar colours by what a partition is (colour-blind-safe Okabe-Ito palette)
COLOURS = {
    "local": "#0072B2", "DEFAULT": "#E69F00", "legacy": "#999999",
    "past retention": "#D55E00", "made ahead": "#56B4E9",
}
SERVER_COLOURS = ["#009E73", "#CC79A7", "#F0E442", "#000000", "#8C564B", "#17BECF"]
LOCK_COLOURS = {
    "ACCESS EXCLUSIVE": "#D55E00", "EXCLUSIVE": "#E69F00", "SHARE ROW EXCLUSIVE": "#E69F00",
    "SHARE": "#F0E442", "SHARE UPDATE EXCLUSIVE": "#56B4E9", "ROW EXCLUSIVE": "#009E73",
    "ROW SHARE": "#009E73", "ACCESS SHARE": "#009E73",
}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0 auto; max-width: 1280px; padding: 1rem 1.5rem; color: #1a1a1a;
       line-height: 1.4; }
h1 { font-size: 1.5rem; margin: 0.2rem 0; }
h2 { font-size: 1.25rem; border-bottom: 2px solid #0072B2; padding-bottom: 0.2rem;
     margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin: 1.2rem 0 0.4rem; }
.meta, .note { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.4rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left;
         vertical-align: top; }
th { background: #f3f6f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1b7f3b; font-weight: 600; }
.problem { color: #b3261e; }
.kind { display: inline-block; min-width: 7.5rem; font-weight: 600; }
nav a { margin-right: 1rem; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
        import plotly.offline
        from plotly.subplots import make_subplots
    except ImportError:
        raise Refused("the HTML report needs plotly, which is not installed",
                            hint="pip install 'pgcleave[report]'") from None
    return go, plotly.offline, make_subplots


def render(reports: list[dict[str, Any]], *, generated_at: datetime, database: str) -> str:
    """The page: one section per table, in the order given."""
    go, offline, make_subplots = _plotly()
    body: list[str] = []
    if len(reports) > 1:
        body.append("<nav>" + "".join(
            f'<a href="#t{i}">{_e(r["table"])}</a>' for i, r in enumerate(reports)) + "</nav>")
    for i, r in enumerate(reports):
        body.append(_section(go, make_subplots, r, f"t{i}"))
    title = ("pgcleave report: " + (reports[0]["table"] if len(reports) == 1
                                    else f"{len(reports)} tables"))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{CSS}</style>"
        # plotly.js once, inline: the page needs no network to show its charts
        f"<script type=\"text/javascript\">{offline.get_plotlyjs()}</script></head><body>"
        f"<h1>{_e(title)}</h1><p class=\"meta\">database {_e(database)}, generated "
        f"{_e(generated_at.isoformat(sep=' ', timespec='seconds'))}</p>"
        + "\n".join(body) + "</body></html>\n")


def _section(go: Any, make_subplots: Any, r: dict[str, Any], anchor: str) -> str:
    pol = r["policy"]
    parts = r["partitions"]
    out = [f'<h2 id="{anchor}">{_e(r["table"])}</h2>',
           f'<p>{_e(r["kind"])} partitioned by {_e(r["key"])}; {len(parts)} partitions, '
           f'{_rows(r["rows"])} rows (estimate), {_size(r["bytes"])} here'
           + (f'; {_e(r["primary_key"])}' if r["primary_key"] else "") + "</p>",
           "<p>policy: " + (_e(pol["summary"]) if pol else
                            "none: nothing maintains it (<code>pgcleave config</code> sets one)")
           + "</p>"]
    out.append(_problems(r))
    out.append("<h3>Partitions along the key</h3>")
    out.append(_partitions_chart(go, make_subplots, r, anchor))
    out.append(_horizons(r))
    out.append(_servers(r))
    out.append(_jobs(go, r, anchor))
    return "\n".join(out)


def _problems(r: dict[str, Any]) -> str:
    c = r["check"]
    if c["ok"]:
        return '<h3>Check</h3><p class="ok">no problem (<code>pgcleave check</code>)</p>'
    items = "".join(f'<li class="problem"><span class="kind">{_e(p["kind"])}</span> '
                    f'{_e(p["message"])}</li>' for p in c["problems"])
    return (f'<h3>Check: {len(c["problems"])} problem(s)</h3><ul>{items}</ul>'
            '<p class="note">as <code>pgcleave check</code> reports them now</p>')


def _category(p: dict[str, Any]) -> str:
    if p["is_default"]:
        return "DEFAULT"
    if p["legacy"]:
        return "legacy"
    if p["past_retention"]:
        return "past retention"
    if p["server"]:
        return f"on {p['server']}"
    if p["ahead"]:
        return "made ahead"
    return "local"


def _partitions_chart(go: Any, make_subplots: Any, r: dict[str, Any], anchor: str) -> str:
    parts = r["partitions"]
    servers = sorted({p["server"] for p in parts if p["server"]})
    colours = {**COLOURS, **{f"on {s}": SERVER_COLOURS[i % len(SERVER_COLOURS)]
                             for i, s in enumerate(servers)}}
    labels = [_pe(_label(p)) for p in parts]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("rows (estimate)", "size (local partitions)"))
    cats = [_category(p) for p in parts]
    for cat in [c for c in colours if c in cats]:
        idx = [i for i, c in enumerate(cats) if c == cat]
        hover = [_hover(parts[i]) for i in idx]
        x = [labels[i] for i in idx]
        common = {"marker_color": colours[cat], "legendgroup": cat, "hovertext": hover,
                  "hoverinfo": "text"}
        fig.add_trace(go.Bar(x=x, y=[parts[i]["rows"] or 0 for i in idx], name=_pe(cat),
                             **common), row=1, col=1)
        fig.add_trace(go.Bar(x=x, y=[(parts[i]["bytes"] or 0) / 1024 for i in idx],
                             name=_pe(cat), showlegend=False, **common), row=2, col=1)
    for axis in ("xaxis", "xaxis2"):
        fig.update_layout({axis: {"categoryorder": "array", "categoryarray": labels,
                                  "tickangle": -45 if len(labels) > 8 else 0}})
    fig.update_yaxes(title_text="rows", row=1, col=1)
    fig.update_yaxes(title_text="kB", row=2, col=1)
    for hz in r["horizons"] if len(r["horizons"]) == 1 else []:
        # one range level: where now, the retention cutoff and the premake horizon fall
        for value, text, colour in ((hz["retention_cutoff"], "retention cutoff", "#D55E00"),
                                    (hz["now"], "now", "#333333"),
                                    (hz["premake_horizon"], "premake horizon", "#0072B2")):
            at = _position(parts, hz["bounds"], value)
            if at is not None:
                _mark(fig, at, f"{text} {_v(value)}", colour)
    fig.update_layout(barmode="stack", height=560, margin={"l": 60, "r": 20, "t": 60,
                                                             "b": 40},
                      legend={"orientation": "h", "y": 1.12}, bargap=0.15,
                      plot_bgcolor="#fbfbfb")
    return _div(fig, f"{anchor}-partitions")


def _position(parts: list[dict[str, Any]], bounds: dict[str, list[Any]], value: Any
              ) -> float | None:
    """Where a key value falls on the category axis of partitions in key order: inside the
    bar of the partition holding it (by its share of the range), or at the edge of a gap."""
    if value is None:
        return None
    last = None
    for i, p in enumerate(parts):
        if p["name"] not in bounds:
            continue
        lo, hi = bounds[p["name"]]
        if lo is not None and value < lo:
            return i - 0.5
        if hi is None or value < hi:
            return i - 0.5 + _share(lo, hi, value)
        last = i
    return None if last is None else last + 0.5


def _share(lo: Any, hi: Any, value: Any) -> float:
    try:
        whole, part = hi - lo, value - lo
        if hasattr(whole, "total_seconds"):
            return float(part.total_seconds() / whole.total_seconds())
        return float(part / whole)
    except (TypeError, ZeroDivisionError):
        return 0.0


def _mark(fig: Any, x: float, text: str, colour: str) -> None:
    """A dashed vertical line across both charts, its label along it."""
    fig.add_shape(type="line", x0=x, x1=x, xref="x", yref="paper", y0=0, y1=1,
                  line={"color": colour, "dash": "dash", "width": 1.5})
    fig.add_annotation(x=x, xref="x", y=0.99, yref="paper", text=_pe(text), showarrow=False,
                       textangle=-90, font={"color": colour, "size": 11}, xanchor="right",
                       yanchor="top", xshift=-2)


def _label(p: dict[str, Any]) -> str:
    """The partition's name (and its parents', for a second level) without the schema."""
    name = p["name"].split(".", 1)[1] if "." in p["name"] else p["name"]
    return f"{p['path']}{name}"


def _hover(p: dict[str, Any]) -> str:
    flags = [f for f, on in (("DEFAULT", p["is_default"]), ("legacy", p["legacy"]),
                             ("past retention", p["past_retention"]),
                             ("made ahead", p["ahead"]),
                             ("detach pending", p["detach_pending"])) if on]
    return "<br>".join([
        _pe(p["path"] + p["name"]), _pe(p["bound"]),
        f"{_rows(p['rows'])} rows, {_size(p['bytes'])}",
        _pe(f"on server {p['server']}" if p["server"] else "local"),
        *([_pe(", ".join(flags))] if flags else [])])


def _horizons(r: dict[str, Any]) -> str:
    pol = r["policy"]
    c = r["check"]
    if not r["horizons"]:
        why = ("no policy" if pol is None else
               "the policy has no range level with an interval")
        return f"<h3>Horizons</h3><p class=\"note\">none ({_e(why)})</p>"
    rows = "".join(
        f"<tr><td>{_e(hz['parent'])}</td><td>{_e(_v(hz['now']))}</td>"
        f"<td>{_e(_v(hz['premake_horizon'], 'unbounded'))}</td>"
        f"<td class=\"num\">{len(hz['ahead'])}</td>"
        f"<td>{_e(_v(hz['retention_cutoff'], 'keep everything'))}</td>"
        f"<td class=\"num\">{len(hz['past_retention'])}</td></tr>" for hz in r["horizons"])
    wanted = (f"; the policy asks for {c['periods_wanted']} period(s) ahead, "
              f"{c['periods_ahead']} ready" if c["periods_wanted"] is not None else "")
    ret = (f"; retention {pol['retention']} then {pol['retention_action']}"
           if pol and pol.get("retention") else "; no retention")
    return ("<h3>Horizons</h3><table><tr><th>level</th><th>now</th><th>premake horizon "
            "(partitions ready up to)</th><th>partitions ahead</th><th>retention cutoff"
            "</th><th>partitions past it</th></tr>" + rows + "</table>"
            f"<p class=\"note\">premake {pol['premake'] if pol else '-'}{_e(wanted)}"
            f"{_e(ret)}</p>")


def _servers(r: dict[str, Any]) -> str:
    parts = r["partitions"]
    where = {s["name"]: s["where"] for s in r["servers"]}
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for p in parts:
        groups.setdefault(p["server"], []).append(p)
    rows = []
    for server in sorted(groups, key=lambda s: (s is not None, s or "")):
        ps = groups[server]
        rows.append(
            f"<tr><td>{_e(server or 'this server (local)')}</td>"
            f"<td>{_e(where.get(server, '') if server else '')}</td>"
            f"<td class=\"num\">{len(ps)}</td>"
            f"<td class=\"num\">{_rows(sum(p['rows'] or 0 for p in ps))}</td>"
            f"<td>{_e(_some([_label(p) for p in ps]))}</td></tr>")
    return ("<h3>Which server holds what</h3><table><tr><th>server</th><th>where</th>"
            "<th>partitions</th><th>rows</th><th>partition names (key order)</th></tr>"
            + "".join(rows) + "</table>")


def _some(names: list[str], ends: int = 4) -> str:
    """All the names, or the first and last few of a long list (the chart shows every one)."""
    if len(names) <= 3 * ends:
        return ", ".join(names)
    return (", ".join(names[:ends]) + f", ... ({len(names) - 2 * ends} more) ..., "
            + ", ".join(names[-ends:]))


def _jobs(go: Any, r: dict[str, Any], anchor: str) -> str:
    jobs = r["jobs"]
    if not jobs:
        return "<h3>Jobs</h3><p class=\"note\">no pgcleave job on this table yet</p>"
    head = ("<h3>Jobs</h3>" + (f"<p class=\"note\">{r['jobs_omitted']} older job(s) not "
                               "shown</p>" if r["jobs_omitted"] else ""))
    rows = []
    for j in jobs:
        held = [s for s in j["steps"] if s["held_ms"] is not None and s["lock"]]
        top = max(held, key=lambda s: s["held_ms"], default=None)
        rows.append(
            f"<tr><td class=\"num\">{j['id']}</td><td>{_e(j['operation'])}</td>"
            f"<td>{_e(j['state'])}</td><td>{_e(args_text(j.get('args') or {}))}</td>"
            f"<td>{_e(j['created_at'][:19].replace('T', ' '))}</td>"
            f"<td class=\"num\">{j['steps_done']}/{j['steps_total']}</td>"
            f"<td class=\"num\">{_ms(sum(s['duration_ms'] or 0 for s in j['steps']))}</td>"
            "<td>" + (_e(f"{_ms(top['held_ms'])} {top['lock']} ({top['name']})") if top
                      else "no table lock measured") + "</td></tr>")
    table = ("<table><tr><th>job</th><th>operation</th><th>state</th><th>args</th>"
             "<th>started</th>"
             "<th>steps</th><th>time in steps</th><th>longest lock hold</th></tr>"
             + "".join(rows) + "</table>")
    return head + table + _timeline(go, jobs, anchor) + (
        "<p class=\"note\">Each job's steps from its start. Light bars: the step's duration "
        "(lock retries included); dark bars: how long it held its locks, coloured by the "
        "strongest lock its plan names. Measured by pgcleave: for a statement step, its "
        "successful transaction from the first statement to the commit; for an action, the "
        "cut-over it recorded (move, carve) or else its longest single attempt at work that "
        "waits for locks. A step with no dark bar measured none (jobs journaled before "
        "pgcleave recorded lock holds have no figure).</p>")


def _timeline(go: Any, jobs: list[dict[str, Any]], anchor: str) -> str:
    ys: list[str] = []
    base: list[float] = []
    dur: list[float] = []
    hb: list[float] = []
    hx: list[float] = []
    hy: list[str] = []
    hc: list[str] = []
    htext: list[str] = []
    text: list[str] = []
    for j in jobs:
        spans = {s["idx"]: _span(s) for s in j["steps"]}
        t0 = min((sp[0] for sp in spans.values() if sp), default=None)
        for s in j["steps"]:
            sp = spans[s["idx"]]
            if sp is None or t0 is None:
                continue
            y = _pe(f"job {j['id']} {j['operation']}: {s['idx'] + 1} {s['name']}")
            start = (sp[0] - t0) * 1000
            length = max((sp[1] - sp[0]) * 1000, 0.5)
            ys.append(y)
            base.append(start)
            dur.append(length)
            text.append(_pe(f"{s['description']} ({s['state']}, {_ms(length)}, "
                           f"{s['attempts']} attempt(s))"))
            if s["held_ms"] is not None:
                held = min(s["held_ms"], length)
                hy.append(y)
                hb.append(start + length - held)
                hx.append(max(held, 0.5))
                hc.append(LOCK_COLOURS.get(s["lock"] or "", "#555555"))
                htext.append(_pe(f"{s['lock'] or 'no lock'} on {s['lock_on'] or '-'}: held "
                                f"{_ms(s['held_ms'])}"))
    if not ys:
        return "<p class=\"note\">no step has run yet</p>"
    fig = go.Figure()
    fig.add_trace(go.Bar(y=ys, x=dur, base=base, orientation="h", name="step",
                         marker_color="#c9d9ea", hovertext=text, hoverinfo="text"))
    fig.add_trace(go.Bar(y=hy, x=hx, base=hb, orientation="h", name="lock held",
                         marker_color=hc, hovertext=htext, hoverinfo="text", width=0.45))
    fig.update_layout(barmode="overlay", height=max(260, 22 * len(ys) + 120),
                      xaxis_title="ms from the job's first step", showlegend=True,
                      legend={"orientation": "h", "y": 1.08},
                      yaxis={"autorange": "reversed", "categoryorder": "array",
                             "categoryarray": ys, "automargin": True},
                      margin={"l": 20, "r": 20, "t": 40, "b": 40}, plot_bgcolor="#fbfbfb")
    return _div(fig, f"{anchor}-jobs")


def _div(fig: Any, div_id: str) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True}))


def _span(s: dict[str, Any]) -> tuple[float, float] | None:
    """(start, end) in epoch seconds of a step that ran. A transactional step is journaled
    once, at its commit (finished_at and duration_ms): its start is derived from those."""
    if not s["finished_at"] or s["state"] not in ("done", "failed", "undone"):
        return None
    end = datetime.fromisoformat(s["finished_at"]).timestamp()
    if s["started_at"]:
        return datetime.fromisoformat(s["started_at"]).timestamp(), end
    if s["duration_ms"] is None:
        return None
    return end - s["duration_ms"] / 1000, end


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _pe(s: Any) -> str:
    """Text for plotly, which reads its strings as a little HTML (``<b>``, ``<br>``, ``<a>``)
    and turns back ``&amp;``, ``&lt;`` and ``&gt;``, not ``&quot;``."""
    return html.escape(str(s), quote=False)


def _v(v: Any, none: str = "-") -> str:
    if v is None:
        return none
    if isinstance(v, datetime):
        return v.isoformat(sep=" ")
    return str(v)


def _ms(v: float) -> str:
    return f"{v:.0f} ms" if v < 10_000 else f"{v / 1000:.1f} s"
