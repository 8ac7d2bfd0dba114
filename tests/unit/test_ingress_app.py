"""The ingress app without a broker: every status code, batches, dedup, headers.

The producer here is a stand-in that records what it was given and can be told
to fail; tests/integration/test_ingress_live.py runs the same app on real Tansu.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from ingress import metrics
from ingress.app import EVENT_ID_HEADER, INGEST_HEADER, KEY_ID_HEADER, create_app
from ingress.dedup import DedupWindow, IngestClock
from ingress.intake import body_kind, split_records
from ingress.producer import OutRecord
from ingress.settings import IngressSettings
from tests.support.events import NOW_MS, dumps, feature_event, tile_event
from tests.support.fakes import SECRETS, FakeProducer, make_ingress
from tilepipe.client import signed_headers
from tilepipe.serving import host_port
from tilepipe.signing import (
    RECORD_METHOD,
    RECORD_TARGET,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    matching_key,
    message,
    sign,
    signature_valid,
)
from tilepipe.tiles import tile_key


def ndjson(*docs: Any) -> bytes:
    return b"".join((d if isinstance(d, bytes) else dumps(d)) + b"\n" for d in docs)


@pytest.fixture
def producer() -> FakeProducer:
    return FakeProducer()


@pytest.fixture
def client(producer: FakeProducer) -> Iterator[TestClient]:
    with TestClient(create_app(make_ingress(producer, max_request_bytes=4096))) as c:
        yield c


def post(
    client: TestClient,
    body: bytes,
    ctype: str = "application/json",
    secret: bytes | None = b"new-secret",
    **headers: str,
) -> httpx.Response:
    h = {"content-type": ctype}
    if secret is not None:
        h |= signed_headers(secret, body)
    h |= {k.replace("_", "-"): v for k, v in headers.items()}
    return client.post("/v1/events", content=body, headers=h)


# -- accepted ------------------------------------------------------------------------


def test_one_signed_event_is_produced_with_its_key_and_headers(client, producer) -> None:
    body = dumps(tile_event())
    r = post(client, body)
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 1, "duplicate": 0, "rejected": 0, "unavailable": 0,
                        "results": [{"index": 0, "event_id": "e1", "status": 202,
                                     "result": "accepted"}]}  # fmt: skip
    [rec] = producer.sent
    assert rec.key == tile_key(12, 3, 7).encode()
    assert rec.value == body  # the bytes as signed, not re-serialised
    headers = dict(rec.headers)
    assert headers[EVENT_ID_HEADER] == b"e1"
    assert headers[KEY_ID_HEADER] == b"k2027"
    assert int(headers[INGEST_HEADER]) == rec.timestamp_ms  # type: ignore[arg-type]
    # The client's own signature travels: the dataflow verifies it as is.
    assert signature_valid(SECRETS, rec.headers, rec.value)  # type: ignore[arg-type]


def test_a_batch_accepts_the_good_records_and_reports_each(client, producer) -> None:
    feature = feature_event(event_id="f1", version=2, source="osm", feature_id="way/7",
                            geometry={"type": "Point", "coordinates": [13.4, 52.5]})  # fmt: skip
    body = ndjson(
        tile_event(event_id="a", x=1),
        b"{nope",
        tile_event(event_id="b", x=2, z=1),
        feature,
        b"",
        b"[1]",
    )
    r = post(client, body, "application/x-ndjson; charset=utf-8", secret=b"old-secret")
    assert r.status_code == 202, r.text
    doc = r.json()
    assert (doc["accepted"], doc["rejected"]) == (2, 3)
    got = [(x["index"], x["status"], x["result"], x.get("reason")) for x in doc["results"]]
    assert got == [(0, 202, "accepted", None), (1, 400, "rejected", "invalid_json"),
                   (2, 422, "rejected", "tile_out_of_range"), (3, 202, "accepted", None),
                   (4, 400, "rejected", "not_an_object")]  # fmt: skip
    assert doc["results"][2]["field"] == "x"
    assert [r.key for r in producer.sent] == [tile_key(12, 1, 7).encode(), b"feature:osm:way/7"]
    # Each record of a batch is signed on its own, so the dataflow's per-record check holds.
    for rec in producer.sent:
        assert signature_valid(SECRETS, rec.headers, rec.value)  # type: ignore[arg-type]
        assert rec.value in body.split(b"\n")


def test_records_are_resigned_with_the_newest_key_so_retiring_a_key_strands_nothing(
    client, producer
) -> None:
    """M6: the request came with the retiring key k2026; the topic sees only k2027's."""
    body = ndjson(tile_event(event_id="a", x=1), tile_event(event_id="b", x=2))
    single = dumps(tile_event(event_id="c", x=3))
    assert post(client, body, "application/x-ndjson", secret=b"old-secret").status_code == 202
    assert post(client, single, secret=b"old-secret").status_code == 202
    assert len(producer.sent) == 3
    for rec in producer.sent:
        assert dict(rec.headers)[KEY_ID_HEADER] == b"k2027"
        # Verifiable with the newest key alone: the old one can go from every component.
        assert signature_valid({"k2027": b"new-secret"}, rec.headers, rec.value)  # type: ignore[arg-type]
        assert not signature_valid({"k2026": b"old-secret"}, rec.headers, rec.value)  # type: ignore[arg-type]


