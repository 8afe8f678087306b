"""Shared fixtures. Golden reference data is found through ONE fixture: `shared_dir`.

`GLIP_SHARED_DIR` may point elsewhere; by default it is `../shared` beside the checkout.
Tests that need it skip with a reason naming the data they need when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    env = os.environ.get("GLIP_SHARED_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = _shared_root()
    if not (root / "golden" / "README.md").is_file():
        pytest.skip(
            f"needs the GLIP reference data (golden/, data/real/) at {root} "
            "(set GLIP_SHARED_DIR to its location)"
        )
    return root


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    return shared_dir / "golden"
