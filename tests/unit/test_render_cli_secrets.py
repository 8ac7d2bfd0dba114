"""``tilepipe render-worker --ledger`` never takes a password (review L9).

A flag's value is in ``/proc/*/cmdline``, readable by every user of the machine;
``tilepipe send`` already refuses secrets as flags. The DSN with its password
belongs in ``TILEPIPE_RENDER_LEDGER``; with the flag, libpq's own ``PGPASSWORD``
or ``~/.pgpass`` supply it.
"""

from __future__ import annotations

import pytest

from tilepipe.cli import dsn_has_password, main


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://tilepipe:hunter2-pw@db:5432/tilepipe",
     "postgres://tilepipe@db/tilepipe?sslmode=require&password=hunter2-pw",
     "host=db user=tilepipe password=hunter2-pw dbname=tilepipe",
     "password = hunter2-pw host=db"],
)  # fmt: skip
def test_a_password_in_the_ledger_flag_is_refused_in_one_line(dsn, capsys) -> None:
    assert main(["render-worker", "--ledger", dsn]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TILEPIPE_RENDER_LEDGER" in err and "PGPASSWORD" in err
    assert "hunter2-pw" not in err


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://tilepipe@db/tilepipe", "postgresql://db/tilepipe?sslmode=require",
     "host=db user=tilepipe dbname=tilepipe passfile=/run/pgpass"],
)  # fmt: skip
def test_a_ledger_flag_without_a_password_is_fine(dsn) -> None:
    assert not dsn_has_password(dsn)
