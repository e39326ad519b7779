"""verify/solver.py: a query that runs out of resources is tried once more as a copy in a fresh
context; its answer is the same formula's, a model found there is pinned onto the original solver,
and the resource limit stays the one the solver was given. Z3's accessors called unchecked give
the verdicts of the checked ones."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import z3

from nfproof.verify import solver as smt


def query(budget, rlimit=None):
    x, y = z3.BitVecs("x y", 16)
    a = z3.Array("a", z3.BitVecSort(16), z3.BitVecSort(16))
    s = smt.new_solver(budget, rlimit)
    s.add(z3.Select(z3.Store(a, x, y), x) == y + 1 - 1, x * 3 == 21)
    return s, x, y


def test_a_model_found_in_the_fresh_copy_is_the_original_solvers():
    budget = smt.Budget()
    s, x, y = query(budget)
    goal = z3.UGT(y, 100)
    assert smt._fresh_try(s, budget, (goal,)) == z3.sat
    m = s.model()
    assert z3.is_true(m.eval(goal, True)) and (m.eval(x, True).as_long() * 3) % (1 << 16) == 21


def test_unsat_in_the_fresh_copy_is_unsat():
    budget = smt.Budget()
    s, x, y = query(budget)
    assert smt._fresh_try(s, budget, (x == 5,)) == z3.unsat  # 5 * 3 != 21


def test_the_copy_keeps_the_resource_limit():
    budget = smt.Budget(rlimit=1)
    s, x, y = query(budget)
    assert smt._fresh_try(s, budget, ()) == z3.unknown
    s, _, _ = query(budget)
    try:
        smt.check(s, budget)
    except smt.BudgetExhausted as e:
        assert "resource limit" in str(e)
    else:
        raise AssertionError("an rlimit of 1 cannot decide the query")


@pytest.mark.parametrize("args", [["nat", "--strategy", "all", "--bound", "3"],
                                  ["firewall>nat>lb", "--strategy", "stateful.commit:4", "--log-choices", "--bound", "3"]])
def test_unchecked_accessors_give_the_checked_verdicts(args):
    """Z3's accessors called without the error check (the default) and with it (NFPROOF_Z3_CHECKED=1):
    the same verdicts and counterexample lengths."""
    def verdicts(env):
        r = subprocess.run([sys.executable, "-m", "nfproof", "verify", *args, "--jobs", "1", "--json"],
                           capture_output=True, text=True, timeout=600, env={**os.environ, **env})
        assert r.returncode in (0, 1), r.stderr
        data = json.loads(r.stdout)
        return [(d["strategy"], d["verdict"], d.get("counterexample") and len(d["counterexample"]["inputs"]))
                for d in (data if isinstance(data, list) else [data])]
    unchecked = verdicts({})
    assert unchecked == verdicts({"NFPROOF_Z3_CHECKED": "1"})
    assert {v for _, v, _ in unchecked} <= {"proved", "counterexample"}
