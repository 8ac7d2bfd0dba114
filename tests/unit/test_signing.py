"""Signing as the dataflow and the services use it: fail closed, rotation, replay, weak keys.

The request side (method and path bound in, the ingress re-signing with its
newest key) is in test_ingress_app; here the dataflow's settings and record
check, and the startup refusals shared by ``tilepipe run`` and ``tilepipe ingress``.
"""

from __future__ import annotations

import logging
import time

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource
from pydantic import ValidationError

from dataflows.settings import Settings
from dataflows.tile_updates import validation_config
from ingress.settings import IngressSettings
from operators.steps import validate
from operators.validate import ValidationConfig, validate_record
from tilepipe.cli import main
from tilepipe.config import settings_from_flags
from tilepipe.errors import ConfigError
from tilepipe.records import DeadLetter, RawRecord, TileEvent
from tilepipe.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, check_strength, sign

OLD = "old-key-0123456789abcdef0123456789"
NEW = "new-key-0123456789abcdef0123456789"
NOW_MS = time.time() * 1000


def record(secret: str, signed_at_s: float, read_ms: float = NOW_MS) -> RawRecord:
    value = (
        b'{"event_id":"e1","kind":"tile","version":1,"source":"s","ts":%d,"z":3,"x":1,"y":2}'
        % int(read_ms - 1000)
    )
    ts = str(int(signed_at_s))
    headers = ((SIGNATURE_HEADER, sign(secret.encode(), ts, value).encode()),
               (TIMESTAMP_HEADER, ts.encode()))  # fmt: skip
    return RawRecord(value, {"topic": "raw", "partition": 0, "offset": 1}, read_ms, headers)


# -- M6: the old key's backlog stays verifiable ----------------------------------------


def test_verify_only_keys_keep_the_old_keys_backlog_valid_after_it_is_retired() -> None:
    backlog = record(OLD, NOW_MS / 1000 - 3600)  # signed an hour ago, before the rotation
    retired = Settings(hmac_secrets=f"k2027:{NEW}")
    dead = validate_record(backlog, validation_config(retired))
    assert isinstance(dead, DeadLetter) and dead.reason == "bad_signature"
    kept = Settings(hmac_secrets=f"k2027:{NEW}", hmac_verify_secrets=f"k2026:{OLD}")
    assert set(kept.secrets_by_key() or {}) == {"k2026", "k2027"}
    assert isinstance(validate_record(backlog, validation_config(kept)), TileEvent)
    assert isinstance(validate_record(record(NEW, NOW_MS / 1000), validation_config(kept)),
                      TileEvent)  # fmt: skip


def test_a_key_id_with_two_secrets_across_the_lists_is_refused() -> None:
    s = Settings(hmac_secrets=f"k1:{NEW}", hmac_verify_secrets=f"k1:{OLD}")
    with pytest.raises(ValueError, match="two different secrets"):
        s.secrets_by_key()


# -- M7: fail closed, say so, and a replay window ----------------------------------------


def test_required_signatures_without_keys_refuse_to_start(monkeypatch, capsys) -> None:
    with pytest.raises(ValidationError, match="signatures are required"):
        Settings(require_signatures=True)
    assert Settings(require_signatures=True, hmac_secrets=f"k:{NEW}").require_signatures
    monkeypatch.setenv("TILEPIPE_REQUIRE_SIGNATURES", "true")
    monkeypatch.delenv("TILEPIPE_HMAC_SECRETS", raising=False)
    assert main(["run", "--source", "generator:?events=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "signatures are required" in err[0], err


def build(config: ValidationConfig) -> None:
    flow = Dataflow("t")
    validate("v", op.input("in", flow, TestingSource([])), config=config)


def test_the_flow_logs_whether_verification_is_on(caplog) -> None:
    caplog.set_level(logging.INFO, logger="operators.steps")
    build(ValidationConfig())
    build(ValidationConfig(hmac_secrets={"k2027": NEW.encode()}, signature_max_age_ms=60_000))
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines[0][0] == "WARNING" and "verification OFF" in lines[0][1]
    assert lines[1][0] == "INFO" and "verification on" in lines[1][1]
    assert caplog.records[1].key_ids == ["k2027"]  # type: ignore[attr-defined]
    assert NEW not in caplog.text


def test_a_record_signed_longer_ago_than_the_max_age_is_a_replay() -> None:
    config = validation_config(Settings(hmac_secrets=f"k2027:{NEW}", signature_max_age="24h"))
    fresh = record(NEW, NOW_MS / 1000 - 3600)
    assert isinstance(validate_record(fresh, config), TileEvent)
    replayed = record(NEW, NOW_MS / 1000 - 2 * 86400)  # a two-day-old signed record, re-produced
    dead = validate_record(replayed, config)
    assert isinstance(dead, DeadLetter) and dead.reason == "bad_signature"
    assert "TILEPIPE_SIGNATURE_MAX_AGE" in dead.error
    # The default is a week: a reprocessing from earliest within retention still verifies.
    assert Settings().signature_max_age.days == 7


@pytest.mark.parametrize("ts", [b"9" * 400, b"-1", b"", b"1e9", "١٢".encode()])
def test_a_record_timestamp_header_never_raises(ts: bytes) -> None:
    rec = record(NEW, NOW_MS / 1000)
    headers = ((SIGNATURE_HEADER, rec.headers[0][1]), (TIMESTAMP_HEADER, ts))
    config = ValidationConfig(hmac_secrets={"k": NEW.encode()}, signature_max_age_ms=1000)
    dead = validate_record(rec._replace(headers=headers), config)
    assert isinstance(dead, DeadLetter) and dead.reason == "bad_signature"


# -- H5: placeholders and short keys stop the services -----------------------------------


@pytest.mark.parametrize(
    ("secrets", "message"),
    [("k2026:CHANGE-ME", "placeholder"), ("k1:s3cret", "placeholder"),
     ("k1:CHANGE-ME-too-but-long-enough-to-pass-32", "placeholder"),
     ("k1:short-but-not-a-placeholder", "under the 32")],
)  # fmt: skip
def test_placeholder_and_short_secrets_are_refused_at_startup(
    secrets, message, monkeypatch
) -> None:
    from tilepipe.signing import parse_secrets

    with pytest.raises(ValueError, match=message):
        check_strength(parse_secrets(secrets))
    with pytest.raises(ValidationError, match=message):
        Settings(hmac_secrets=secrets)
    with pytest.raises(ValidationError, match=message):
        Settings(hmac_secrets=f"k9:{NEW}", hmac_verify_secrets=secrets)
    # The ingress refuses as its settings are read, before it binds a port or asks the
    # broker anything, in one line that names the variable and never the secret.
    monkeypatch.setenv("TILEPIPE_HMAC_SECRETS", secrets)
    with pytest.raises(ConfigError, match=message) as e:
        settings_from_flags(IngressSettings)
    assert "TILEPIPE_HMAC_SECRETS" in str(e.value)
    assert "\n" not in str(e.value) and secrets.split(":", 1)[1] not in str(e.value)
    check_strength({"k": NEW.encode()})  # 34 bytes of a real-looking key pass