def test_ingest_time_is_shared_by_a_request_and_never_goes_back(client, producer) -> None:
    for i in range(5):
        post(
            client,
            ndjson(tile_event(event_id=f"a{i}"), tile_event(event_id=f"b{i}")),
            "application/x-ndjson",
        )
    stamps = [rec.timestamp_ms for rec in producer.sent]
    assert stamps == sorted(stamps) and stamps[0] == stamps[1]


# -- idempotency ---------------------------------------------------------------------


def test_a_repeated_event_id_is_202_and_not_produced_again(client, producer) -> None:
    assert post(client, dumps(tile_event())).status_code == 202
    again = post(client, dumps(tile_event()))  # the same request, re-signed: a client retry
    assert again.status_code == 202
    assert again.json()["results"][0]["result"] == "duplicate"
    twice = post(
        client,
        ndjson(tile_event(event_id="z"), tile_event(event_id="z"), tile_event()),
        "application/x-ndjson",
    )
    assert [x["result"] for x in twice.json()["results"]] == ["accepted", "duplicate",
                                                              "duplicate"]  # fmt: skip
    assert [r.value for r in producer.sent] == [
        dumps(tile_event()),
        dumps(tile_event(event_id="z")),
    ]


def test_concurrent_requests_with_one_event_id_produce_it_once(producer) -> None:
    producer.delay = 0.05
    app = create_app(make_ingress(producer))
    body = dumps(tile_event(event_id="race"))

    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            headers = {"content-type": "application/json", **signed_headers(b"new-secret", body)}
            rs = await asyncio.gather(
                *(c.post("/v1/events", content=body, headers=headers) for _ in range(5))
            )
            return [r.status_code for r in rs]

    assert asyncio.run(go()) == [202] * 5
    assert len(producer.sent) == 1


def test_other_producers_reusing_an_event_id_are_not_dropped_as_duplicates(
    client, producer
) -> None:
    """M4: the window is per (key, source, event id); it used to answer "202 duplicate"."""
    first = tile_event(event_id="shared-id", x=1, source="A", z=3)
    assert post(client, dumps(first), secret=b"old-secret").status_code == 202
    other_key = tile_event(event_id="shared-id", x=2, source="B", z=5, version=9)
    r = post(client, dumps(other_key), secret=b"new-secret")
    assert (r.status_code, r.json()["results"][0]["result"]) == (202, "accepted")
    other_source = tile_event(event_id="shared-id", x=3, source="B", z=3)
    r = post(client, dumps(other_source), secret=b"old-secret")
    assert (r.status_code, r.json()["results"][0]["result"]) == (202, "accepted")
    assert [r.value for r in producer.sent] == [dumps(first), dumps(other_key), dumps(other_source)]


