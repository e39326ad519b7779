"""`nfproof inspect FILE [--json]`: summarise a capture or an nfproof trace."""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from datetime import datetime, timezone

from nfproof.cli import OK, USAGE
from nfproof.traces.errors import FormatError
from nfproof.traces import FlowKeyer, parse_frame
from nfproof.traces.reader import open_capture
from nfproof.traces.record import CustomBlock, linktype_name
from nfproof.traces.trace import TraceHeader, decode_block, event_from_json, is_trace_block

DESCRIPTION = ("What is in a capture or trace: format, link types, packets, time span, flows by protocol "
               "(both directions count as one flow), truncated and malformed packets, trace events. Exit 0 if "
               "the whole file was read, 2 if not (the summary of what was read comes first, then the error).")


def add_parser(subparsers):
    p = subparsers.add_parser("inspect", help="summarise a pcap, pcapng or nfproof trace",
                              description=DESCRIPTION)
    p.add_argument("file", help="a pcap, pcapng or nfproof trace file; - reads standard input")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def _resolution(tsresol: int) -> str:
    v = tsresol & 0x7F
    return f"2^-{v} s" if tsresol & 0x80 else {6: "us", 9: "ns", 3: "ms", 0: "s"}.get(v, f"10^-{v} s")


PROGRESS_EVERY = 1 << 17  # packets between progress reports


def summarise(path, progress=None) -> dict:
    """The inspect summary of a path or binary file; `errors` lists what stopped reading, if any.
    `progress(packets, bytes_captured)` is called every PROGRESS_EVERY packets."""
    s = {"file": str(getattr(path, "name", "<stream>") if hasattr(path, "read") else path), "format": None, "linktypes": [], "packets": 0, "bytes_captured": 0, "bytes_wire": 0,
         "time_span": None, "protocols": {}, "flows": {"total": 0, "by_protocol": {}}, "truncated": 0,
         "malformed": {}, "trace": None, "events": None, "custom_blocks": 0, "errors": []}
    try:
        reader = open_capture(path)
    except FormatError as e:
        s["errors"].append(str(e))
        return s
    protocols, flow_proto, malformed, by_lt = Counter(), {}, Counter(), Counter()
    events, iface_packets = Counter(), Counter()
    keyer, first, last = FlowKeyer(), None, None
    with reader:
        try:
            for item in reader.items():
                if type(item) is CustomBlock:
                    if is_trace_block(item):
                        _trace_block(s, events, item)
                    else:  # another tool's (PEN 32473 is the documentation PEN: not only nfproof's)
                        s["custom_blocks"] += 1
                    continue
                s["packets"] += 1
                s["bytes_captured"] += len(item.data)
                if progress and s["packets"] % PROGRESS_EVERY == 0:
                    progress(s["packets"], s["bytes_captured"])
                s["bytes_wire"] += item.wirelen
                by_lt[item.interface] += 1
                iface_packets[item.interface] += 1
                if item.time_ns is not None:
                    first = item.time_ns if first is None else min(first, item.time_ns)
                    last = item.time_ns if last is None else max(last, item.time_ns)
                if len(item.data) < item.wirelen:
                    s["truncated"] += 1
                parsed = parse_frame(item.linktype, item.data, item.wirelen)
                protocols[parsed.protocol] += 1
                if parsed.malformed is not None:
                    malformed[parsed.malformed] += 1
                key = keyer.key(parsed)
                if key is not None:
                    flow_proto.setdefault(_both_ways(key), parsed.protocol)
        except FormatError as e:
            s["errors"].append(str(e))
        s["format"] = _format(reader)
        lts = Counter()
        for iface in reader.interfaces:
            lts[iface.linktype] += by_lt[iface.id]
        s["linktypes"] = [{"linktype": lt, "name": linktype_name(lt), "packets": n} for lt, n in sorted(lts.items())]
    if first is not None:
        s["time_span"] = {"first_ns": first, "last_ns": last, "seconds": (last - first) / 1e9,
                          "first": _iso(first), "last": _iso(last)}
    s["protocols"] = dict(protocols.most_common())
    s["flows"] = {"total": len(flow_proto), "by_protocol": dict(Counter(flow_proto.values()).most_common())}
    s["malformed"] = dict(malformed.most_common())
    if s["trace"] is not None:
        s["events"] = dict(events.most_common())
        s["trace"]["interfaces"] = {i.name or str(i.id): iface_packets[i.id] for i in reader.interfaces}
    return s


