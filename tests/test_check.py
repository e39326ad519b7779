"""`nfproof check` (the CI gate of [tool.nfproof]), its verdict cache, JUnit/JSON reports and the
pytest plugin, on the sample project of examples/ci/sample (five checks, one model of its own)."""
import importlib.metadata
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

pytest_plugins = ["pytester"]

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "ci", "sample")
MODEL = os.path.join("models", "balancer.py")
BUGGY = "backend = self.first + self.flows % self.backends"  # the sample's seeded bug
FIXED = "backend = self.first + flow_hash(pkt.flow, self.backends)"
DATA = os.path.join(os.path.dirname(__file__), "data")
REPLAY = importlib.util.find_spec("nfproof.cmd_replay") is not None  # nfproof replay is installed
CHECKS = ["nat-sync", "nat-async-loses-port", "nat-async-logged", "balancer-none", "lb-sticky"]


def nfproof(cwd, *args):
    return subprocess.run([sys.executable, "-m", "nfproof", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def replace_line(path, old, new):
    with open(path) as f:
        text = f.read()
    assert text.count(old) == 1, f"{old!r} not once in {path}"
    with open(path, "w") as f:
        f.write(text.replace(old, new))


@pytest.fixture
def project(tmp_path):
    """The sample project with its seeded bug fixed: every check has its expected verdict."""
    root = tmp_path / "sample"
    shutil.copytree(SAMPLE, root, ignore=shutil.ignore_patterns(".nfproof-cache"))
    replace_line(root / MODEL, BUGGY, FIXED)
    return root


def junit_cases(path):
    return {case.get("name"): case for case in ET.parse(path).getroot().iter("testcase")}


def test_passes_then_a_one_line_model_change_fails_naming_the_check_with_its_story(project):
    r = nfproof(project, "check", "--junit", "report.xml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5 check(s): 5 passed, 0 failed, 0 unknown, 0 error(s)" in r.stdout
    progress = r.stderr.strip().splitlines()
    assert len(progress) == 5 and all(line.startswith(f"[{k}/5] PASS    {name}: ") and line.endswith(" s")
                                      for k, (line, name) in enumerate(zip(progress, CHECKS), 1))
    cases = junit_cases(project / "report.xml")
    assert list(cases) == CHECKS and not any(c.find("failure") is not None for c in cases.values())

    replace_line(project / MODEL, FIXED, BUGGY)  # one line: the backend round robin from a counter
    r = nfproof(project, "check", "--junit", "report.xml")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "5 check(s): 4 passed, 1 failed" in r.stdout
    assert "[4/5] FAIL    balancer-none: counterexample (expected proved)" in r.stderr
    # only the changed model was verified again; every other verdict came from the cache
    assert [line.endswith("(cached)") for line in r.stderr.strip().splitlines()] == [True, True, True, False, True]

    cases = junit_cases(project / "report.xml")
    failures = {name: c.find("failure") for name, c in cases.items() if c.find("failure") is not None}
    assert list(failures) == ["balancer-none"]
    failure = failures["balancer-none"]
    assert failure.get("message").startswith("expected proved, got counterexample")
    # the failure's text is the story exactly as `nfproof verify` prints it
    verify = nfproof(project, "verify", "models/balancer.py:Balancer", "--strategy", "none", "--bound", "2")
    assert verify.returncode == 1
    assert verify.stdout.strip() in failure.text
    assert "<-- no failure-free execution produces this" in failure.text and "standby takes over" in failure.text
    assert verify.stdout.strip() in r.stdout  # and the table is followed by the same story


def test_unchanged_checks_come_from_the_cache_in_under_a_second(project):
    assert nfproof(project, "check").returncode == 0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = nfproof(project, "check")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "7 verdict(s) from the cache" in r.stdout  # 5 checks, 7 verifier runs (two have two strategies)
    assert cpu < 1.0, f"the cached run took {cpu:.2f} s CPU"

    r = nfproof(project, "check", "--no-cache")
    assert r.returncode == 0 and "from the cache" not in r.stdout and "(cached)" not in r.stderr

    elsewhere = project.parent / "ci-cache"
    r = nfproof(project, "check", "--cache-dir", str(elsewhere))
    assert r.returncode == 0 and "0 verdict(s) from the cache" in r.stdout
    assert len(list(elsewhere.glob("*.json"))) == 7 and (elsewhere / ".gitignore").is_file()


def test_the_expectation_is_not_part_of_the_cache_key(project):
    assert nfproof(project, "check").returncode == 0
    replace_line(project / "pyproject.toml", 'expect = "counterexample"', 'expect = "proved"')
    r = nfproof(project, "check", "--junit", "report.xml")
    assert r.returncode == 1 and "7 verdict(s) from the cache" in r.stdout
    failure = junit_cases(project / "report.xml")["nat-async-loses-port"].find("failure")
    assert "expected proved, got counterexample" in failure.text and "counterexample: nat under stateful.async" in failure.text


def test_a_counterexample_where_a_proof_was_expected_the_other_way_round(project):
    replace_line(project / "pyproject.toml", 'strategy = "stateful.sync"', 'strategy = "stateful.async"')
    r = nfproof(project, "check", "--json")
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["exit"] == 1 and data["summary"] == {"fail": 1, "error": 0, "unknown": 0, "pass": 4}
    first = data["checks"][0]
    assert first["name"] == "nat-sync" and first["status"] == "fail"
    assert first["runs"][0]["verdict"] == "counterexample" and first["runs"][0]["result"]["counterexample"]["inputs"]
    assert [c["status"] for c in data["checks"][1:]] == ["pass"] * 4
    assert data["checks"][2]["runs"][1]["strategy"] == "stateful.commit:2 --log-choices"


def test_an_unknown_verdict_exits_3_and_is_not_cached(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[[tool.nfproof.check]]\nname = "firewall-rushed"\nchain = "firewall"\nstrategy = "stateful.async"\n'
        'bound = 4\ntimeout = 0.001\nexpect = "proved"\n')
    for _ in range(2):  # the second run verifies again: a timeout is never stored
        r = nfproof(tmp_path, "check", "--junit", "report.xml")
        assert r.returncode == 3, r.stdout + r.stderr
        assert "0 passed, 0 failed, 1 unknown" in r.stdout and "timeout of 0.001 s reached" in r.stdout
        assert "(cached)" not in r.stderr
    error = junit_cases(tmp_path / "report.xml")["firewall-rushed"].find("error")
    assert error is not None and "expected proved, got unknown" in error.get("message")


def test_chains_mutations_and_a_model_the_verifier_refuses(project):
    (project / "models" / "counting.py").write_text(
        "from nfproof.models.api import NF, Flow, Map, Port\n\n\n"
        "class Counting(NF):\n"
        "    name = 'counting'\n    gates = ('wan', 'lan')\n    outside, inside = ('wan',), ('lan',)\n"
        "    table = Map(Flow, Port)\n\n"
        "    def handle(self, pkt, ctx):\n"
        "        if len(self.table) > 3:\n            return ctx.drop('full')\n"
        "        ctx.emit(pkt, 'wan')\n")
    with open(project / "pyproject.toml", "a") as f:
        f.write('\n[[tool.nfproof.check]]\nchain = "models/balancer.py:Balancer>nat"\nstrategy = "stateful.sync"\n'
                'bound = 2\nexpect = "proved"\n'
                '\n[[tool.nfproof.check]]\nchain = "nat"\nstrategy = "stateful.sync"\nmutation = "release-before-ack"\n'
                'bound = 3\nexpect = "counterexample"\n'
                '\n[[tool.nfproof.check]]\nname = "counting"\nchain = "models/counting.py:Counting"\n'
                'strategy = "stateful.sync"\nbound = 2\nexpect = "proved"\n')
    for cached in (False, True):
        r = nfproof(project, "check")
        assert r.returncode == 2, r.stdout + r.stderr  # a model error: the most severe outcome here
        lines = r.stderr.strip().splitlines()
        assert lines[5] == "[6/8] PASS    models/balancer.py:Balancer>nat stateful.sync bound 2: proved (expected proved), " \
            + lines[5].split("), ")[1]
        assert lines[6].startswith("[7/8] PASS    nat stateful.sync release-before-ack bound 3: counterexample")
        assert lines[7].startswith("[8/8] ERROR   counting: error (expected proved)") and "(cached)" not in lines[7]
        assert lines[5].endswith("(cached)") == cached
        assert "counting.py:11: len() of a Map is not supported" in r.stdout


def test_the_example_readme_shows_the_report_of_the_shipped_sample(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "sample", ignore=shutil.ignore_patterns(".nfproof-cache"))
    r = nfproof(tmp_path / "sample", "check", "--no-cache")
    assert r.returncode == 1 and "[4/5] FAIL    balancer-none: counterexample (expected proved)" in r.stderr
    with open(os.path.join(SAMPLE, "..", "README.md")) as f:
        readme = f.read()
    story = r.stdout[r.stdout.index("FAIL check 4"):r.stdout.index("reproduce (Python):")]
    assert story in readme
    for line in r.stdout.splitlines()[1:8]:  # the table, its times aside
        assert line.rsplit(None, 2)[0] in readme
    with open(os.path.join(SAMPLE, "..", "github-workflow.yml")) as f:
        workflow = f.read()
    assert "run: nfproof check --junit report.xml" in workflow and "uses: actions/cache@" in workflow
    assert "path: .nfproof-cache" in workflow


def write_config(root, body):
    (root / "pyproject.toml").write_text(body)


def check_in_process(cwd, monkeypatch, capsys, *args):
    """`nfproof check` in this process (configuration errors need no fresh interpreter)."""
    from nfproof.cli import main
    monkeypatch.chdir(cwd)
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["nfproof", "check", *args], code, out, err)


VALID = '''[[tool.nfproof.check]]
name = "nat-sync"
chain = "nat"
strategy = "stateful.sync"
bound = 2
expect = "proved"

[[tool.nfproof.check]]
name = "nat-async"
chain = "nat"
strategy = "stateful.async"
bound = 2
expect = "counterexample"
'''


@pytest.mark.parametrize("old,new,needle", [
    ("bound = 2\nexpect = \"counter", "bund = 2\nexpect = \"counter",
     "check 2 ('nat-async'): unknown key 'bund' (did you mean 'bound'?); valid keys: name, chain, strategy, bound,"),
    ('"stateful.async"', '"stateful.asnyc"',
     "check 2 ('nat-async'): strategy: unknown strategy 'stateful.asnyc'; valid: none, stateful.checkpoint:N,"),
    ('chain = "nat"\nstrategy = "stateful.async"', 'chain = "models/gone.py:Gone"\nstrategy = "stateful.async"',
     "check 2 ('nat-async'): chain: model file models/gone.py not found in "),
    ("bound = 2\nexpect = \"counter", "bound = 0\nexpect = \"counter",
     "check 2 ('nat-async'): bound: 0 is not a number of packets; give a positive integer, e.g. bound = 4"),
    ('expect = "counterexample"', 'expect = "refuted"',
     "check 2 ('nat-async'): expect: 'refuted' is not a verdict; valid here: proved, counterexample"),
    ('expect = "counterexample"', 'expect = "counterexample"\nparams = { nat.prots = 2 }',
     "check 2 ('nat-async'): params: nat has no parameter 'prots'; valid (with defaults): "),
    ('expect = "counterexample"', 'expect = "counterexample"\nlog-choices = "yes"',
     "check 2 ('nat-async'): log-choices: 'yes' is not a boolean; write log-choices = true or log-choices = false"),
    ('expect = "counterexample"', 'expect = "counterexample"\nfailover-time = "soon"',
     "check 2 ('nat-async'): failover-time: 'soon' is not a duration: give seconds"),
    ('expect = "counterexample"', 'expect = "counterexample"\nequivalence = "per-fow"',
     "check 2 ('nat-async'): equivalence: unknown equivalence 'per-fow'; valid: strict, per-flow, loss-at-failover"),
    ('expect = "counterexample"', 'expect = "counterexample"\nno-dedup = true\nproperty = "all"',
     "check 2 ('nat-async'): property: a property is checked over the default protocol: drop equivalence,"),
    ('expect = "counterexample"', 'expect = "counterexample"\nproperty = "nonsense"',
     "check 2 ('nat-async'): property: unknown property 'nonsense' of nat; valid: mapping-bijective, all"),
    ('name = "nat-async"', 'name = "nat-sync"',
     "check 2 ('nat-sync'): name 'nat-sync' is also check 1's; give each check its own `name`"),
    ('name = "nat-async"\n', 'bund = 1\n',
     "check 2 ('nat stateful.async bound 2'): unknown key 'bund'"),  # unnamed: named by its chain, strategy, bound
])
def test_malformed_configs_exit_2_naming_check_key_and_fix(tmp_path, monkeypatch, capsys, old, new, needle):
    assert old in VALID
    write_config(tmp_path, VALID.replace(old, new, 1))
    r = check_in_process(tmp_path, monkeypatch, capsys)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert all(line.startswith("nfproof check: error: pyproject.toml: check ") for line in lines), lines
    assert any(needle in line for line in lines), lines


def test_a_config_error_exits_2_from_a_real_process_too(tmp_path):
    write_config(tmp_path, VALID.replace("bound = 2", "bund = 2", 1))
    r = nfproof(tmp_path, "check")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("nfproof check: error: pyproject.toml: check 1 ('nat-sync'): unknown key 'bund'")


@pytest.mark.parametrize("args,body,needle", [
    (["--config", "nope.toml"], None, "--config nope.toml: no such file"),
    ([], None, "no pyproject.toml in "),
    ([], "[project]\nname = 'x'\n", "pyproject.toml: no [tool.nfproof] table; add one check per "
                                    "[[tool.nfproof.check]] table"),
    ([], "[tool.nfproof]\ncheck = [", "pyproject.toml: not valid TOML: "),
    ([], "[tool.nfproof]\nchecks = []\n" + VALID, "[tool.nfproof]: unknown key 'checks' (did you mean 'check'?)"),
])
def test_config_file_errors_exit_2(tmp_path, monkeypatch, capsys, args, body, needle):
    if body is not None:
        write_config(tmp_path, body)
    r = check_in_process(tmp_path, monkeypatch, capsys, *args)
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_config_elsewhere_reads_paths_relative_to_it(project, tmp_path):
    os.rename(project / "pyproject.toml", project / "checks.toml")
    r = nfproof(tmp_path, "check", "--config", str(project / "checks.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (project / ".nfproof-cache").is_dir()  # the cache sits beside the config, not in the cwd


# -- the pytest plugin ------------------------------------------------------------------------------

ENTRY_POINT = "[pytest11]\nnfproof.pytest_plugin = nfproof.pytest_plugin\n"  # what pyproject.toml declares
# -p when the plugin is not installed as an entry point (pluggy refuses one module under two names)
PLUGIN = [] if any(ep.value == "nfproof.pytest_plugin" for ep in importlib.metadata.entry_points(group="pytest11")) \
    else ["-p", "nfproof.pytest_plugin"]


def plugin_project(pytester):
    shutil.copytree(SAMPLE, pytester.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".nfproof-cache"))
    replace_line(pytester.path / MODEL, BUGGY, FIXED)


def test_pytest_nfproof_collects_one_item_per_check_with_the_same_verdicts(pytester):
    plugin_project(pytester)
    result = pytester.runpytest(*PLUGIN, "--nfproof", "-v")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines([f"pyproject.toml::{name} PASSED*" for name in CHECKS])

    replace_line(pytester.path / MODEL, FIXED, BUGGY)
    result = pytester.runpytest(*PLUGIN, "--nfproof", "-v")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["pyproject.toml::balancer-none FAILED*",
                                 "*check 4 ('balancer-none'), models/balancer.py:Balancer under none: expected proved, "
                                 "got counterexample*",
                                 "counterexample: balancer under none, 2 input packet(s)*",
                                 "*<-- no failure-free execution produces this"])

    result = pytester.runpytest(*PLUGIN, "--nfproof", "-k", "nat")
    result.assert_outcomes(passed=3)
    assert pytester.runpytest(*PLUGIN).ret == pytest.ExitCode.NO_TESTS_COLLECTED  # opt-in


def test_the_entry_point_loads_the_plugin_and_coexists_with_dash_p(pytester, tmp_path, monkeypatch):
    dist = tmp_path / "site" / "nfproof_entry-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nfproof-entry\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINT)
    pytester.makepyprojecttoml(VALID)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    for args in ([], ["-p", "nfproof.pytest_plugin"]):
        result = pytester.runpytest_subprocess(*args, "--nfproof")
        result.assert_outcomes(passed=2)


def test_pytest_nfproof_reports_a_bad_config_as_a_collection_error(pytester):
    pytester.makepyprojecttoml(VALID.replace('"stateful.async"', '"stateful.asnyc"'))
    result = pytester.runpytest(*PLUGIN, "--nfproof")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting pyproject.toml*",
                                 "*check 2 ('nat-async'): strategy: unknown strategy 'stateful.asnyc'; valid: none*"])