def test_a_reused_event_id_with_other_content_is_409_not_a_silent_duplicate(
    client, producer
) -> None:
    """M4: same key, source and id but other bytes is a conflict, said out loud."""
    assert post(client, dumps(tile_event(event_id="e7", x=1))).status_code == 202
    r = post(client, dumps(tile_event(event_id="e7", x=2)))
    assert r.status_code == 409, r.text
    [result] = r.json()["results"]
    assert (result["result"], result["reason"]) == ("rejected", "event_id_conflict")
    # In a batch, only the conflicting record is refused; an exact repeat stays a duplicate.
    r = post(
        client,
        ndjson(
            tile_event(event_id="e7", x=1),
            tile_event(event_id="e7", x=3),
            tile_event(event_id="e8"),
        ),
        "application/x-ndjson",
    )
    assert r.status_code == 202
    assert [(x["status"], x["result"]) for x in r.json()["results"]] == [
        (202, "duplicate"), (409, "rejected"), (202, "accepted")]  # fmt: skip
    assert [rec.value for rec in producer.sent] == [
        dumps(tile_event(event_id="e7", x=1)),
        dumps(tile_event(event_id="e8")),
    ]


def test_concurrent_requests_with_one_id_and_other_content_are_409(producer) -> None:
    producer.delay = 0.05
    app = create_app(make_ingress(producer))
    bodies = [dumps(tile_event(event_id="race", x=1)), dumps(tile_event(event_id="race", x=2))]

    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            rs = await asyncio.gather(*(
                c.post("/v1/events", content=b, headers={
                    "content-type": "application/json", **signed_headers(b"new-secret", b)})
                for b in bodies
            ))  # fmt: skip
            return [r.status_code for r in rs]

    assert asyncio.run(go()) == [202, 409]
    assert [rec.value for rec in producer.sent] == bodies[:1]


def test_broker_failure_is_503_with_retry_after_and_the_id_is_not_remembered(
    client, producer
) -> None:
    producer.fail = "Local: Message timed out"
    r = post(client, ndjson(tile_event(event_id="a"), b"{nope"), "application/x-ndjson")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert [x["status"] for x in r.json()["results"]] == [503, 400]
    producer.fail = None
    retry = post(client, ndjson(tile_event(event_id="a"), b"{nope"), "application/x-ndjson")
    assert retry.status_code == 202
    assert retry.json()["results"][0]["result"] == "accepted"
    assert len(producer.sent) == 1


# -- refused -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param({}, "missing_signature", id="none"),
        pytest.param({"x-tilepipe-timestamp": "NOW"}, "missing_signature", id="no-signature"),
        pytest.param({"x-tilepipe-signature": "sha256=00"}, "missing_signature", id="no-ts"),
        pytest.param(
            {"x-tilepipe-signature": "sha256=00", "x-tilepipe-timestamp": "soon"},
            "bad_timestamp",
            id="ts-not-a-number",
        ),
        pytest.param(
            {"x-tilepipe-signature": "sha256=00", "x-tilepipe-timestamp": "NOW"},
            "bad_signature",
            id="wrong",
        ),
    ],
)
def test_unsigned_or_badly_signed_requests_are_401(client, producer, headers, reason) -> None:
    # "NOW" is the time the test runs, not when the module was collected: a long suite
    # would otherwise put the timestamp outside the window (expired, not bad).
    headers = {k: str(int(time.time())) if v == "NOW" else v for k, v in headers.items()}
    r = post(client, dumps(tile_event()), secret=None, **headers)
    assert r.status_code == 401
    assert r.json()["error"] == reason
    assert producer.sent == []


@pytest.mark.parametrize("ts", ["9" * 400, "9" * 13, "-5", "1e9", "0x10", " 17", ""], ids=repr)
def test_any_timestamp_header_is_401_never_500_nor_a_traceback(client, caplog, ts) -> None:
    """L5: 400 digits used to pass int() and raise OverflowError: 500 and a traceback."""
    r = post(client, dumps(tile_event()), secret=None, x_tilepipe_signature="sha256=00",
             x_tilepipe_timestamp=ts)  # fmt: skip
    assert r.status_code == 401, r.text
    assert r.json()["error"] in ("bad_timestamp", "missing_signature")
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelname == "ERROR"]


