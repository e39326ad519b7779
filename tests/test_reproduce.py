"""Issue 9, executable counterexamples: `nfproof verify --reproduce DIR` -> `nfproof run --schedule`
(real processes: the primary kills itself at the crash point, the standby or a fresh instance
takes over) -> `nfproof replay`, which must report a violation: the counterexample happens on
the real runtime. The full sweep (every bundled model x every strategy with a counterexample at
bound <= 6) is slow-marked; the default suite runs one model per paradigm."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nfproof.cli import main
from nfproof.cmd_verify import ALL_STRATEGIES
from nfproof.models import NFS
from nfproof.traces.reader import open_capture
from nfproof.traces.trace import read_trace
from nfproof.verify.frames import frame_view



def cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def reproduce_and_replay(capsys, tmp_path, model: str, strategy: str, bound: int = 6, params=()):
    """verify --reproduce, run --schedule, replay: the three exit codes and the folder. verify runs
    in a fresh process, as a user runs it: which counterexample Z3 returns depends on the terms the
    process made before (Z3 orders operands by term id), and the suite makes many."""
    folder = tmp_path / strategy.replace(":", "-")
    extra = [a for p in params for a in ("--param", p)]
    verify = subprocess.run([sys.executable, "-m", "nfproof", "verify", model, "--strategy", strategy, "--bound",
                             str(bound), *extra, "--reproduce", str(folder)], capture_output=True, text=True, timeout=300)
    verified = verify.returncode
    if verified != 1:
        return verified, None, (None, verify.stderr), folder
    schedule = json.loads((folder / "schedule.json").read_text())
    trace = tmp_path / f"{folder.name}.pcapng"
    ran, out, err = cli(capsys, "run", model, "--pcap", folder / "inputs.pcapng", "--schedule",
                        folder / "schedule.json", "-o", trace)
    assert ran == 0, err
    stall = ["--max-stall", schedule["max_stall"]] if schedule.get("max_stall") is not None else []
    replayed, out, err = cli(capsys, "replay", trace, *stall)
    return verified, ran, (replayed, out), folder


@pytest.mark.parametrize("model,strategy", [("nat", "stateful.async"), ("nat", "none"), ("lb", "stateless.async"),
                                            ("firewall", "stateful.commit:4"), ("ratelimit", "stateful.checkpoint:4")])
def test_a_counterexample_happens_on_the_runtime(capsys, tmp_path, model, strategy):
    verified, ran, replayed, folder = reproduce_and_replay(capsys, tmp_path, model, strategy)
    assert verified == 1, f"nfproof verify {model} --strategy {strategy} --bound 6 exited {verified}: {replayed[1]}"
    replayed, out = replayed
    assert replayed == 1, out
    assert out.startswith("error:") and "not produced by any failure-free execution" in out or "emits" in out


@pytest.mark.parametrize("strategy", ["stateful.async", "none", "stateless.async"])
def test_a_chain_counterexample_happens_with_one_instance_crashing_alone(capsys, tmp_path, strategy):
    """A chain's counterexample (verified as one failing unit) is reproduced as the run of its
    inputs in which one instance crashes alone (verify/chain_crash.py), the way the runtime runs a
    chain: the schedule crashes that instance, by its own input numbers, and replay sees the
    violation."""
    verified, ran, replayed, folder = reproduce_and_replay(capsys, tmp_path, "firewall>nat>lb", strategy, bound=4)
    assert verified == 1, replayed[1]
    schedule = json.loads((folder / "schedule.json").read_text())
    assert schedule["chain"] == "firewall>nat>lb" and schedule["crash"]["instance"] == "nat"
    assert "nat crashes alone (firewall, lb keep running)" in (folder / "README.md").read_text()
    code, out = replayed
    assert code == 1 and out.startswith("error:"), out


@pytest.mark.parametrize("chain,strategy,instance", [("nat>lb", "stateful.sync,lb=none", "lb"),
                                                     ("firewall>nat>lb", "stateful.sync,nat=stateful.async", "nat")])
def test_a_per_instance_counterexample_happens_on_the_runtime(capsys, tmp_path, chain, strategy, instance):
    """One strategy per instance: the instance under the unsafe strategy crashes alone in the
    schedule (its inputs may be near the unit's counterexample, not the same), and replay sees the
    violation."""
    verified, ran, replayed, folder = reproduce_and_replay(capsys, tmp_path, chain, strategy, bound=2)
    assert verified == 1, replayed[1]
    schedule = json.loads((folder / "schedule.json").read_text())
    assert schedule["crash"]["instance"] == instance
    assert f"{instance} crashes alone" in (folder / "README.md").read_text()
    code, out = replayed
    assert code == 1 and out.startswith("error:"), out


def test_the_files(capsys, tmp_path):
    """inputs.pcapng: one frame per input whose view is the input, at its arrival, on the port of
    its side; schedule.json: the counterexample's crash and choices; the trace records one
    failover at the crash, from the schedule."""
    from nfproof.models import lookup
    from nfproof.models.strategy import Strategy
    from nfproof.verify.failover import verify_failover
    from nfproof.verify.report import story
    from nfproof.verify.reproduce import write
    result = verify_failover(lookup("nat"), Strategy.parse("stateful.async"), 4)
    folder = tmp_path / "cex"
    pcap, sched, readme = write(result, str(folder), "nat", "nat", [], story)
    code, out, err = cli(capsys, "run", "nat", "--pcap", pcap, "--schedule", sched, "-o", tmp_path / "t.pcapng")
    assert code == 0, err
    assert cli(capsys, "replay", tmp_path / "t.pcapng")[0] == 1
    run = result.counterexample.run
    with open_capture(folder / "inputs.pcapng") as r:
        records = list(r)
        names = [i.name for i in r.interfaces]
    assert len(records) == len(run.inputs)
    for rec, pkt in zip(records, run.inputs):
        view = frame_view(rec.linktype, rec.data, rec.wirelen, pkt.inbound)
        assert (view.proto, view.src, view.sport, view.dst, view.dport, view.flags) == \
               (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.flags)
        assert names[rec.interface] == ("ingress:outside" if pkt.inbound else "ingress:inside")
    schedule = json.loads((folder / "schedule.json").read_text())
    assert schedule["crash"] == {"instance": "nat", "applied": run.cut.applied, "released": run.cut.released,
                                 "protected": run.protected, "time_ns": None}
    assert schedule["choices"]["nat"]["primary"] == {str(i): v for i, v in run.primary_choices.items() if v}
    with read_trace(str(tmp_path / "t.pcapng")) as trace:
        failovers = [e for e in trace if getattr(e, "kind", None) == "failover"]
        assert len(failovers) == 1 and trace.header.fields["schedule"] == "schedule.json"
    assert "nfproof replay t.pcapng" in (folder / "README.md").read_text()


def test_a_safe_strategy_has_nothing_to_reproduce(capsys, tmp_path):
    verified, ran, replayed, folder = reproduce_and_replay(capsys, tmp_path, "nat", "stateful.sync", 3)
    assert verified == 0 and not folder.exists()


def test_schedule_errors_exit_2(capsys, tmp_path):
    verified, ran, replayed, folder = reproduce_and_replay(capsys, tmp_path, "nat", "none", 4)
    pcap, sched = folder / "inputs.pcapng", folder / "schedule.json"
    code, out, err = cli(capsys, "run", "firewall", "--pcap", pcap, "--schedule", sched)
    assert code == 2 and "is for the chain 'nat'" in err
    code, out, err = cli(capsys, "run", "nat", "--pcap", pcap, "--schedule", sched, "--fail", "nat@1")
    assert code == 2 and "drop --fail" in err
    code, out, err = cli(capsys, "run", "nat", "--pcap", pcap, "--schedule", sched, "--strategy", "stateful.sync")
    assert code == 2 and "differs from the schedule's" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, out, err = cli(capsys, "run", "nat", "--pcap", pcap, "--schedule", bad)
    assert code == 2 and "not JSON" in err
    doc = json.loads(sched.read_text())
    doc["crash"]["applied"] = 99
    doc["crash"]["released"] = doc["crash"]["protected"] = 0
    far = tmp_path / "far.json"
    far.write_text(json.dumps(doc))
    code, out, err = cli(capsys, "run", "nat", "--pcap", pcap, "--schedule", far)
    assert code == 2 and "but" in err and "has 2: is this the schedule's capture?" in err
    del doc["crash"]["instance"]
    far.write_text(json.dumps(doc))
    code, out, err = cli(capsys, "run", "nat", "--pcap", pcap, "--schedule", far)
    assert code == 2 and "`crash.instance` is missing" in err


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(NFS))
def test_every_counterexample_up_to_bound_6_happens_on_the_runtime(capsys, tmp_path, model):
    """Acceptance: every bundled model x every strategy whose proof gives a counterexample at bound
    <= 6: reproduce -> run --schedule -> replay exits 1."""
    reproduced = []
    for strategy in ALL_STRATEGIES:
        verified, ran, replayed, folder = reproduce_and_replay(capsys, tmp_path, model, strategy)
        assert verified in (0, 1), f"{model} {strategy}: verify exited {verified}"
        if verified == 1:
            assert replayed[0] == 1, f"{model} under {strategy}: replay of the reproduction: {replayed[1]}"
            reproduced.append(strategy)
    assert reproduced or model in ("lb-hash", "csfq-core")


@pytest.mark.slow
def test_every_chain_counterexample_with_one_instance_alone_happens_on_the_runtime(capsys, tmp_path):
    """firewall>nat>lb x every strategy at bound 4: each counterexample that a single-instance crash
    of its inputs shows is reproduced and replayed as a violation; the others are refused with the
    reason (they need the instances to fail together), never written wrong."""
    reproduced, refused = [], []
    for strategy in ALL_STRATEGIES:
        verified, ran, replayed, folder = reproduce_and_replay(capsys, tmp_path, "firewall>nat>lb", strategy, bound=4)
        if verified == 2:
            assert "needs the chain's instances to fail together" in replayed[1], replayed[1]
            refused.append(strategy)
            continue
        assert verified in (0, 1), f"{strategy}: verify exited {verified}"
        if verified == 1:
            assert replayed[0] == 1, f"under {strategy}: replay of the reproduction: {replayed[1]}"
            reproduced.append(strategy)
    assert {"none", "stateful.async", "stateless.async"} <= set(reproduced), (reproduced, refused)
