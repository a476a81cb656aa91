import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def pydicom_files() -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(scope="session")
def nibabel_files() -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data"


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server per test session (see tests/pg_server.py); skipped without binaries."""
    from pg_server import SKIP_MESSAGE, PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail(SKIP_MESSAGE + " (CI must run them)")
        pytest.skip(SKIP_MESSAGE)
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty PostgreSQL database (SQLAlchemy URL with the psycopg 3 driver)."""
    return postgres_server.new_database()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for the e2e tests (tests/e2e_support.py)."""
    from e2e_support import chromium

    with chromium() as b:
        yield b
