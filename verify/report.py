"""Counterexamples as data, rendered: a one-line `error:`, a numbered story with packets shown field
by field, a JSON object, and a Python snippet that re-runs the failover concretely."""
from __future__ import annotations

from ..models.api import ICMP, TCP, TCP_FLAGS, UDP, Packet, ip
from .equivalence import STRICT
from .failover import Result


def output_text(gate: str, pkt: Packet) -> str:
    return f"{gate}: {pkt}"


def error_line(result: Result) -> str:
    cex = result.counterexample
    run, why = cex.run, cex.explanation
    i, gate, pkt = run.observed[why.matched] if why.matched < len(run.observed) else (None, None, None)
    if pkt is None:
        return (f"{result.nf} under {result.strategy}: the egress saw {why.matched} output(s); every failure-free "
                f"execution of the same {len(run.inputs)} input(s) emits more")
    return (f"{result.nf} under {result.strategy}: output {why.matched + 1} ({output_text(gate, pkt)}) is not "
            f"produced by any failure-free execution of the same {len(run.inputs)} input(s)")


def story(result: Result) -> str:
    cex = result.counterexample
    run, why = cex.run, cex.explanation
    lines = [f"counterexample: {result.nf} under {result.strategy}, {len(run.inputs)} input packet(s), "
             f"crash after {run.cut.applied} applied / {run.cut.released} released, standby resumes "
             f"from " + (f"the state of input {run.protected}" if run.protected else "the initial state")]
    if run.arrivals is not None:
        lines.append(f"times (clock ticks, {getattr(cex.nf, 'ticks_per_second', 1)} per second): the primary crashes at "
                     f"{run.crash_time}, the failover ends at "
                     f"{run.failover_end}; a failure-free run may process each input up to {cex.max_stall} after it arrives")
    lines += ["", "inputs (in arrival order):"]
    lines += [f"  {i}. {p}" + _times_text(run, i) for i, p in enumerate(run.inputs, 1)]
    lines += ["", "what happened:"]
    for n, e in enumerate(run.events, 1):
        text = f"  {n:2}. {e.actor} {e.text}"
        if e.kind in ("apply", "replay") and e.outputs:
            text += " -> " + "; ".join(output_text(g, p) for g, p in e.outputs)
        elif e.kind in ("apply", "replay"):
            text += " -> no output"
        if e.kind == "replay":
            text += "   (replayed by the upstream)"
        lines.append(text)
    lines += ["", "the outside world saw:"]
    for n, (i, gate, pkt) in enumerate(run.observed):
        mark = "   <-- no failure-free execution produces this" if n == why.matched else ""
        lines.append(f"  {n + 1}. {output_text(gate, pkt)}   (input {i}){mark}")
    if why.matched >= len(run.observed):
        lines.append(f"  (nothing more: a failure-free execution emits more after output {why.matched})")
    lines += ["", "why:"]
    if cex.eq != STRICT:
        lines.append(f"  compared under {cex.eq}: " + "; ".join(
            what for what, on in (("order counts within a flow only", cex.eq.relation == "per-flow"),
                                  ("a failure-free execution may have lost the inputs in flight at the crash",
                                   cex.eq.lossy),
                                  ("an output repeating an earlier one may be passed over", cex.eq.allow_duplicates))
            if on))
    prefix = f"after the first {why.matched} output(s)" if why.matched else "from the start"
    instead = "; or ".join(output_text(g, p) for g, p in why.expected) if why.expected else "no further output"
    lines.append(f"  {prefix}, every failure-free execution that matches emits instead: {instead}")
    return "\n".join(lines)


def _times_text(run, i: int) -> str:
    """When input i arrived and when the primary and the standby processed it."""
    if run.arrivals is None:
        return ""
    parts = [f"arrived at {run.arrivals[i - 1]}"]
    if i in run.primary_times:
        parts.append(f"processed by the primary at {run.primary_times[i]}")
    if i in run.standby_times:
        parts.append(f"by the standby at {run.standby_times[i]}")
    return "   (" + ", ".join(parts) + ")"


def _times_json(result: Result) -> dict | None:
    run = result.counterexample.run
    if run.arrivals is None:
        return None
    return {"unit": "clock ticks", "arrivals": run.arrivals, "crash": run.crash_time, "failover_end": run.failover_end,
            "max_stall": result.counterexample.max_stall,
            "processed_by_primary": {str(i): t for i, t in run.primary_times.items()},
            "processed_by_standby": {str(i): t for i, t in run.standby_times.items()}}


def as_json(result: Result) -> dict:
    out = {"verdict": result.verdict, "nf": result.nf, "strategy": result.strategy, "bound": result.bound,
           "unbounded": result.unbounded,
           "seconds": round(result.seconds, 4), "stats": result.stats, "reason": result.reason}
    cex = result.counterexample
    if cex:
        run, why = cex.run, cex.explanation
        out["error"] = error_line(result)
        out["counterexample"] = {
            "inputs": [_packet_json(p) for p in run.inputs],
            "crash": {"cut": run.cut.k, "applied": run.cut.applied, "released": run.cut.released,
                      "protected": run.protected},
            "events": [{"actor": e.actor, "kind": e.kind, "input": e.input, "text": e.text,
                        "outputs": [{"gate": g, **_packet_json(p)} for g, p in e.outputs]} for e in run.events],
            "observed": [{"input": i, "gate": g, **_packet_json(p)} for i, g, p in run.observed],
            "times": _times_json(result),
            "unexplained_output": why.matched + 1,
            "expected_instead": [{"gate": g, **_packet_json(p)} for g, p in why.expected],
            "reproduce": reproduction(result),
        }
    return out


