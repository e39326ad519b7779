"""How `nfproof replay` shows its verdict: an `error:` line, then the story -- the first output
no failure-free execution explains, field by field (never hex), what one would have emitted
instead, the input it descends from, the failure events around it, and the choice or state that
would have been needed -- and the same as JSON."""
from __future__ import annotations

from ..models.api import PROTO_NAMES, TCP, TCP_FLAGS, ip
from .frames import observable_text
from .replay import ReplayResult, events_around
from .replay_search import NS


def seconds(rec, t_ns: int) -> str:
    """A time as seconds since the run's first input."""
    return f"{(t_ns - rec.t0_ns) / NS:.6f} s"


def fields(key: tuple) -> list[tuple[str, str]]:
    """An observable key as (field, value) pairs; a frame outside the model by its length."""
    if key[0] == "raw":
        return [("frame", f"outside the model, {len(key[1])} bytes")]
    proto, src, sport, dst, dport, flags, length = key[:7]
    out = [("proto", PROTO_NAMES.get(proto, str(proto))), ("src", ip(src)), ("sport", str(sport)),
           ("dst", ip(dst)), ("dport", str(dport))]
    if proto == TCP:
        out.append(("flags", "".join(c for b, c in enumerate(TCP_FLAGS) if flags >> b & 1) or "none"))
    elif flags:
        out.append(("flags", str(flags)))
    out.append(("length", str(length)))
    if len(key) > 7:  # the label recorded beside the frame
        out.append(("label", str(key[7])))
    return out


def field_lines(key: tuple, other: tuple | None = None, indent: str = "    ") -> list[str]:
    """A packet field by field; with `other`, the fields that differ from it marked."""
    theirs = dict(fields(other)) if other is not None and other[0] != "raw" and key[0] != "raw" else {}
    return [f"{indent}{name:7} {value}" + (f"   <-- {theirs[name]} in the other" if theirs and theirs.get(name) != value else "")
            for name, value in fields(key)]


def _input_text(rec, u) -> str:
    view = u.view
    what = observable_text(u.raw_key) if u.raw_key else str(view)
    return (f"input {u.seq} (packet #{u.number}, from the {u.side}, arrived at {seconds(rec, u.time_ns)}): {what}"
            + (" -- in flight at the crash" if u.lossable else ""))


def _output_text(rec, o) -> str:
    by = f", released by {o.instance}" if o.instance else ""
    seq = f" of input {o.seq}" if o.seq is not None else ""
    return f"packet #{o.number} on egress {o.egress}{seq}{by}"


def error_line(result: ReplayResult) -> str:
    rec, f = result.recording, result.failure
    where = f"{rec.path}"
    if result.verdict == "explained":
        return (f"explained: {where}: a failure-free execution of {rec.chain_text} on the same "
                f"{result.stats.get('inputs', len(rec.inputs))} input(s) produces the "
                f"{result.stats.get('outputs', len(rec.outputs))} observed output(s) "
                f"({result.eq}, max stall {result.stall_ns / NS:g} s)")
    if result.verdict == "unknown":
        return f"unknown: {where}: {result.reason}"
    if f.kind == "order":
        return (f"{where}: {_output_text(rec, f.output)} came out after {_output_text(rec, f.before)}: a "
                f"failure-free chain releases them in input order ({result.eq})")
    if f.kind == "orphan":
        return f"{where}: {_output_text(rec, f.output)} names input {f.output.seq}, which the trace does not have"
    if f.kind == "window":
        return (f"{where}: input {f.unit.seq} (packet #{f.unit.number}) cannot be processed within "
                f"{result.stall_ns / NS:g} s of its arrival after the inputs before it")
    if f.output is not None:
        return (f"{where}: {_output_text(rec, f.output)} is not produced by any failure-free execution of "
                f"{rec.chain_text} on the same inputs ({result.eq}, max stall {result.stall_ns / NS:g} s)")
    missing = f.missing
    what = f" ({missing[0]}: {observable_text(missing[1])})" if missing else ""
    return (f"{where}: every failure-free execution of {rec.chain_text} emits an output{what} for input "
            f"{f.unit.seq} (packet #{f.unit.number}) that never came out ({result.eq})")


