"""The cross-machine promotion lock: with PRODUCTGEN_PROMOTION_LOCK_URL, promotions serialise on a PostgreSQL
advisory lock in the team database, so two machines cannot interleave a read-compare-write of the champion."""

from __future__ import annotations

import hashlib

import pytest

from productgen.common.errors import UserError
from productgen.registry import promotion as registry
from tests.team import servers


def test_advisory_lock_is_exclusive_across_sessions(stack: servers.Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy as sa

    from productgen.tracking.runs import tracking_uri

    url = stack.pg.url(stack.pg.databases[0])
    monkeypatch.setenv(registry.LOCK_URL_ENV, url)
    key = int.from_bytes(
        hashlib.sha256(f"productgen-promotion|{tracking_uri()}".encode()).digest()[:8], "big", signed=True
    )
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as other:  # another machine holding the lock
        assert other.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        with pytest.raises(UserError, match="another promotion holds the lock"):
            with registry.promotion_lock(timeout_s=1.0):
                pass
        other.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    with registry.promotion_lock(timeout_s=5.0):  # free again: taken, and released on exit
        with engine.connect() as other:
            assert not other.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
    with engine.connect() as other:
        assert other.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
    engine.dispose()
    monkeypatch.setenv(registry.LOCK_URL_ENV, "postgresql+psycopg://x:y@127.0.0.1:1/none")
    with pytest.raises(UserError, match="cannot reach the lock database"):
        with registry.promotion_lock(timeout_s=1.0):
            pass