def test_a_retired_key_a_tampered_body_and_an_old_timestamp_are_401(client, producer) -> None:
    body = dumps(tile_event())
    assert post(client, body, secret=b"retired").json()["error"] == "bad_signature"
    tampered = {"content-type": "application/json", **signed_headers(b"new-secret", body)}
    r = client.post("/v1/events", content=dumps(tile_event(x=4)), headers=tampered)
    assert (r.status_code, r.json()["error"]) == (401, "bad_signature")
    for skew in (-301, 301):
        stale = signed_headers(b"new-secret", body, int(time.time()) + skew)
        r = client.post("/v1/events", content=body, headers={**tampered, **stale})
        assert (r.status_code, r.json()["error"]) == (401, "expired_signature")
    assert producer.sent == []


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/xml", "", "application/json; charset=latin-1"]
)
def test_other_content_types_are_415(client, producer, ctype) -> None:
    r = post(client, dumps(tile_event()), ctype)
    assert (r.status_code, r.json()["error"]) == (415, "unsupported_media_type")
    assert producer.sent == []


def test_too_large_is_413_by_declared_length_or_by_what_arrives(client, producer) -> None:
    big = ndjson(*(tile_event(event_id=f"e{i}") for i in range(40)))
    assert len(big) > 4096
    r = post(client, big, "application/x-ndjson")
    assert (r.status_code, r.json()["error"]) == (413, "too_large")

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to go by
        yield big

    headers = {"content-type": "application/x-ndjson", **signed_headers(b"new-secret", big)}
    r = client.post("/v1/events", content=chunks(), headers=headers)
    assert (r.status_code, r.json()["error"]) == (413, "too_large")
    assert producer.sent == []


def test_one_record_over_the_record_limit_is_413(producer) -> None:
    with TestClient(create_app(make_ingress(producer, max_record_bytes=200))) as c:
        r = post(c, dumps(tile_event(layers=["x" * 100, "y" * 100])))
    assert (r.status_code, r.json()["error"]) == (413, "too_large")


def test_too_many_records_is_413(producer) -> None:
    with TestClient(create_app(make_ingress(producer, max_batch_records=2))) as c:
        r = post(
            c,
            ndjson(tile_event(event_id="a"), tile_event(event_id="b"), tile_event(event_id="c")),
            "application/x-ndjson",
        )
    assert (r.status_code, r.json()["error"]) == (413, "too_many_records")
    assert producer.sent == []


def test_malformed_is_400_and_invalid_is_422_with_every_field_error(client, producer) -> None:
    r = post(client, b'{"event_id": ')
    assert (r.status_code, r.json()["error"]) == (400, "invalid_json")
    r = post(client, dumps({"kind": "tile", "event_id": "e", "z": 40, "x": "a"}))
    assert r.status_code == 422
    [result] = r.json()["results"]
    assert result["reason"] == "missing_field"
    fields = {e["field"] for e in result["errors"]}
    assert {"version", "source", "ts", "x", "y"} <= fields
    r = post(client, dumps(tile_event(ts=NOW_MS + 3_600_000)))
    assert (r.status_code, r.json()["error"]) == (422, "future_event")
    r = post(client, ndjson(b"{nope", b"[]"), "application/x-ndjson")
    assert (r.status_code, r.json()["error"]) == (400, "invalid_records")
    r = post(client, ndjson(b"{nope", tile_event(z=1)), "application/x-ndjson")
    assert (r.status_code, r.json()["rejected"]) == (422, 2)
    r = post(client, b"\n \n", "application/x-ndjson")
    assert (r.status_code, r.json()["error"]) == (400, "empty_body")
    assert producer.sent == []


def test_other_methods_and_paths(client) -> None:
    assert client.get("/v1/events").status_code == 405
    assert client.post("/v2/events").status_code == 404


def test_every_rejection_is_counted(client) -> None:
    def count(reason: str) -> float:
        return (
            metrics.REGISTRY.get_sample_value(
                "tilepipe_ingress_rejections_total", {"reason": reason}
            )
            or 0.0
        )

    before = {r: count(r) for r in ("bad_signature", "unsupported_media_type", "invalid_json")}
    post(client, dumps(tile_event()), secret=b"nope")
    post(client, dumps(tile_event()), "text/csv")
    post(client, ndjson(b"{", b"{"), "application/x-ndjson")
    assert count("bad_signature") == before["bad_signature"] + 1
    assert count("unsupported_media_type") == before["unsupported_media_type"] + 1
    assert count("invalid_json") == before["invalid_json"] + 2


# -- health and metrics --------------------------------------------------------------


