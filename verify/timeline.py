"""The replay verdict as a self-contained HTML timeline (`nfproof replay --html FILE`): one row
per packet or control event in trace order, columns for the chain's ingress sides, the instances
(primaries and standbys, as the trace names them) and the egresses; crashes and failovers as
bands across the instances; the output no failure-free execution explains in red, with what
one would have emitted beside it. Inline CSS only: it opens in a browser without a network."""
from __future__ import annotations

from html import escape

from .replay import ReplayResult, events_around
from .replay_report import error_line, fields, seconds
from .frames import observable_text

MAX_ROWS = 400     # rows shown; a long trace shows the neighbourhood of the verdict
CONTEXT = 60       # packets before the failure shown (when the trace is long)

CSS = """body{font:13px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:17px}
.verdict{padding:.6em 1em;border-radius:4px;margin-bottom:1em}.explained{background:#dfd}.violation{background:#fdd}
.unknown{background:#ffd}table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:3px 6px;
vertical-align:top;font-size:12px}th{background:#eee;position:sticky;top:0}td.t{white-space:nowrap;color:#555}
.pkt{font-family:monospace}.in{background:#eef4ff}.out{background:#eefbea}.bad{background:#f99;font-weight:bold}
.want{background:#ffe7a8}.crash{background:#c33;color:#fff;font-weight:bold}.failover{background:#36c;color:#fff;
font-weight:bold}.ev{background:#eee}.focus{outline:2px solid #c33}.rel{color:#363;font-weight:bold}
details{margin:1em 0}pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}"""


def _columns(rec) -> tuple[list, list, list]:
    sides = ["inside", "outside"]
    instances = list(rec.chain.members)
    for o in rec.outputs:
        if o.instance and o.instance not in instances:
            instances.append(o.instance)
    for e in rec.events:
        if e.instance and e.instance not in instances:
            instances.append(e.instance)
        standby = e.fields.get("standby") if isinstance(e.fields, dict) else None
        if isinstance(standby, str) and standby and standby not in instances:
            instances.append(standby)
    return sides, instances, list(rec.chain.egress_names)


def _packet_cell(key, css: str, note: str = "") -> str:
    text = escape(observable_text(key))
    detail = escape(", ".join(f"{k} {v}" for k, v in fields(key)))
    return f"<td class='{css}'><span class=pkt title='{detail}'>{text}</span>{note}</td>"


