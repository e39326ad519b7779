"""Every capture in tests/data through every runtime path, by the real executor: the fast path,
the fallback, the generic executor (the models' own handlers) and the same with the handlers
compiled (models/compile.py on the fast path's batch loop) give the same outputs_sha256,
drops and output counts, for chains that make every bundled NF act (a 64k-port NAT, the
firewall's handshakes, the balancer's VIP, monitor alerts, CSFQ labels and drops)."""
from __future__ import annotations

import pytest

from captures import all_captures
from nfproof.cmd_run import build_chain
from nfproof.runtime import IMPLEMENTATION, generic, pure
from nfproof.runtime.executor import run
from nfproof.runtime.ports import CaptureSource, capture_inside
from nfproof.traces.errors import FormatError
from nfproof.traces.reader import open_capture

try:
    from nfproof.runtime import fast
    PATHS = {"fast": fast.Pipeline, "fallback": pure.Pipeline, "generic": generic.GenericPipeline}
    if IMPLEMENTATION == "fast":  # (not under NFPROOF_PUREPYTHON=1: the compiled path runs on the fast one's loop)
        PATHS["compiled"] = lambda *a: generic.compiled_pipeline(*a)[0]
except ImportError:  # not built: the two Python paths still agree
    PATHS = {"fallback": pure.Pipeline, "generic": generic.GenericPipeline}

CHAINS = [
    ("firewall>nat>lb", ["nat.ports=64512", "lb.vip=173.194.75.103"]),
    ("monitor>nat", ["nat.ports=64512", "monitor.threshold=4"]),
    ("ratelimit>csfq-edge>csfq-core", ["ratelimit.capacity=8", "csfq-core.fair=2"]),
]


def _whole(path) -> bool:
    """A capture read to its end without a fault and not empty (corrupt ones: tests/test_cli_run.py)."""
    try:
        with open_capture(path) as r:
            return sum(1 for _ in r) > 0
    except FormatError:
        return False


CAPTURES = [p for p in all_captures() if _whole(p)]


def _run(factory, path, text, params):
    chain = build_chain(text, params)
    inside = capture_inside(path)
    with CaptureSource(path) as source:
        return run(chain, source, factory(chain, 11, source.linktype, inside), batch=32, inside=inside)


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_every_path_gives_the_same_run(path):
    for text, params in CHAINS:
        runs = {name: _run(factory, path, text, params) for name, factory in PATHS.items()}
        reference = runs["generic"]
        assert reference.packets_in > 0
        for name, stats in runs.items():
            assert (stats.outputs_sha256, stats.packets_out, stats.dropped) == \
                (reference.outputs_sha256, reference.packets_out, reference.dropped), f"{name} on {text}"


def test_the_chains_act_on_the_captures():
    """Across the captures, every NF of the chains above does something observable (else the test
    above would compare pass-throughs)."""
    reasons, by_egress = set(), {}
    for path in CAPTURES:
        for text, params in CHAINS:
            stats = _run(PATHS["fallback"], path, text, params)
            reasons |= set(stats.dropped)
            for egress, n in stats.by_egress.items():
                by_egress[egress] = by_egress.get(egress, 0) + n
    assert by_egress["outside"] > 0 and by_egress["monitor.alert"] > 0 and by_egress["inside"] > 0, by_egress
    for expected in ("firewall: handshake out of order", "nat: no mapping", "nat: cannot write sport into the frame",
                     "ratelimit: over the rate", "csfq-core: over the fair share", "ipv4 fragment"):
        assert expected in reasons, f"no capture made {expected!r} happen: {sorted(reasons)}"