def test_health_ready_and_metrics(client, producer) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    post(client, dumps(tile_event()))
    text = client.get("/metrics").text
    for name in ("tilepipe_ingress_requests_total{status=\"202\"}",
                 "tilepipe_ingress_produce_latency_seconds_bucket",
                 "tilepipe_ingress_signatures_verified_total{key_id=\"k2027\"}",
                 "process_cpu_seconds_total"):  # fmt: skip
        assert name in text
    assert "tilepipe_events_total" not in text  # the dataflow's metrics are not ours
    producer.alive = False
    assert client.get("/healthz").status_code == 503


def test_readyz_is_503_outside_the_lifespan(producer) -> None:
    app = create_app(make_ingress(producer))
    c = TestClient(app)  # no "with": startup has not run
    assert c.get("/readyz").status_code == 503


# -- the pieces ----------------------------------------------------------------------


def test_dedup_window_forgets_after_the_window_and_beyond_the_bound() -> None:
    now = [0.0]
    w = DedupWindow(10, 3, clock=lambda: now[0])

    def ident(x: str) -> tuple[str, str, str]:
        return ("k", "src", x)

    def seen(x: str) -> bool:
        return w.get(ident(x)) is not None

    w.add(ident("a"), b"da")
    now[0] = 5
    w.add(ident("b"), b"db")
    assert seen("a") and w.get(ident("b")) == b"db"
    now[0] = 10.5
    assert not seen("a") and seen("b")
    for x in "cde":
        w.add(ident(x), b"d" + x.encode())
    assert len(w) == 3 and not seen("b") and seen("e")
    now[0] = 15.0
    w.add(ident("c"), b"dc")  # seen again: remembered from now on
    now[0] = 21.0
    assert [x for x in "cde" if seen(x)] == ["c"]


def test_ingest_clock_never_goes_backwards() -> None:
    times = iter([100.0, 100.5, 99.0, 99.9, 101.0])
    clock = IngestClock(lambda: next(times))
    assert [clock.now_ms() for _ in range(5)] == [100_000, 100_500, 100_500, 100_500, 101_000]


@pytest.mark.parametrize(
    ("ctype", "kind"),
    [("application/json", "json"), ("Application/JSON; charset=UTF-8", "json"),
     ("application/x-ndjson", "ndjson"), ("application/jsonl", "ndjson"),
     ("application/json; charset=utf-16", None), ("text/plain", None), (None, None)],
)  # fmt: skip
def test_body_kind(ctype, kind) -> None:
    assert body_kind(ctype) == kind


def test_split_records_keeps_bytes_and_drops_blank_lines() -> None:
    assert split_records(b'{"a":1}\r\n\n  \n{"b":2}', "ndjson") == [b'{"a":1}', b'{"b":2}']
    assert split_records(b' {"a":1}\n', "json") == [b' {"a":1}\n']


def test_matching_key_names_the_key_that_signed() -> None:
    body = b'{"a":1}'
    h = signed_headers(b"old-secret", body, 42)
    sig, ts = h[SIGNATURE_HEADER].encode(), h[TIMESTAMP_HEADER].encode()
    post_events = {"method": "POST", "target": "/v1/events"}
    assert matching_key(SECRETS, ts, body, sig, **post_events) == "k2026"
    assert matching_key(SECRETS, b"43", body, sig, **post_events) is None
    assert matching_key(SECRETS, ts, body, "sha256=é".encode(), **post_events) is None
    assert matching_key(SECRETS, "4é".encode(), body, sig, **post_events) is None


def test_a_signature_is_bound_to_its_method_and_target() -> None:
    """L6: one MAC per purpose: a request's signature verifies for that request only."""
    body = b'{"a":1}'
    h = signed_headers(b"old-secret", body, 42)
    sig, ts = h[SIGNATURE_HEADER].encode(), h[TIMESTAMP_HEADER].encode()
    assert matching_key(SECRETS, ts, body, sig, method="POST", target="/v1/events") == "k2026"
    for method, target in [("POST", "/v1/jobs"), ("GET", "/v1/events"),
                           ("POST", "/v1/events?x=1"), (RECORD_METHOD, RECORD_TARGET)]:  # fmt: skip
        assert matching_key(SECRETS, ts, body, sig, method=method, target=target) is None
    # A record signature (what the topic carries) is no request signature either.
    record_sig = sign(b"old-secret", "42", body).encode()
    assert matching_key(SECRETS, ts, body, record_sig, method="POST", target="/v1/events") is None
    assert matching_key(SECRETS, ts, body, record_sig) == "k2026"
    assert message("GET", "/v1/jobs?state=DEAD", "42", b"") == b"GET\n/v1/jobs?state=DEAD\n42\n"


