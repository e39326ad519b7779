"""verify/symbolic.py `fold`: where the symbolic engine's branches ask it instead of z3.simplify, it
must be exact when it answers (a wrong constant would drop a feasible path: a false proof). Random
terms mixing constants, variables, arrays with stores and if-then-else: whenever fold gives a
value, Z3 proves the term equal to it."""
from __future__ import annotations

import random

import z3

from nfproof.verify.symbolic import fold

W = 4


def _bv(rng, depth, xs):
    if depth == 0 or rng.random() < 0.25:
        return z3.BitVecVal(rng.randrange(16), W) if rng.random() < 0.7 else rng.choice(xs)
    a, b = _bv(rng, depth - 1, xs), _bv(rng, depth - 1, xs)
    op = rng.randrange(9)
    if op == 0:
        return a + b
    if op == 1:
        return a & b
    if op == 2:
        return z3.If(_bool(rng, depth - 1, xs), a, b)
    if op == 3:
        return z3.Extract(W - 1, 0, z3.ZeroExt(2, a) + z3.SignExt(2, b))
    if op == 4:
        return z3.Concat(z3.Extract(1, 0, a), z3.Extract(3, 2, b))
    if op == 5:
        return z3.Select(_array(rng, depth - 1, xs), a)
    if op == 6:
        return a - b
    if op == 7:
        return a ^ b
    return -a


def _array(rng, depth, xs):
    arr = z3.K(z3.BitVecSort(W), z3.BitVecVal(rng.randrange(16), W))
    for _ in range(rng.randrange(3)):
        arr = z3.Store(arr, _bv(rng, max(depth - 1, 0), xs), _bv(rng, max(depth - 1, 0), xs))
    if rng.random() < 0.3:
        other = z3.Store(arr, z3.BitVecVal(rng.randrange(16), W), _bv(rng, 0, xs))
        arr = z3.If(_bool(rng, max(depth - 1, 0), xs), arr, other)
    return arr


def _bool(rng, depth, xs):
    if depth == 0 or rng.random() < 0.2:
        return z3.BoolVal(rng.random() < 0.5) if rng.random() < 0.5 else rng.choice(xs) == rng.randrange(16)
    a, b = _bv(rng, depth - 1, xs), _bv(rng, depth - 1, xs)
    op = rng.randrange(7)
    if op == 0:
        return a == b
    if op == 1:
        return z3.ULT(a, b)
    if op == 2:
        return a < b
    if op == 3:
        x = _bool(rng, depth - 1, xs)
        return z3.And(x, _bool(rng, depth - 1, xs), z3.Not(x)) if rng.random() < 0.3 else z3.And(x, _bool(rng, depth - 1, xs))
    if op == 4:
        return z3.Or(_bool(rng, depth - 1, xs), z3.Not(_bool(rng, depth - 1, xs)))
    if op == 5:
        return z3.Not(a != b)
    return z3.UGE(a, b)


def test_fold_is_exact_where_it_answers():
    rng = random.Random(11)
    xs = [z3.BitVec(f"x{i}", W) for i in range(3)]
    answered = unanswered = 0
    for _ in range(1500):
        t = _bool(rng, 4, xs) if rng.random() < 0.5 else _bv(rng, 4, xs)
        v = fold(t)
        if v is None:
            unanswered += 1
            continue
        answered += 1
        expected = z3.BoolVal(v) if z3.is_bool(t) else z3.BitVecVal(v, t.size())
        s = z3.Solver()
        s.add(t != expected)
        assert s.check() == z3.unsat, (t, v)
    assert answered > 200 and unanswered > 200  # both kinds of term occur


def test_fold_answers_on_ground_terms():
    """Terms without variables always fold (a concrete packet on the symbolic engine takes one path)."""
    rng = random.Random(5)
    for _ in range(300):
        t = _bool(rng, 3, [z3.BitVecVal(rng.randrange(16), W)])
        assert fold(t) == z3.is_true(z3.simplify(t)), t