def html(result: ReplayResult) -> str:
    rec, f = result.recording, result.failure
    sides, instances, egresses = _columns(rec)
    focus = None
    if f is not None:
        focus = f.output.number if f.output is not None else (f.unit.number if f.unit is not None else None)
    items = [("in", u.number, u) for u in rec.inputs] + [("out", o.number, o) for o in rec.outputs]
    items.sort(key=lambda x: (x[1], x[0] != "in"))
    total = max(len(items), result.stats.get("inputs", 0) + result.stats.get("outputs", 0))
    if total > MAX_ROWS:
        if focus is not None:
            items = [x for x in items if focus - CONTEXT <= x[1] <= focus + 10] or items[:MAX_ROWS]
        else:
            items = items[:MAX_ROWS]
    events = sorted(rec.events, key=lambda e: e.after_packet)
    shown_events = [e for e in events if e.kind in ("failure", "failover", "sync")]
    first, last = (items[0][1], items[-1][1]) if items else (0, 0)
    ncols = 1 + len(sides) + len(instances) + len(egresses)
    header = "".join(f"<th>ingress:{s}</th>" for s in sides) + "".join(f"<th>{escape(i)}</th>" for i in instances) + \
        "".join(f"<th>egress:{escape(e)}</th>" for e in egresses)
    rows = []
    pending = [e for e in shown_events if first - 1 <= e.after_packet <= last]

    def event_rows(upto):
        while pending and pending[0].after_packet < upto:
            e = pending.pop(0)
            css = {"failure": "crash", "failover": "failover"}.get(e.kind, "ev")
            label = {"failure": "CRASH", "failover": "FAILOVER"}.get(e.kind, e.kind)
            extra = escape(", ".join(f"{k} {v}" for k, v in e.fields.items() if k != "end_ns"))
            cells = "".join(f"<td class='{css}'>{label}: {escape(e.instance)} {extra}</td>" if i == e.instance
                            else f"<td class='{css}'></td>" for i in instances)
            rows.append(f"<tr><td class=t>{seconds(rec, e.time_ns)}</td>" + "<td></td>" * len(sides) + cells +
                        "<td></td>" * len(egresses) + "</tr>")

    for kind, number, x in items:
        event_rows(number)
        t = f"<td class=t>#{number} {seconds(rec, x.time_ns)}</td>"
        if kind == "in":
            key = x.raw_key if x.raw_key else (x.view.proto, x.view.src, x.view.sport, x.view.dst, x.view.dport,
                                               x.view.flags, x.view.length) if hasattr(x.view, "proto") else None
            css = "in focus" if f is not None and f.unit is x else "in"
            what = _packet_cell(key, css, f" <small>input {x.seq}</small>") if key else \
                f"<td class='{css}'>{escape(getattr(x.view, 'reason', 'dropped'))} <small>input {x.seq}</small></td>"
            cells = "".join(what if s == x.side else "<td></td>" for s in sides)
            rows.append(f"<tr>{t}{cells}" + "<td></td>" * (len(instances) + len(egresses)) + "</tr>")
        else:
            bad = f is not None and f.output is x
            css = "bad" if bad else "out"
            note = f" <small>of input {x.seq}</small>" if x.seq is not None else ""
            if bad:
                note += " <b>&larr; no failure-free execution produces this</b>"
            inst = "".join("<td class=rel>released</td>" if i == x.instance else "<td></td>" for i in instances)
            outs = "".join(_packet_cell(x.key, css, note) if e == x.egress else "<td></td>" for e in egresses)
            rows.append(f"<tr>{t}" + "<td></td>" * len(sides) + inst + outs + "</tr>")
            if bad and f.expected:
                for egress, key in f.expected[:2]:
                    want = "".join(_packet_cell(key, "want", " <small>a failure-free execution emits this instead</small>")
                                   if e == egress else "<td></td>" for e in egresses)
                    rows.append("<tr><td class=t></td>" + "<td></td>" * (len(sides) + len(instances)) + want + "</tr>")
    event_rows(10 ** 18)
    if f is not None and f.output is None and f.missing is not None:
        egress, key = f.missing
        want = "".join(_packet_cell(key, "want", " <small>never came out: a failure-free execution emits it</small>")
                       if e == egress else "<td></td>" for e in egresses)
        rows.append("<tr><td class=t></td>" + "<td></td>" * (len(sides) + len(instances)) + want + "</tr>")
    shown = f"{len(items)} of {total} packets" if len(items) < total else f"all {total} packets"
    needed = ""
    if f is not None and f.diagnosis is not None and f.diagnosis.repairs:
        needed = "<p><b>What would have explained it:</b></p><ul>" + "".join(
            f"<li>{escape(r.what)}</li>" for r in f.diagnosis.repairs) + "</ul>"
    from .replay_report import story
    around = events_around(rec, focus) if focus is not None else []
    return f"""<!doctype html><html><head><meta charset=utf-8>
<title>nfproof replay: {escape(rec.chain_text)} — {escape(result.verdict)}</title><style>{CSS}</style></head><body>
<h1>nfproof replay: {escape(rec.path)}</h1>
<div class='verdict {escape(result.verdict)}'><b>{escape(result.verdict.upper())}</b> — {escape(error_line(result))}</div>
<p>chain <code>{escape(rec.chain_text)}</code> under <code>{escape(rec.strategy)}</code>; {len(rec.inputs)} inputs,
{len(rec.outputs)} outputs, {len(rec.events)} events ({len(around)} failure events near the verdict); showing {shown}.</p>
{needed}
<table><tr><th>packet / time</th>{header}</tr>
{chr(10).join(rows)}
</table>
<details><summary>the story</summary><pre>{escape(story(result))}</pre></details>
<p><small>{ncols} columns: ingress sides, instances (a <span class=rel>released</span> mark: the instance that let the
output out), egresses.</small></p>
</body></html>
"""
