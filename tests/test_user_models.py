"""User models (issue 11 item 6, issue 10 item 6): `nfproof verify path/to/mynf.py:MyNF` and
`pkg.module:Name`, clear one-line errors, `model_ref` for reproduction snippets that run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from nfproof.models import NFS, Nat, UnknownModel, lookup, model_ref
from nfproof.models.api import NF, ModelError, Packet, ParamError
from nfproof.models.strategy import Strategy
from nfproof.verify.failover import verify_failover
from nfproof.verify.report import reproduction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "models", "port_knock.py")

COUNTER_NF = '''
from nfproof.models.api import NF, Counter, Packet, Param


class Numbered(NF):
    """Theory of operation: stamps each packet with a running count (in sport), so a lost
    counter shows. Traffic outside the model passes."""

    name = "numbered"
    gates = ("wan", "lan")
    start = Param(100, "first number", high=60000)
    seq = Counter()

    def handle(self, pkt: Packet, ctx) -> None:
        self.seq += 1
        ctx.emit(pkt.rewrite(sport=self.start + self.seq), "lan" if pkt.inbound else "wan")


class NotAModel:
    pass
'''


def nfproof(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "nfproof", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "mynf.py"
    path.write_text(COUNTER_NF)
    return path


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    pkg = tmp_path / "pkgroot" / "mynfs"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "counting.py").write_text(COUNTER_NF)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgroot"))
    return tmp_path / "pkgroot"


def test_lookup_by_file_module_and_name(user_file, user_package):
    by_file = lookup(f"{user_file}:Numbered")
    assert issubclass(by_file, NF) and by_file.name == "numbered" and by_file.start == 100
    assert lookup(f"{user_file}:Numbered") is by_file  # loaded once
    by_module = lookup("mynfs.counting:Numbered")
    assert by_module.__module__ == "mynfs.counting"
    assert lookup("nat") is Nat and lookup("nat[ports=2, base=3000]").param_values()["ports"] == 2
    assert lookup(f"{user_file}:Numbered[start=7]").start == 7


@pytest.mark.parametrize("ref,needle", [
    ("nut", "unknown NF 'nut'; bundled: csfq-core, csfq-edge, firewall, lb, lb-hash, monitor, nat, ratelimit"),
    ("nowhere/mynf.py:X", "model file nowhere/mynf.py not found"),
    ("{file}:Nope", "has no class 'Nope'; NF classes there: Numbered"),
    ("{file}:NotAModel", "is not an NF model (a subclass of nfproof.models.api.NF)"),
    ("no_such_pkg.mod:X", "no module 'no_such_pkg.mod'"),
    ("mynf.py", "unknown NF 'mynf.py'"),
    ("nat[ports]", "write NAME=VALUE"),
])
def test_lookup_errors_are_one_line(ref, needle, user_file):
    with pytest.raises(UnknownModel) as e:
        lookup(ref.format(file=user_file))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_broken_user_file_names_its_file_and_line(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("from nfproof.models.api import NF\n\nclass B(NF):\n    name = 'b'\n    x = 1 +\n")
    with pytest.raises(UnknownModel, match=f"cannot load .*{bad}:5: SyntaxError"):
        lookup(f"{bad}:B")
    failing = tmp_path / "failing.py"
    failing.write_text("import math\n\nVALUE = math.sqrt(-1)\n")
    with pytest.raises(UnknownModel, match=f"{failing}:3: ValueError"):
        lookup(f"{failing}:X")
    with pytest.raises(ParamError, match=r"badparam.py:\d+: numbered.start=70000 is out of range"):
        bad_param = tmp_path / "badparam.py"
        bad_param.write_text(COUNTER_NF + "\n\nclass Big(Numbered):\n    start = 70000\n")
        lookup(f"{bad_param}:Big")


def test_model_ref_round_trips(user_file, user_package):
    assert model_ref(Nat) == "nat" and all(model_ref(cls) == name for name, cls in NFS.items())
    assert model_ref(Nat.configure({"ports": "2"})) == "nat[ports=2]"
    by_file = lookup(f"{user_file}:Numbered")
    assert model_ref(by_file) == f"{user_file}:Numbered"
    assert model_ref(by_file.configure({"start": 5})) == f"{user_file}:Numbered[start=5]"
    assert lookup(model_ref(by_file.configure({"start": 5}))).start == 5
    assert model_ref(lookup("mynfs.counting:Numbered")) == "mynfs.counting:Numbered"

    class Local(Nat):  # defined here: not loadable, and must not pass for the bundled nat
        pass
    assert model_ref(Local) != "nat"
    with pytest.raises(UnknownModel):
        lookup(model_ref(Local))


def test_cli_verifies_a_user_model_and_its_snippet_reproduces_the_bug(user_file, tmp_path):
    ok = nfproof("verify", f"{user_file}:Numbered", "--strategy", "stateful.sync", "--bound", "3")
    assert ok.returncode == 0 and "proved: numbered under stateful.sync" in ok.stdout, ok.stdout + ok.stderr
    r = nfproof("verify", f"{user_file}:Numbered", "--strategy", "none", "--bound", "3", "--json",
                "--param", "numbered.start=500")
    assert r.returncode == 1, r.stdout + r.stderr
    snippet = json.loads(r.stdout)["counterexample"]["reproduce"]
    assert f"{user_file}:Numbered[start=500]" in snippet
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120, cwd=elsewhere)
    assert run.returncode == 0, run.stderr
    assert "NOT explained" in run.stdout
    assert ":501" in run.stdout  # the configured start reached the replay


def test_cli_module_reference_and_errors(user_package):
    env = {**os.environ, "PYTHONPATH": str(user_package) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = nfproof("verify", "mynfs.counting:Numbered", "--strategy", "stateful.commit:2", "--bound", "3", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    for ref, needle in (("mynfs.counting:Nope", "has no class 'Nope'"), ("nowhere.py:X", "not found"),
                        ("nut", "bundled: csfq-core")):
        r = nfproof("verify", ref, "--strategy", "none", env=env)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_the_documented_example_works_from_the_repository_root():
    r = nfproof("verify", "examples/models/port_knock.py:PortKnock", "--strategy", "stateful.sync", "--bound", "4")
    assert r.returncode == 0 and "proved: port-knock" in r.stdout, r.stdout + r.stderr
    r = nfproof("verify", "examples/models/port_knock.py:PortKnock", "--strategy", "none", "--bound", "4")
    assert r.returncode == 1 and "port-knock under none" in r.stdout
    knock = lookup(f"{EXAMPLE}:PortKnock")
    assert knock.knock == 1234 and "Theory of operation" in knock.__doc__
    result = verify_failover(knock.configure({"knock": 7000}), Strategy.parse("none"), 2)
    assert result.verdict == "counterexample" and "7000" in reproduction(result)


def test_a_subclass_of_a_configured_model_is_not_mistaken_for_it():
    configured = Nat.configure({"ports": 2})

    class Derived(configured):
        def handle(self, pkt, ctx):
            ctx.drop("everything")
    assert model_ref(configured) == "nat[ports=2]" and not model_ref(Derived).startswith("nat")
    assert Derived.ports == 2 and Derived.configure({"base": 7}).ports == 2


def test_lookup_builds_a_linear_chain_of_references(user_file):
    chain = lookup(f"firewall>nat[ports=2]>{user_file}:Numbered")
    assert chain.name.startswith("firewall>nat[ports=2]>") and issubclass(chain, NF)

    class Stated(chain):
        model_reference = "firewall>nat[ports=2]>lb"
    assert model_ref(Stated) == "firewall>nat[ports=2]>lb"
    with pytest.raises(Exception, match="unknown NF 'nope'; bundled: csfq-core"):
        lookup("firewall>nope>lb")


def test_a_type_test_on_a_value_is_a_one_line_error_at_its_line(tmp_path):
    """`isinstance(now, int)` is True concretely and False on a term: the interpreters would
    disagree, so the model is refused where it asks (exit 2), on either interpreter."""
    path = tmp_path / "typed.py"
    path.write_text("from nfproof.models.api import NF\n\n\nclass Typed(NF):\n    name, gates = 'typed', ('out',)\n\n"
                    "    def handle(self, pkt, ctx):\n        if isinstance(ctx.now(), int):\n"
                    "            ctx.emit(pkt, 'out')\n")
    r = nfproof("verify", f"{path}:Typed", "--strategy", "stateful.sync", "--bound", "1")
    assert r.returncode == 2, r.stdout + r.stderr
    message = [line for line in r.stderr.splitlines() if "isinstance()" in line]
    assert len(message) == 1 and f"{path}:8:" in message[0], r.stderr
    from nfproof.models.concrete import initial_state, seeded, step
    nf = lookup(f"{path}:Typed")
    with pytest.raises(ModelError, match="isinstance"):
        step(nf, initial_state(nf), Packet(6, 1, 2, 3, 4, 2), seeded(0), lambda: 0)
    capture = os.path.join(ROOT, "tests", "data", "E02_http_49flows.pcap")
    for strategy in ("stateful.sync", "stateless.sync"):  # the worker processes' run: refused before they start
        r = nfproof("run", f"{path}:Typed", "--pcap", capture, "--strategy", strategy, "-o", tmp_path / "t.pcapng")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [f"nfproof run: model error: {path}:8: " + message[0].split(":8: ")[1]]


def test_the_introspection_check_reads_a_function_once(monkeypatch):
    """A configured subclass shares its base's functions: they are not read again (a worker checks
    its model before its first packet, and a replacement reading sources under load went silent).
    What was refused is not remembered as clean."""
    import inspect

    from nfproof.models import api
    reads = []
    real = inspect.getsourcelines
    monkeypatch.setattr(api.inspect, "getsourcelines", lambda code: reads.append(code) or real(code))
    base = lookup("nat")
    api.validate(base.configure({"ports": "7"}))
    reads.clear()
    api.validate(base.configure({"ports": "9"}))
    assert reads == []

    class Asks(NF):
        name, gates = "asks", ("out",)

        def handle(self, pkt, ctx):
            if isinstance(pkt.sport, int):
                ctx.emit(pkt, "out")
    for _ in range(2):
        with pytest.raises(ModelError, match="isinstance"):
            api.check_no_introspection(Asks)


def test_a_type_test_in_a_helper_the_handler_calls_is_found_too(tmp_path):
    path = tmp_path / "helped.py"
    path.write_text("from ipaddress import ip_address\nfrom nfproof.models.api import NF\n\n\ndef fresh(x):\n"
                    "    return id(x) % 2\n\n\ndef check(x):\n    return fresh(x)\n\n\nclass Helped(NF):\n"
                    "    name, gates = 'helped', ('out',)\n    first = int(ip_address('10.0.0.1'))  # a library call: not read\n\n"
                    "    def handle(self, pkt, ctx):\n        if check(pkt.sport):\n            ctx.emit(pkt, 'out')\n")
    nf = lookup(f"{path}:Helped")
    with pytest.raises(ModelError, match=rf"{path}:6: `id\(\)` of a value"):
        verify_failover(nf, Strategy.parse("stateful.sync"), 1)


@pytest.mark.parametrize("call", ["hasattr(now, 'path')", "getattr(now, 'path', None) is None", "callable(now)"])
def test_asking_a_value_for_its_attributes_is_refused_too(tmp_path, call):
    """A term has attributes an int has not: `hasattr(now, "path")` would make the symbolic run
    always take one branch (found in review: a clock compared with a constant passed the time-shift
    test that way)."""
    path = tmp_path / "asks.py"
    path.write_text("from nfproof.models.api import NF\n\n\nclass Asks(NF):\n    name, gates = 'asks', ('out',)\n\n"
                    f"    def handle(self, pkt, ctx):\n        now = ctx.now()\n        if {call} or now >= 5:\n"
                    "            ctx.emit(pkt, 'out')\n")
    from nfproof.models.api import check_no_introspection
    with pytest.raises(ModelError, match=rf"{path}:9: `{call.split('(')[0]}\(\)` of a value"):
        check_no_introspection(lookup(f"{path}:Asks"))
