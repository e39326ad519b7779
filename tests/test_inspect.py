"""`nfproof inspect` and the acceptance captures: packet counts equal tshark's (recorded in
tests/data/tshark_counts.tsv), corrupt files exit 2 after what was read, empty files exit 0."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nfproof.cli import main
from nfproof.cmd_inspect import summarise
from nfproof.traces.pcapng import PcapngWriter
from nfproof.traces.reader import read_records
from nfproof.traces.trace import TraceEvent, TraceHeader, TracePacket, TraceWriter

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).parent.parent.parent / "shared" / "pcaps"


def _tshark_counts() -> dict[str, int]:
    rows = [line.split("\t") for line in (DATA / "tshark_counts.tsv").read_text().splitlines()
            if line and not line.startswith("#")]
    return {row[0]: int(row[1]) for row in rows[1:]}


TSHARK = _tshark_counts()
FILES = sorted(p for p in DATA.iterdir() if p.name in TSHARK)
if SHARED.is_dir():
    FILES += sorted(p for p in SHARED.iterdir() if p.name in TSHARK)


def test_copies_present():
    names = {p.name for p in DATA.iterdir()}
    assert set(TSHARK) - names == {"E01_mixed_vlan_mpls_v6_dns_http.pcap", "S01_stress_500flows_82k.pcap"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_packet_count_equals_tshark(path):
    s = summarise(str(path))
    assert s["packets"] == TSHARK[path.name]
    assert bool(s["errors"]) == path.name.startswith("C")
    if not path.name.startswith("C"):
        assert sum(1 for _ in read_records(str(path))) == TSHARK[path.name]


def _run(capsys, *argv):
    code = main(["inspect", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_c01_summary_then_error(capsys):
    code, out, err = _run(capsys, str(DATA / "C01_corrupt_record_len.pcap"))
    assert code == 2
    assert "packets: 18 " in out and "flows: 1 — tcp 1" in out
    assert err.strip() == (f"nfproof inspect: error: {DATA / 'C01_corrupt_record_len.pcap'}: offset 3695: "
                           "record 19 claims 3925868813 bytes, 125497 remain")


@pytest.mark.parametrize("name,message", [
    ("C02_corrupt_pcap_version.pcap", "offset 4: pcap version 1.4: archaic pcap savefile format"),
    ("C03_corrupt_pcapng_blocklen.pcapng", "offset 0: block 1 (SHB): length 52 in header, 808464432 in trailer"),
])
def test_unreadable_files_exit_2_with_message(capsys, name, message):
    code, out, err = _run(capsys, str(DATA / name))
    assert code == 2 and out == ""
    assert err.strip() == f"nfproof inspect: error: {DATA / name}: {message}"


@pytest.mark.parametrize("name", ["E23_empty.pcap", "E24_empty.pcapng"])
def test_empty_files(capsys, name):
    code, out, err = _run(capsys, "--json", str(DATA / name))
    s = json.loads(out)
    assert code == 0 and err == ""
    assert s["packets"] == 0 and s["errors"] == [] and s["time_span"] is None
    assert s["linktypes"] == [{"linktype": 1, "name": "EN10MB", "packets": 0}]


def test_missing_file(capsys, tmp_path):
    code, out, err = _run(capsys, str(tmp_path / "nope.pcap"))
    assert code == 2 and out == ""
    assert err == f"nfproof inspect: error: {tmp_path / 'nope.pcap'}: cannot open: No such file or directory\n"


def test_json_summary_of_everyday_capture(capsys):
    code, out, _ = _run(capsys, "--json", str(DATA / "E02_http_49flows.pcap"))
    s = json.loads(out)
    assert code == 0
    assert s["format"] == {"format": "pcap", "byte_order": "little", "resolution": "us", "version": "2.4",
                           "snaplen": 65535}
    assert s["packets"] == 655 and s["protocols"] == {"tcp": 655}
    assert s["flows"] == {"total": 49, "by_protocol": {"tcp": 49}}  # both directions count once
    assert s["linktypes"] == [{"linktype": 1, "name": "EN10MB", "packets": 655}]
    assert s["truncated"] == 0 and s["malformed"] == {} and s["errors"] == [] and s["events"] is None
    assert s["time_span"]["first_ns"] < s["time_span"]["last_ns"]


@pytest.mark.parametrize("name,details", [
    ("E17_nsec_sll_tcp_handshake.pcap", {"resolution": "ns", "byte_order": "little"}),
    ("E18_bigendian_pptp.pcap", {"resolution": "us", "byte_order": "big"}),
])
def test_pcap_variants(name, details):
    s = summarise(str(DATA / name))
    assert details.items() <= s["format"].items()


def test_truncated_packets_counted():
    s = summarise(str(DATA / "T01_snaplen_cut_tcp_878.pcap"))
    assert s["packets"] == 878 and s["truncated"] == 691 and s["errors"] == []


def test_link_types_and_fragments():
    assert summarise(str(DATA / "E09_http_41flows_dlt_null.pcap"))["linktypes"][0]["name"] == "NULL"
    assert summarise(str(DATA / "E16_sll2_http.pcap"))["linktypes"][0]["linktype"] == 276
    frag = summarise(str(DATA / "E20_frag_ipv4_udp_afs.pcap"))
    assert frag["protocols"] == {"udp": 576, "icmp": 25}  # later fragments count with their flow's protocol


def test_malformed_packets_counted_by_kind(tmp_path):
    path = tmp_path / "bad.pcapng"
    eth = bytes(12) + b"\x08\x00"
    good = eth + bytes.fromhex("450000200001000040110000c0a80001c0a80002d4310035000c0000") + b"abcd"
    bad_ihl = eth + bytes.fromhex("430000200001000040110000c0a80001c0a80002") + bytes(12)
    with PcapngWriter(str(path)) as w:
        i = w.add_interface(1)
        w.write_packet(i, 1, good)
        w.write_packet(i, 2, bad_ihl)
        w.write_packet(i, 3, bad_ihl)
    s = summarise(str(path))
    assert s["packets"] == 3 and s["malformed"] == {"bad-ihl": 2} and s["protocols"] == {"udp": 3}


def test_pcapng_with_several_link_types(tmp_path):
    path = tmp_path / "multi.pcapng"
    ipv4 = bytes.fromhex("450000200001000040110000c0a80001c0a80002d4310035000c0000") + b"abcd"
    with PcapngWriter(str(path), big_endian=True) as w:
        eth, raw = w.add_interface(1, name="eth0"), w.add_interface(101, name="tun0", tsresol=6)
        w.write_packet(eth, 5 * 10**9, bytes(12) + b"\x08\x00" + ipv4)
        w.write_packet(raw, 7 * 10**9, ipv4)
        w.write_packet(raw, 6 * 10**9, ipv4[:28], wirelen=len(ipv4))  # cut after the UDP header
    s = summarise(str(path))
    assert s["linktypes"] == [{"linktype": 1, "name": "EN10MB", "packets": 1},
                              {"linktype": 101, "name": "RAW", "packets": 2}]
    assert [(i["name"], i["resolution"]) for i in s["format"]["sections"][0]["interfaces"]] == [
        ("eth0", "ns"), ("tun0", "us")]
    assert s["format"]["sections"][0]["byte_order"] == "big"
    assert s["time_span"]["first_ns"] == 5 * 10**9 and s["time_span"]["seconds"] == 2.0
    assert s["flows"] == {"total": 1, "by_protocol": {"udp": 1}} and s["truncated"] == 1
    assert s["malformed"] == {}


def test_trace_summary(capsys, tmp_path):
    path = tmp_path / "run.pcapng"
    with TraceWriter(str(path), TraceHeader("nat->fw", "stateful.commit:8")) as w:
        w.packet(TracePacket("ingress", 10, bytes(60), seq=0))
        w.event(TraceEvent("failure", 20, "nat#1"))
        w.event(TraceEvent("failover", 30, "nat#2"))
        w.packet(TracePacket("egress:wan", 40, bytes(60), "nat#2", "out", 0, 0))
        w.packet(TracePacket("egress:wan", 50, bytes(60), "nat#2", "out", 0, 1))
    code, out, _ = _run(capsys, "--json", str(path))
    s = json.loads(out)
    assert code == 0 and s["packets"] == 3
    assert s["events"] == {"failure": 1, "failover": 1}
    assert s["trace"] == {"version": 1, "chain": "nat->fw", "strategy": "stateful.commit:8",
                          "interfaces": {"ingress": 1, "egress:wan": 2}}
    code, out, _ = _run(capsys, str(path))
    assert "trace: version 1, chain 'nat->fw'" in out and "events: 2 — failure 1, failover 1" in out
