"""A network namespace with two veth pairs (vi0-vi1, vo0-vo1) for the live-interface tests: their
traffic stays inside it. Skips the test where it cannot be made (not root, no iproute2)."""
import contextlib
import os
import shutil
import subprocess

import pytest


def sh(*args, check=True):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=check)


@contextlib.contextmanager
def veth_namespace(prefix: str, mtu: int | None = None, loopback: bool = False):
    """Yields the command prefix that runs a program inside the namespace; deletes it afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (a network namespace with veth pairs)")
    name = f"{prefix}-{os.getpid()}"
    if sh("ip", "netns", "add", name, check=False).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        ns = ["ip", "netns", "exec", name]
        sh(*ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        if loopback:
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sized = ["mtu", str(mtu)] if mtu else []
        for a, b in (("vi0", "vi1"), ("vo0", "vo1")):
            sh("ip", "-n", name, "link", "add", a, *sized, "type", "veth", "peer", "name", b, *sized)
            for dev in (a, b):
                sh("ip", "-n", name, "link", "set", dev, "up")
        yield ns
    finally:
        sh("ip", "netns", "del", name, check=False)