def test_the_nfproof_verify_fixture_returns_the_verdict(pytester):
    plugin_project(pytester)
    pytester.makepyfile(test_fixture_in_a_user_project='''
        def test_nat(nfproof_verify):
            proved = nfproof_verify("nat", strategy="stateful.sync", bound=3)
            assert proved.verdict == "proved" and proved.bound == 3
            refuted = nfproof_verify("nat", strategy="stateful.async", bound=3, params={"nat.ports": 2})
            assert refuted.verdict == "counterexample" and len(refuted.counterexample.run.inputs) == 2
            logged = nfproof_verify("nat", strategy=["stateful.async", "none"], bound=2, log_choices=True)
            assert [r.verdict for r in logged] == ["proved", "counterexample"]

        def test_own_model_and_property(nfproof_verify):
            assert nfproof_verify("models/balancer.py:Balancer", strategy="none", bound=2).verdict == "proved"
            sticky = nfproof_verify("lb", strategy="stateful.commit:2", bound=2, property="sticky-backend")
            assert sticky.verdict == "proved" and sticky.property == "sticky-backend"

        def test_bad_option(nfproof_verify):
            nfproof_verify("nat", strategy="stateful.sync", bund=3)
    ''')
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*ConfigError: nfproof_verify('nat'): unknown key 'bund' (did you mean 'bound'?)*"])


