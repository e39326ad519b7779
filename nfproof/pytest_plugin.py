"""pytest plugin: the checks of `[tool.nfproof]` as tests, and a fixture to verify from a test.

`pytest --nfproof` collects every `[[tool.nfproof.check]]` of the rootdir's pyproject.toml as one
test item (`pyproject.toml::NAME`), passing when the verdict is the expected one; a mismatch or an
unknown verdict fails with the story `nfproof check` prints. Verdicts are cached as by `nfproof
check` (`.nfproof-cache/` beside the pyproject.toml; `--nfproof-no-cache` to verify again). A bad
config is a collection error naming the check, the key and the fix.

The fixture `nfproof_verify(chain, strategy, bound=8, **options)` runs the verifier (uncached)
and returns its result (`verify.failover.Result`, or `verify.properties.PropertyResult` with
`property=`; a list for a list of strategies). Options are the config keys with underscores
(`log_choices=True`, `failover_time="500ms"`, `params={"nat.ports": 2}`); model paths are
relative to the rootdir.

Enabled by the `pytest11` entry point when nfproof is installed, or with `-p nfproof.pytest_plugin`.
"""
from __future__ import annotations

import pytest

from .cache import Cache
from .cmd_check import CheckOutcome, evaluate, verify
from .config import ConfigError, from_table, load

CACHE_FOLDER = ".nfproof-cache"


def pytest_addoption(parser):
    group = parser.getgroup("nfproof", "nfproof failover checks")
    group.addoption("--nfproof", action="store_true",
                    help="collect the checks of [tool.nfproof] in the rootdir's pyproject.toml as tests")
    group.addoption("--nfproof-no-cache", action="store_true",
                    help="verify every check again (the verdict cache is neither read nor written)")


def _config_path(config):
    return config.rootpath / "pyproject.toml"


def pytest_report_header(config):
    if config.getoption("nfproof"):
        cache = "off" if config.getoption("nfproof_no_cache") else str(_config_path(config).parent / CACHE_FOLDER)
        return f"nfproof: checks from {_config_path(config)}, verdict cache {cache}"


@pytest.hookimpl(tryfirst=True)  # before -k / -m / --deselect see the items
def pytest_collection_modifyitems(session, config, items):
    if not config.getoption("nfproof"):
        return
    path = _config_path(config)
    if not path.is_file():
        raise pytest.UsageError(f"--nfproof: no pyproject.toml in the rootdir {config.rootpath}; add one with "
                                f"[[tool.nfproof.check]] tables")
    items[:0] = list(session.genitems(ChecksFile.from_parent(session, path=path)))


class ChecksFile(pytest.File):
    """The [tool.nfproof] table of a pyproject.toml: one item per check."""

    def collect(self):
        try:
            checks = load(str(self.path))
        except ConfigError as e:
            raise self.CollectError("\n".join(e.lines)) from None
        folder = None if self.config.getoption("nfproof_no_cache") else str(self.path.parent / CACHE_FOLDER)
        cache = Cache(folder)
        for check in checks:
            yield CheckItem.from_parent(self, name=check.name, check=check, cache=cache)


class CheckMismatch(Exception):
    def __init__(self, outcome: CheckOutcome):
        super().__init__(outcome.failure_text())
        self.outcome = outcome


class CheckItem(pytest.Item):
    """One check: passes when every run has the expected verdict."""

    def __init__(self, *, check, cache, **kwargs):
        super().__init__(**kwargs)
        self.check, self.cache = check, cache

    def runtest(self):
        outcome = evaluate(self.check, self.cache)
        self.user_properties += [("verdict", outcome.verdicts()), ("expected", self.check.expect),
                                 ("cached", outcome.cached)]
        if outcome.status != "pass":
            raise CheckMismatch(outcome)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CheckMismatch):
            return excinfo.value.outcome.failure_text()
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"nfproof check {self.check.index} ({self.check.name!r})"


@pytest.fixture
def nfproof_verify(request):
    """Verify from a test: `nfproof_verify("nat", strategy="stateful.sync", bound=4, log_choices=True)`
    returns the verifier's result (assert on `.verdict`, `.counterexample`, ...)."""
    base_dir = str(request.config.rootpath)

    def run(chain, strategy, bound=8, **options):
        table = {"chain": chain, "strategy": strategy, "bound": bound,
                 **{key.replace("_", "-"): value for key, value in options.items()}}
        check = from_table(table, 1, base_dir, expect_required=False, label=f"nfproof_verify({chain!r})")
        results = [verify(check, s, p) for s, p in check.runs()]
        return results[0] if len(results) == 1 else results

    return run
