"""`nfproof verify` as a user runs it: exit codes, messages, JSON."""
import json
import subprocess
import sys

import pytest

from nfproof.cmd_verify import ALL_STRATEGIES


def nfproof(*args):
    return subprocess.run([sys.executable, "-m", "nfproof", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("strategy,bound,code", [
    ("stateful.async", 4, 1), ("stateful.sync", 4, 0), ("stateful.commit:4", 4, 0),
    ("none", 4, 1), ("stateful.checkpoint:3", 5, 1),
])
def test_acceptance_exit_codes(strategy, bound, code):
    r = nfproof("verify", "nat", "--strategy", strategy, "--bound", str(bound))
    assert r.returncode == code, r.stdout + r.stderr
    assert r.stdout.startswith("error: " if code else "proved: ")


def test_counterexample_story_names_crash_choices_and_offending_output():
    out = nfproof("verify", "nat", "--strategy", "stateful.async", "--bound", "4").stdout
    for phrase in ("inputs (in arrival order):", "primary applies input 1", "crashes", "standby takes over",
                   "chooses", "why:", "every failure-free execution", "reproduce (Python):"):
        assert phrase in out
    assert "<-- no failure-free execution produces this" in out or "(nothing more:" in out
    assert "0x" not in out  # packets are shown field by field, never as hex


def test_reproduction_snippet_runs_and_shows_the_bug():
    data = json.loads(nfproof("verify", "nat", "--strategy", "none", "--bound", "3", "--json").stdout)
    snippet = data["counterexample"]["reproduce"]
    r = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "NOT explained" in r.stdout


def test_json_result():
    data = json.loads(nfproof("verify", "nat", "--strategy", "stateful.sync", "--bound", "3", "--json").stdout)
    assert data["verdict"] == "proved" and data["bound"] == 3 and data["strategy"] == "stateful.sync"
    cex = json.loads(nfproof("verify", "nat", "--strategy", "stateful.async", "--bound", "3", "--json").stdout)
    assert cex["verdict"] == "counterexample"
    assert len(cex["counterexample"]["inputs"]) == 2 and cex["counterexample"]["unexplained_output"] >= 1


@pytest.mark.parametrize("args,needle", [
    (["nut", "--strategy", "none"], "bundled: csfq-core, csfq-edge, firewall, lb, lb-hash, monitor, nat, ratelimit"),
    (["nat", "--strategy", "stateful.bogus"], "valid: none, stateful.checkpoint:N"),
    (["nat", "--strategy", "stateful.commit"], "positive integer"),
    (["nat", "--strategy", "stateful.commit:0"], "positive integer"),
    (["nat", "--strategy", "none", "--bound", "x"], "--bound"),
    (["nat", "--strategy", "none", "--bound", "-3"], "--bound"),
    (["nat", "--strategy", "none", "--timeout", "0"], "--timeout"),
])
def test_usage_errors_are_one_line_exit_2(args, needle):
    r = nfproof("verify", *args)
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr


def test_budget_hit_is_unknown_exit_3():
    r = nfproof("verify", "nat", "--strategy", "stateful.sync", "--bound", "16", "--timeout", "0.01")
    assert r.returncode == 3 and r.stdout.startswith("unknown:")


def test_all_strategies_table():
    r = nfproof("verify", "nat", "--strategy", "all", "--bound", "4")
    assert r.returncode == 1
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[1:]}
    assert rows == {"none": "counterexample", "stateful.checkpoint:4": "counterexample",
                    "stateful.async": "counterexample", "stateful.sync": "proved", "stateful.commit:4": "proved",
                    "stateless.sync": "proved", "stateless.async": "counterexample",
                    "stateless.batch:4": "counterexample", "stateless.cache": "proved", "stateless.commit:4": "proved"}


def test_html_timeline_of_a_counterexample(tmp_path):
    out = tmp_path / "cex.html"
    r = nfproof("verify", "nat", "--strategy", "none", "--bound", "3", "--html", str(out))
    assert r.returncode == 1
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page  # self-contained
    assert page.count("class='bad'") == 1 or "the egress let out only" in page  # a wrong output, or a missing one
    assert "class='crash'" in page
    assert "<th>primary</th>" in page and "<th>standby</th>" in page and "reproduce(" in page


def test_html_unwritable_path_is_a_usage_error():
    r = nfproof("verify", "nat", "--strategy", "none", "--bound", "2", "--html", "/nonexistent/dir/cex.html")
    assert r.returncode == 2 and "cannot write" in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["--timeout", "inf"], "finite"), (["--timeout", "nan"], "finite"), (["--bound", "３"], "--bound"),
])
def test_non_finite_budgets_and_non_ascii_bounds_are_rejected(args, needle):
    r = nfproof("verify", "nat", "--strategy", "none", *args)
    assert r.returncode == 2 and needle in r.stderr


def test_html_on_a_proof_says_nothing_was_written(tmp_path):
    out = tmp_path / "cex.html"
    r = nfproof("verify", "nat", "--strategy", "stateful.sync", "--bound", "2", "--html", str(out))
    assert r.returncode == 0 and not out.exists() and "not written" in r.stderr


def test_unbounded_flag():
    r = nfproof("verify", "nat", "--strategy", "stateful.commit:4", "--bound", "3", "--unbounded")
    assert r.returncode == 0 and "of any length" in r.stdout
    data = json.loads(nfproof("verify", "nat", "--strategy", "stateful.sync", "--bound", "2", "--unbounded", "--json").stdout)
    assert data["unbounded"] is True and data["stats"]["induction"].startswith("induction on lockstep")