# -- replay checks (a recorded run instead of a bound) ----------------------------------------------

REPLAY_CHECKS = '''[[tool.nfproof.check]]
name = "nat-run-explained"
chain = "nat"
trace = "runs/nat.pcapng"
expect = "explained"

[[tool.nfproof.check]]
name = "nat-other-pool"
chain = "nat"
trace = "runs/nat.pcapng"
params = { nat.base = 3000 }
expect = "violation"
'''


@pytest.mark.skipif(not REPLAY, reason="nfproof replay is not installed")
def test_replay_checks_of_a_recorded_run(tmp_path):
    (tmp_path / "runs").mkdir()
    r = nfproof(tmp_path, "run", "nat", "--pcap", os.path.join(DATA, "E03_http_13flows_bro_org.pcap"),
                "-o", "runs/nat.pcapng")
    assert r.returncode == 0, r.stderr
    write_config(tmp_path, REPLAY_CHECKS)
    r = nfproof(tmp_path, "check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[2/2] PASS    nat-other-pool: violation (expected violation)" in r.stderr

    replace_line(tmp_path / "pyproject.toml", 'expect = "violation"', 'expect = "explained"')
    r = nfproof(tmp_path, "check", "--junit", "report.xml")
    assert r.returncode == 1 and "2 verdict(s) from the cache" in r.stdout
    failure = junit_cases(tmp_path / "report.xml")["nat-other-pool"].find("failure")
    replayed = nfproof(tmp_path, "replay", "runs/nat.pcapng", "--chain", "nat", "--param", "nat.base=3000")
    assert replayed.returncode == 1 and replayed.stdout.strip().startswith("error: ")
    # the story as `nfproof replay` prints it (the trace named by its absolute path)
    assert replayed.stdout.strip().replace("runs/nat.pcapng", str(tmp_path / "runs" / "nat.pcapng"), 1) in failure.text

    os.truncate(tmp_path / "runs" / "nat.pcapng", 4096)  # the trace changed: verified again, now unreadable
    r = nfproof(tmp_path, "check")
    assert r.returncode == 2 and "(cached)" not in r.stderr and "ERROR   nat-run-explained" in r.stderr


def test_replay_check_configuration(tmp_path, monkeypatch, capsys):
    write_config(tmp_path, REPLAY_CHECKS.replace('expect = "explained"', 'bound = 3\npcap = "in.pcap"\nexpect = "proved"'))
    r = check_in_process(tmp_path, monkeypatch, capsys)
    assert r.returncode == 2 and r.stdout == ""
    prefix = "nfproof check: error: pyproject.toml: check 1 ('nat-run-explained'): "
    lines = r.stderr.strip().splitlines()
    expected = ["expect: 'proved' is a verify verdict (checks with `bound`); valid here: explained, violation",
                "bound: does not apply to a replay check; remove it (a run of a capture takes strategy, log-choices, "
                "failover-time, seed)",
                "trace: a replay check has either `trace` (a recorded run) or `pcap` and `fail` (a run to make)",
                f"trace: runs/nat.pcapng not found in {tmp_path}",
                f"pcap: in.pcap not found in {tmp_path}",
                "pcap: a run of a capture needs the failure to inject: fail = \"NF@PKT\""]
    for text in expected:
        assert any(line.startswith(prefix + text) for line in lines), (text, lines)


RUN_CHECKS = f'''[[tool.nfproof.check]]
name = "nat-crash-none"
chain = "nat"
pcap = "{os.path.join(DATA, "E02_http_49flows.pcap")}"
params = {{ nat.ports = 64512 }}
fail = "nat@200"
seed = 1
expect = "violation"

[[tool.nfproof.check]]
name = "nat-crash-commit"
chain = "nat"
pcap = "{os.path.join(DATA, "E02_http_49flows.pcap")}"
params = {{ nat.ports = 64512 }}
strategy = "stateful.commit:8"
log-choices = true
fail = ["nat@200"]
expect = "explained"
'''


def test_replay_checks_of_a_run_with_a_failure(tmp_path):
    """`pcap` + `fail`: nfproof run with the failure injected (real processes), then replay: issue 8's
    acceptance pair as checks; the second run comes from the cache."""
    write_config(tmp_path, RUN_CHECKS)
    r = nfproof(tmp_path, "check", "--junit", "report.xml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS    nat-crash-none: violation (expected violation)" in r.stderr
    assert "PASS    nat-crash-commit: explained (expected explained)" in r.stderr
    assert set(junit_cases(tmp_path / "report.xml")) == {"nat-crash-none", "nat-crash-commit"}
    replace_line(tmp_path / "pyproject.toml", 'expect = "violation"', 'expect = "explained"')
    r = nfproof(tmp_path, "check")
    assert r.returncode == 1 and "2 verdict(s) from the cache" in r.stdout
    replace_line(tmp_path / "pyproject.toml", 'fail = "nat@200"', 'fail = "nat200"')
    r = nfproof(tmp_path, "check")
    assert r.returncode == 2 and "fail: 'nat200': write NF@PKT" in r.stderr


def test_verify_checks_take_the_protocol_switches_and_the_equivalence(tmp_path, monkeypatch, capsys):
    """A NAT under sync without input replay loses the inputs in flight at the crash: a violation
    under strict, proved under loss-at-failover; the cache keeps them apart."""
    check = '[[tool.nfproof.check]]\nname = "{name}"\nchain = "nat"\nstrategy = "stateful.sync"\nbound = 2\n' \
            'no-replay-input = true\nequivalence = "{eq}"\nexpect = "{expect}"\n'
    write_config(tmp_path, check.format(name="strict", eq="strict", expect="counterexample") + "\n"
                 + check.format(name="lossy", eq="loss-at-failover", expect="proved"))
    r = check_in_process(tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("[1/2] PASS    strict: counterexample (expected counterexample)"), lines
    assert lines[1].startswith("[2/2] PASS    lossy: proved (expected proved)"), lines
