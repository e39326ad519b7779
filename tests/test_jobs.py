"""Proofs side by side (verify/jobs.py, `nfproof verify --jobs N`): the same verdicts, stories and
JSON as one after the other; a proof no longer needed is killed; a worker's error reaches the user."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from nfproof.verify import jobs


def verify(*args):
    r = subprocess.run([sys.executable, "-m", "nfproof", "verify", *args], capture_output=True, text=True, timeout=600)
    return r.returncode, r.stdout, r.stderr


def essentials(data):
    """What a verification decides: verdicts, reasons, the length of a counterexample, each
    instance's verdict. Not a counterexample's values, nor what follows from them (whether one
    instance crashing alone shows the same inputs' violation) or the steps taken to find it: Z3
    may pick other values in another process, whose term ids follow its own history."""
    if isinstance(data, list):
        return [essentials(d) for d in data]
    cex = data.get("counterexample")
    return {"verdict": data["verdict"], "strategy": data["strategy"], "reason": data.get("reason"),
            "length": cex and len(cex["inputs"]),
            "instances": [(a["instance"], a["verdict"], a["reason"]) for a in data.get("instances", [])]}


@pytest.mark.parametrize("args", [
    ["firewall>nat>lb", "--strategy", "all", "--bound", "2"],         # units refuted: their instances' proofs killed
    ["firewall>nat>lb", "--strategy", "stateful.commit:4", "--log-choices", "--bound", "3"],  # proved: all four
    ["nat>lb", "--strategy", "stateful.sync,lb=none", "--bound", "2"],  # one strategy per instance
    ["nat", "--strategy", "all", "--bound", "3"],                       # one NF, ten strategies
])
def test_side_by_side_gives_the_sequential_answer(args):
    one, out1, err1 = verify(*args, "--jobs", "1", "--json")
    two, out2, err2 = verify(*args, "--jobs", "2", "--json")
    assert one == two and one in (0, 1, 3), (err1, err2)
    assert essentials(json.loads(out1)) == essentials(json.loads(out2))


def test_one_strategy_gives_the_same_story():
    args = ["firewall>nat>lb", "--strategy", "stateful.async", "--bound", "3"]
    one, out1, _ = verify(*args, "--jobs", "1")
    two, out2, _ = verify(*args, "--jobs", "2")
    assert one == two == 1 and "crashes" in out1
    strip = lambda text: [line for line in text.splitlines() if " s)" not in line and " s;" not in line]
    assert strip(out1) == strip(out2)


def test_a_model_error_in_a_worker_is_the_same_one_line_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from nfproof.models.api import NF\n\n\nclass Bad(NF):\n    name = 'bad'\n    gates = ('out',)\n\n"
                   "    def handle(self, pkt, ctx):\n        self.other = 1\n        ctx.emit(pkt, 'out')\n")
    answers = [verify(f"{bad}:Bad", "--bound", "2", "--jobs", j) for j in ("1", "2")]
    for code, out, err in answers:
        assert code == 2 and f"{bad}:9: `self.other = ...` keeps state in an undeclared attribute" in err, err
        assert "Traceback" not in err
    assert answers[0] == answers[1]


@dataclass
class Verdict:
    verdict: str


def slow(seconds, verdict="proved"):
    def call(progress):
        progress(1, 1)
        time.sleep(seconds)
        return Verdict(verdict)
    return call


class Shown:
    def __init__(self):
        self.lines = []

    def of(self, label):
        return lambda n, bound: None

    def side_by_side(self, done, running):
        self.lines.append((done, dict(running)))


def test_followers_of_a_refuted_unit_are_killed_and_dropped():
    shown = Shown()
    start = time.monotonic()
    results, followers = jobs.run([("u1", slow(1.5, "counterexample")), ("u2", slow(0.1))],
                                  [[("f1", slow(60))], [("f2", slow(0.1)), ("f3", slow(0.1))]], 2, shown)
    assert time.monotonic() - start < 20  # f1 (60 s) started once f2 and f3 were done and u1 running, then killed
    assert [r.verdict for r in results] == ["counterexample", "proved"]
    assert followers[0] is None and [f.verdict for f in followers[1]] == ["proved", "proved"]
    assert any(running.get("f1") == (1, 1) for _, running in shown.lines), shown.lines  # its progress was shown


def test_one_job_runs_in_this_process_in_order():
    order = []

    def call(name, verdict):
        def made(progress):
            order.append(name)
            return Verdict(verdict)
        return made
    results, followers = jobs.run([("a", call("a", "proved")), ("b", call("b", "unknown"))],
                                  [[("a1", call("a1", "proved"))], [("b1", call("b1", "proved"))]], 1, Shown())
    assert order == ["a", "b", "a1"] and followers == [[Verdict("proved")], None]