def story(result: ReplayResult) -> str:
    rec, f = result.recording, result.failure
    lines = [f"trace: {rec.chain_text} under {rec.strategy}, {result.stats.get('inputs', len(rec.inputs))} inputs, "
             f"{result.stats.get('outputs', len(rec.outputs))} outputs, "
             f"{len(rec.events)} events; checked {result.eq}, max stall {result.stall_ns / NS:g} s "
             f"(failover time {result.failover_ns / NS:g} s)"]
    if f is None:
        return "\n".join(lines)
    if f.decided_by == "z3":
        lines.append("decided by Z3 (verify/replay_z3.py): the search ran out of alternatives to try")
    if f.output is not None:
        lines += ["", f"the first output that cannot be explained: {_output_text(rec, f.output)}, at "
                      f"{seconds(rec, f.output.time_ns)}"]
        other = f.expected[0][1] if f.expected else None
        lines += field_lines(f.output.key, other)
    if f.before is not None:
        lines += ["", f"it came out after {_output_text(rec, f.before)}:"] + field_lines(f.before.key)
    if f.expected and f.kind == "content":
        lines += ["", "a failure-free execution that explains everything before it emits there instead:"]
        for egress, key in f.expected[:3]:
            lines += [f"  on egress {egress}:"] + field_lines(key, f.output.key if f.output is not None else None)
    elif f.kind == "content" and f.output is not None:
        lines += ["", "a failure-free execution that explains everything before it emits nothing more there"]
    if f.missing is not None and f.output is None:
        lines += ["", f"the output that never came out, on egress {f.missing[0]}:"] + field_lines(f.missing[1])
    if f.unit is not None:
        lines += ["", "it descends from " + _input_text(rec, f.unit)]
        drops = [d for a in f.attempts[:1] for d in a.drops]
        if drops:
            lines.append("  (a failure-free execution drops it there: " + "; ".join(drops) + ")")
    number = f.output.number if f.output is not None else (f.unit.number if f.unit is not None else 0)
    around = events_around(rec, number)
    if around:
        lines += ["", "failure events around it:"]
        for e in around:
            extra = ", ".join(f"{k} {v}" for k, v in e.fields.items() if k != "end_ns")
            lines.append(f"  after packet #{e.after_packet}, at {seconds(rec, e.time_ns)}: {e.kind} of "
                         f"{e.instance or 'the chain'}" + (f" ({extra})" if extra else ""))
    d = f.diagnosis
    if d is not None:
        if d.reads:
            lines += ["", "the state a failure-free execution has when it processes that input:"]
            lines += [f"  {entry} = {value}" for entry, value, _ in d.reads]
        if d.choices:
            lines.append("  choices it makes: " + ", ".join(f"{inst}: {v}" for inst, v in d.choices))
        if d.repairs:
            lines += ["", "what would have explained the output (the choice or state needed):"]
            lines += [f"  {r.what}" for r in d.repairs]
        else:
            lines += ["", "no single change of the state it reads, of its choices or of its processing time "
                          "explains it"]
    return "\n".join(lines)


def key_json(key: tuple) -> dict:
    if key[0] == "raw":
        return {"outside_model": True, "length": len(key[1])}
    return dict(fields(key))


def as_json(result: ReplayResult) -> dict:
    rec, f = result.recording, result.failure
    out = {"verdict": result.verdict, "trace": rec.path, "chain": rec.chain_text, "strategy": rec.strategy,
           "params": rec.params, "equivalence": result.eq.relation, "allow_duplicates": result.eq.allow_duplicates,
           "max_stall_s": result.stall_ns / NS, "failover_time_s": result.failover_ns / NS,
           "reason": result.reason, "stats": result.stats, "error": None if result.verdict == "explained" else error_line(result)}
    if f is not None:
        out["failure"] = {
            "kind": f.kind,
            "decided_by": f.decided_by,
            "output": None if f.output is None else {
                "packet": f.output.number, "egress": f.output.egress, "seq": f.output.seq,
                "out_index": f.output.out_index, "instance": f.output.instance,
                "time_s": (f.output.time_ns - rec.t0_ns) / NS, "fields": key_json(f.output.key)},
            "expected": [{"egress": e, "fields": key_json(k)} for e, k in f.expected],
            "missing": None if f.missing is None else {"egress": f.missing[0], "fields": key_json(f.missing[1])},
            "input": None if f.unit is None else {"seq": f.unit.seq, "packet": f.unit.number, "side": f.unit.side,
                                                   "time_s": (f.unit.time_ns - rec.t0_ns) / NS,
                                                   "text": _input_text(rec, f.unit)},
            "after_output": None if f.before is None else {"packet": f.before.number, "seq": f.before.seq},
            "events": [{"kind": e.kind, "instance": e.instance, "time_s": (e.time_ns - rec.t0_ns) / NS,
                        "after_packet": e.after_packet, "fields": e.fields}
                       for e in events_around(rec, f.output.number if f.output else (f.unit.number if f.unit else 0))],
            "state": [{"entry": e, "value": v} for e, v, _ in f.diagnosis.reads] if f.diagnosis else [],
            "needed": [{"kind": r.kind, "what": r.what} for r in f.diagnosis.repairs] if f.diagnosis else [],
        }
    return out
