"""`nfproof replay --html`: the timeline is one self-contained file (no network: no external
URL, no script) that headless Chromium renders to a non-blank page showing the verdict. Skips
when Chromium is not installed (`apt-get install -y chromium`)."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib

import pytest

from nfproof.cli import main

from test_replay import nat_run

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _timeline(tmp_path, capsys) -> str:
    trace = nat_run([1024, 1024, 1025]).write(tmp_path / "nat.pcapng")
    page = tmp_path / "timeline.html"
    assert main(["replay", str(trace), "--html", str(page)]) == 1
    capsys.readouterr()
    return str(page)


def test_timeline_is_self_contained(tmp_path, capsys):
    text = open(_timeline(tmp_path, capsys), encoding="utf-8").read()
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", text) and "<script" not in text
    assert "CRASH" in text and "FAILOVER" in text and "no failure-free execution produces this" in text
    assert "egress:outside" in text and "ingress:inside" in text and "nat#standby" in text


def _png_pixels(path) -> bytes:
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_timeline_renders_in_headless_chromium(tmp_path, capsys):
    page = _timeline(tmp_path, capsys)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,900", f"file://{page}"],
                   capture_output=True, timeout=120, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    pixels = _png_pixels(shot)
    background = max(set(pixels[::97]), key=pixels[::97].count)
    share = sum(1 for b in pixels[::7] if b != background) / len(pixels[::7])
    assert share > 0.01, f"the screenshot is blank ({share:.1%} of bytes differ from the background)"