def _packet_json(pkt: Packet) -> dict:
    return {"text": str(pkt), "proto": pkt.proto, "src": ip(pkt.src), "sport": pkt.sport, "dst": ip(pkt.dst),
            "dport": pkt.dport, "flags": pkt.flags, "inbound": pkt.inbound, "length": pkt.length, "label": pkt.label}


def packet_code(pkt: Packet) -> str:
    proto = {TCP: "TCP", UDP: "UDP", ICMP: "ICMP"}.get(pkt.proto, str(pkt.proto))
    letters = "".join(c for b, c in enumerate(TCP_FLAGS) if pkt.flags >> b & 1)
    return (f'Packet({proto}, addr("{ip(pkt.src)}"), {pkt.sport}, addr("{ip(pkt.dst)}"), {pkt.dport}, '
            f'flags("{letters}"), inbound={pkt.inbound}'
            + "".join(f", {f}={getattr(pkt, f)}" for f in ("length", "label") if getattr(pkt, f, 0)) + ")")


def reproduction(result: Result) -> str:
    """A Python snippet that replays the counterexample concretely and prints its verdict (the
    model by `model_ref`: a bundled name, or the user model's file or module, with parameters)."""
    from ..models import model_ref
    cex = result.counterexample
    run = cex.run
    primary = {i: c for i, c in run.primary_choices.items() if c}
    standby = {i: c for i, c in run.standby_choices.items() if c}
    inputs = ",\n    ".join(packet_code(p) for p in run.inputs)
    s = run.strategy
    protocol = "".join(f", {k}={v!r}" for k, v, default in (
        ("replay_input", s.replay_input, True), ("dedup", s.dedup, True), ("mutation", s.mutation, None),
        ("equivalence", cex.eq.relation, "strict"), ("allow_duplicates", cex.eq.allow_duplicates, False)) if v != default)
    base = s.name if s.param is None else f"{s.name}:{s.param}"
    return (
        "from nfproof.models.api import Packet, TCP, UDP, ICMP, addr, flags\n"
        "from nfproof.verify.simulate import reproduce\n"
        f"reproduce({model_ref(cex.nf)!r}, \"{base}\", [\n    {inputs},\n], crash={run.cut.k}, "
        f"protected={run.protected},\n          primary_choices={primary}, "
        f"standby_choices={standby}, log_choices={cex.log_choices}"
        + (f",\n          arrivals={run.arrivals}, crash_time={run.crash_time}, "
           f"failover_time={run.failover_end - run.crash_time}, max_stall={cex.max_stall}" if run.arrivals is not None else "")
        + protocol + ")\n")


def html(result: Result, alone: str | None = None) -> str:
    """A self-contained HTML timeline of a counterexample: one column per actor, one row per
    event in order, the output no failure-free execution produces highlighted; `alone`: a chain's
    run with one instance crashing alone (verify/chain_crash.py), as text."""
    from html import escape

    run, why = result.counterexample.run, result.counterexample.explanation
    actors = ["upstream", "primary", "standby", "egress"]
    rows, delivered = [f"<td>input {i}: {escape(str(p) + _times_text(run, i))}</td><td></td><td></td><td></td>"
                       for i, p in enumerate(run.inputs, 1)], 0
    for e in run.events:
        css = "crash" if e.kind == "crash" else ""
        if e.kind == "deliver":
            delivered += 1
            css = "bad" if delivered == why.matched + 1 else "out"
        outs = "".join(f"<div class=out>{escape(output_text(g, p))}</div>" for g, p in e.outputs)
        rows.append("".join(f"<td class='{css}'>{escape(e.text)}{outs}</td>" if a == e.actor else "<td></td>"
                            for a in actors))
    instead = "; or ".join(output_text(g, p) for g, p in why.expected) or "no further output"
    if why.matched < len(run.observed):
        why_text = "no failure-free execution of these inputs emits the highlighted output; every one that matches the outputs before it emits instead"
    else:
        why_text = f"the egress let out only {len(run.observed)} output(s); every failure-free execution that matches them emits more"
    return f"""<!doctype html><meta charset=utf-8><title>nfproof counterexample: {escape(result.nf)} under {escape(result.strategy)}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;width:100%}}
th,td{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;width:25%}}th{{background:#eee}}
.out{{font-family:monospace;color:#236}}.crash{{background:#fdd;font-weight:bold}}.bad{{background:#f99;font-weight:bold}}
pre{{background:#f6f6f6;padding:1em}}h1{{font-size:18px}}</style>
<h1>{escape(error_line(result))}</h1>
<table><tr>{''.join(f'<th>{a}</th>' for a in actors)}</tr>
{chr(10).join(f'<tr>{r}</tr>' for r in rows)}</table>
<p><b>Why:</b> {why_text}: <code>{escape(instead)}</code></p>
<h2>Reproduce</h2><pre>{escape(reproduction(result))}</pre>
""" + (f"<h2>One instance crashing alone</h2><pre>{escape(alone)}</pre>\n" if alone else "")