def test_a_get_signed_for_one_target_is_refused_for_another(producer) -> None:
    """L6 through the app: a signed GET replayed against another path is 401, not served."""
    ingress = make_ingress(producer)
    ingress.jobs = object()  # type: ignore[assignment]  # only authentication is reached
    with TestClient(create_app(ingress)) as c:
        h = signed_headers(b"new-secret", b"", method="GET", target="/v1/jobs?state=DEAD")
        r = c.get("/v1/jobs/rj_other", headers=h)
        assert (r.status_code, r.json()["error"]) == (401, "bad_signature")
        r = c.get("/v1/jobs?state=FAILED", headers=h)
        assert (r.status_code, r.json()["error"]) == (401, "bad_signature")


def test_settings_from_the_environment(monkeypatch, tmp_path) -> None:
    secret_file = tmp_path / "secrets"
    one, two, three = "s3cr3t-" + "1" * 32, "two-" + "2" * 32, "three-" + "3" * 32
    secret_file.write_text(f"k2:{two}\nk3:{three}\n")
    monkeypatch.setenv("TILEPIPE_HMAC_SECRETS", f"k1:{one},k2:{two}")
    monkeypatch.setenv("TILEPIPE_HMAC_SECRETS_FILE", str(secret_file))
    monkeypatch.setenv("TILEPIPE_INGRESS_DEDUP_WINDOW", "90s")
    monkeypatch.setenv("TILEPIPE_MAX_RECORD_BYTES", "4096")
    monkeypatch.setenv("TILEPIPE_INGRESS_SINK", "kafka://b1:9092,b2:9092/raw")
    s = IngressSettings()
    assert s.secrets_by_key() == {"k1": one.encode(), "k2": two.encode(), "k3": three.encode()}
    assert s.dedup_window.total_seconds() == 90 and s.max_record_bytes == 4096
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(s.model_dump())
    secret_file.write_text("k1:other\n")
    with pytest.raises(ValueError, match="two different secrets"):
        s.secrets_by_key()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sink": "redis://h:1/0"}, "writes to Kafka"),
        ({"listen": "8080"}, "not HOST:PORT"),
        ({"hmac_secrets": "k1:"}, "empty key id or secret"),
        ({"hmac_secrets": "k1:a,k1:b"}, "given twice"),
        ({"tls_certfile": "cert.pem"}, "needs both"),
    ],
)
def test_settings_mistakes(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        IngressSettings(**overrides)


def test_host_port() -> None:
    assert host_port("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert host_port("[::]:443") == ("::", 443)


# -- one error envelope, mapped by the app's exception handlers ------------------------


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_bug_of_ours_is_one_json_500_counted_like_any_answer(producer) -> None:
    async def broken(records: Sequence[OutRecord]) -> list[str | None]:
        raise RuntimeError("a bug")

    producer.send = broken  # type: ignore[method-assign]
    before = sample("tilepipe_ingress_requests_total", status="500")
    with TestClient(create_app(make_ingress(producer)), raise_server_exceptions=False) as c:
        r = post(c, dumps(tile_event()))
    assert r.status_code == 500
    assert r.json() == {"error": "internal_error", "message": "unexpected error; see the logs"}
    assert sample("tilepipe_ingress_requests_total", status="500") == before + 1


def test_a_job_request_refused_by_a_handler_is_counted_by_method_and_status(producer) -> None:
    ingress = make_ingress(producer)
    ingress.jobs = object()  # type: ignore[assignment]  # only authentication is reached
    before = sample("tilepipe_ingress_job_requests_total", method="GET", status="401")
    with TestClient(create_app(ingress)) as c:
        r = c.get("/v1/jobs/rj_x")  # unsigned
    assert (r.status_code, r.json()["error"]) == (401, "missing_signature")
    assert set(r.json()) == {"error", "message"}
    assert sample("tilepipe_ingress_job_requests_total", method="GET", status="401") == before + 1
