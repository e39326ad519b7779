"""Where the tests find real captures: ../shared/pcaps when it is there (CI, developers), else the
copies in tests/data (a fresh clone). Files only in ../shared/pcaps (E01: GPL, S01: stress) skip."""
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "pcaps"
DATA = Path(__file__).resolve().parent / "data"
CAPTURE_DIR = SHARED if SHARED.is_dir() else DATA


def capture(name: str) -> Path:
    path = CAPTURE_DIR / name
    if not path.exists():
        pytest.skip(f"{name} is only in ../shared/pcaps")
    return path


def all_captures() -> list[Path]:
    return sorted(CAPTURE_DIR.glob("*.pcap*"))