def test_params_reach_the_members_of_a_chain():
    """--param NF.NAME=VALUE sets that NF's parameter in every chain member of that NF: a NAT pool of
    one port makes the second flow through firewall>nat exhaust it, which the reproduction shows."""
    out = nfproof("verify", "firewall>nat", "--param", "nat.ports=1", "--strategy", "none", "--bound", "2")
    assert out.returncode == 1, out.stderr
    assert "reproduce('firewall=firewall>nat=nat[ports=1]'" in out.stdout
    bad = nfproof("verify", "firewall>nat", "--param", "lb.backends=2", "--strategy", "none", "--bound", "2")
    assert bad.returncode == 2 and "not in the chain" in bad.stderr


def test_equivalence_and_protocol_switches():
    """The NAT under sync without input replay loses the inputs in flight at the crash: a
    violation under strict, proved under loss-at-failover. A deterministic monitor under async
    without duplicate suppression lets replayed outputs out again: a violation unless duplicates
    are allowed. Each counterexample's snippet re-runs it under the same protocol and relation."""
    strict = nfproof("verify", "nat", "--strategy", "stateful.sync", "--no-replay-input", "--bound", "3", "--json")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    data = json.loads(strict.stdout)
    assert data["strategy"] == "stateful.sync --no-replay-input" and data["stats"]["equivalence"] == "strict"
    assert any("it is lost (--no-replay-input)" in e["text"] for e in data["counterexample"]["events"])
    r = subprocess.run([sys.executable, "-c", data["counterexample"]["reproduce"]], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "NOT explained" in r.stdout, r.stdout + r.stderr
    lossy = nfproof("verify", "nat", "--strategy", "stateful.sync", "--no-replay-input", "--bound", "3",
                    "--equivalence", "loss-at-failover")
    assert lossy.returncode == 0 and "keeps loss-at-failover output equivalence" in lossy.stdout, lossy.stdout
    lost_state = nfproof("verify", "nat", "--strategy", "stateful.async", "--no-replay-input", "--bound", "3",
                         "--equivalence", "loss-at-failover")
    assert lost_state.returncode == 1 and "compared under loss-at-failover: a failure-free execution may have lost" \
        in lost_state.stdout, lost_state.stdout
    dups = nfproof("verify", "monitor", "--strategy", "stateful.async", "--no-dedup", "--bound", "3")
    assert dups.returncode == 1, dups.stdout
    allowed = nfproof("verify", "monitor", "--strategy", "stateful.async", "--no-dedup", "--allow-duplicates",
                      "--bound", "3")
    assert allowed.returncode == 0 and "strict (duplicates allowed)" in allowed.stdout, allowed.stdout
    bad = nfproof("verify", "nat", "--strategy", "stateful.sync", "--no-dedup", "--property", "all")
    assert bad.returncode == 2 and "--property checks the model's own property over the default protocol" in bad.stderr


def test_the_equivalences_are_the_ones_defined_once():
    from nfproof.cmd_verify import EQUIVALENCES
    from nfproof.verify.equivalence import RELATIONS
    assert EQUIVALENCES == RELATIONS


@pytest.mark.parametrize("strategy,message", [
    ("nat=none", "no strategy for firewall, lb; name every instance or add one strategy for the others"),
    ("nope=none,stateful.sync", "'nope' is no instance of firewall>nat>lb; its instances: firewall, nat, lb"),
    ("nat=none,nat=stateful.sync,none", "nat is given two strategies"),
    ("none,stateful.sync,nat=none", "two strategies for the instances not named"),
    ("stateful.sync,none", "one strategy, or INSTANCE=STRATEGY"),
    ("stateful.sync,nat=bogus", "unknown strategy 'bogus'")])
def test_per_instance_strategy_errors(strategy, message):
    r = nfproof("verify", "firewall>nat>lb", "--strategy", strategy, "--bound", "2")
    assert r.returncode == 2 and message in r.stderr, r.stderr
    r = nfproof("verify", "nat", "--strategy", "nat=none")
    assert r.returncode == 2 and "one strategy per instance is for chains of NFs" in r.stderr


def test_the_default_strategy_is_all_and_input_errors_come_first():
    r = nfproof("verify", "firewall>nope>lb")
    assert r.returncode == 2 and "unknown NF 'nope'" in r.stderr and "firewall, lb, lb-hash" in r.stderr
    r = nfproof("verify", "nat", "--bound", "2")
    assert r.returncode == 1 and all(s in r.stdout for s in ALL_STRATEGIES), r.stdout


@pytest.mark.parametrize("args,code", [
    (["firewall>nat>lb", "--strategy", "stateful.sync,lb=none", "--bound", "2"], 1),
    (["nat", "--strategy", "stateful.sync", "--bound", "2"], 0),
    (["lb", "--strategy", "stateful.sync", "--property", "sticky-backend", "--bound", "2"], 0)])
def test_progress_on_a_terminal(args, code):
    """On a terminal, stderr shows a progress line per length (and the verdict is unchanged)."""
    import os
    import pty
    master, slave = pty.openpty()
    r = subprocess.run([sys.executable, "-m", "nfproof", "verify", *args], stdout=subprocess.PIPE, stderr=slave,
                       text=True, timeout=120)
    os.close(slave)
    err = os.read(master, 1 << 16).decode(errors="replace")
    os.close(master)
    assert r.returncode == code, err
    assert "2/2 packets checked" in err and "Traceback" not in err, err