def _both_ways(key: tuple) -> tuple:
    """One key for both directions of a (vlans, version, proto, src, sport, dst, dport) flow."""
    vlans, version, proto, src, sport, dst, dport = key
    if (dst, dport or 0) < (src, sport or 0):
        return vlans, version, proto, dst, dport, src, sport
    return key


def _trace_block(s: dict, events: Counter, block: CustomBlock) -> None:
    try:
        item = event_from_json(decode_block(block.data))
    except ValueError as e:
        s["errors"].append(f"{s['file']}: offset {block.offset}: {e}")
        return
    if isinstance(item, TraceHeader):
        s["trace"] = {"version": item.version, "chain": item.chain, "strategy": item.strategy}
    else:
        events[item.kind] += 1


def _format(reader) -> dict:
    d = dict(reader.details)
    if d["format"] == "pcapng":
        d["sections"] = [dict(sec, interfaces=[
            {"id": i, "name": reader.interfaces[i].name, "linktype": reader.interfaces[i].linktype,
             "snaplen": reader.interfaces[i].snaplen, "resolution": _resolution(reader.interfaces[i].tsresol)}
            for i in sec["interfaces"]]) for sec in d["sections"]]
    return d


def _iso(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    try:
        day = datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{ns} ns"
    return f"{day}.{frac:09d} UTC"


def render(s: dict) -> str:
    f = s["format"]
    if f["format"] == "pcap":
        fmt = (f"pcap, {f['byte_order']}-endian, {f['resolution']} resolution, version {f['version']}, "
               f"snaplen {f['snaplen']}")
    else:
        secs = [f"{sec['byte_order']}-endian v{sec['version']} with {len(sec['interfaces'])} interface(s)"
                for sec in f["sections"]]
        fmt = f"pcapng, {len(secs)} section(s): " + "; ".join(secs)
    lines = [f"{s['file']}: {fmt}"]
    if f["format"] == "pcapng":
        for sec in f["sections"]:
            for i in sec["interfaces"]:
                lines.append(f"  interface {i['id']}{' ' + i['name'] if i['name'] else ''}: "
                             f"{linktype_name(i['linktype'])} ({i['linktype']}), snaplen {i['snaplen']}, "
                             f"{i['resolution']} resolution")
    lines.append("link types: " + (", ".join(f"{lt['name']} ({lt['linktype']}) {lt['packets']} packets"
                                             for lt in s["linktypes"]) or "none"))
    lines.append(f"packets: {s['packets']} ({s['bytes_captured']} bytes captured, {s['bytes_wire']} on the wire)")
    ts = s["time_span"]
    lines.append("time span: " + (f"{ts['first']} .. {ts['last']} ({ts['seconds']:.6f} s)" if ts else "none"))
    lines.append(f"flows: {s['flows']['total']}" + _counts(s["flows"]["by_protocol"], " — "))
    lines.append("protocols:" + (_counts(s["protocols"], " ") or " none"))
    lines.append(f"truncated: {s['truncated']} packets with caplen < wire length")
    lines.append(f"malformed: {sum(s['malformed'].values())}" + _counts(s["malformed"], " — "))
    if s["custom_blocks"]:
        lines.append(f"custom blocks: {s['custom_blocks']} of other tools (skipped)")
    if s["trace"] is not None:
        t = s["trace"]
        lines.append(f"trace: version {t['version']}, chain {t['chain']!r}, strategy {t['strategy']!r}")
        lines.append("  interfaces:" + _counts(t["interfaces"], " "))
        lines.append(f"  events: {sum(s['events'].values())}" + _counts(s["events"], " — "))
    return "\n".join(lines)


def _counts(c: dict, lead: str) -> str:
    return lead + ", ".join(f"{k} {v}" for k, v in c.items()) if c else ""


def _progress_line(path):
    """A progress line on stderr for a terminal (the share of the file is estimated from bytes read)."""
    if not sys.stderr.isatty() or not os.path.isfile(path):
        return None
    size = os.path.getsize(path) or 1

    def show(packets, captured):
        print(f"\r  {packets:,} packets, ~{min(99, 100 * captured // size)}% of {path}", end="", file=sys.stderr, flush=True)
    return show


def run(args) -> int:
    progress = _progress_line(args.file)
    s = summarise(sys.stdin.buffer if args.file == "-" else args.file, progress)
    if progress and s["packets"] >= PROGRESS_EVERY:
        print("\r\033[K", end="", file=sys.stderr)
    try:
        if args.json:
            print(json.dumps(s, indent=2, default=str))
        elif s["format"] is not None:
            print(render(s))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stdout = open(os.devnull, "w")
    for err in s["errors"]:
        print(f"nfproof inspect: error: {err}", file=sys.stderr)
    return USAGE if s["errors"] else OK
