"""Running the ingress: checks first, then uvicorn.

:func:`prepare` turns the usual mistakes (no secret, a placeholder or short
secret, a broker that does not answer, a missing topic, a port in use, a TLS
file that cannot be read) into one line before anything is served.
:func:`serve` runs uvicorn on the socket it bound, with uvloop and httptools,
TLS when configured, a connection cap, and a graceful drain on SIGTERM: the
listener closes, in-flight requests finish, the producer flushes.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

import uvicorn

from ingress.app import Ingress, create_app
from ingress.producer import AsyncProducer
from ingress.settings import IngressSettings
from tilepipe.config import kafka_uri, redact_url, settings_from_flags
from tilepipe.connect import check_kafka
from tilepipe.errors import ConfigError
from tilepipe.serving import DrainingServer, bind, drop_color_message
from tilepipe.signing import check_strength

log = logging.getLogger("tilepipe.ingress")


def prepare(settings: IngressSettings) -> tuple[Ingress, list[socket.socket]]:
    """Check the configuration and the broker, bind the port; raises :class:`ConfigError`."""
    if settings.sink is None:
        raise ConfigError(
            "no sink: pass --sink kafka://HOST:PORT/TOPIC (or set TILEPIPE_INGRESS_SINK)"
        )
    try:
        secrets = settings.secrets_by_key()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not secrets:
        raise ConfigError(
            "no HMAC secret: set TILEPIPE_HMAC_SECRETS=keyid:secret[,keyid:secret]"
            " (or TILEPIPE_HMAC_SECRETS_FILE=PATH); the ingress accepts signed requests only"
        )
    try:
        check_strength(secrets)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name in ("tls_certfile", "tls_keyfile", "tls_client_ca"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"{name} {str(path)!r} is not a readable file")
    brokers, topic = kafka_uri(settings.sink)
    check_kafka("sink", brokers, topic, settings.kafka_config)
    sock = bind(settings.listen)
    socks = [sock]
    if settings.metrics_listen is not None:
        try:
            socks.append(bind(settings.metrics_listen))
        except ConfigError:
            sock.close()
            raise
    producer = AsyncProducer(
        brokers,
        topic,
        extra_config=settings.kafka_config,
        produce_timeout_s=settings.produce_timeout.total_seconds(),
        linger_ms=settings.linger.total_seconds() * 1000,
    )
    jobs = None
    if settings.render_ledger is not None:
        from ingress.jobs import JobsAPI

        jobs = JobsAPI(
            settings.render_ledger.get_secret_value(),
            settings.render_redis,
            settings.render_prefix,
            settings.jobs_max_tiles,
            settings.max_zoom,
            rules=settings.geometry_rules(),
        )
        try:
            jobs.prepare()
        except Exception as e:
            for s in socks:
                s.close()
            raise ConfigError(
                f"job API: the render ledger or queue does not answer: {str(e).splitlines()[0]}"
            ) from None
    return Ingress(settings, secrets, producer, jobs), socks


def uvicorn_config(settings: IngressSettings, ingress: Ingress) -> uvicorn.Config:
    """How uvicorn serves the app: the connection cap, TLS, the drain."""
    tls: dict[str, Any] = {}
    if settings.tls_certfile is not None:
        tls = {"ssl_certfile": str(settings.tls_certfile), "ssl_keyfile": str(settings.tls_keyfile)}
        if settings.tls_client_ca is not None:
            tls |= {"ssl_ca_certs": str(settings.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return uvicorn.Config(
        create_app(ingress),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,  # our JSON lines, not uvicorn's own format
        access_log=False,  # rejections are logged; a line per accepted request is noise
        server_header=False,
        # Connections beyond this are answered 503 at once; the body deadline and the
        # unauthenticated byte budget (ingress.app) bound what each one may hold.
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=int(settings.shutdown_grace.total_seconds()) or 1,
        **tls,
    )


def serve(settings: IngressSettings) -> int:
    ingress, socks = prepare(settings)
    config = uvicorn_config(settings, ingress)
    server = DrainingServer(config)
    logging.getLogger("uvicorn.error").addFilter(drop_color_message)
    scheme = "https" if config.ssl_certfile else "http"
    log.info(
        "ingress listening on %s://%s, producing to %s",
        scheme,
        settings.listen,
        redact_url(settings.sink or ""),
        extra={"key_ids": sorted(ingress.secrets)},  # ids only, never a secret
    )
    try:
        server.run(sockets=socks)
    except ssl.SSLError as e:
        raise ConfigError(f"TLS setup failed: {e}; check tls_certfile and tls_keyfile") from None
    return 0 if server.started else 1


def ingress_command(args: Any) -> int:
    """``tilepipe ingress``: flags over ``TILEPIPE_*`` variables over defaults."""
    from tilepipe.logs import setup_logging

    settings = settings_from_flags(IngressSettings, args)
    setup_logging(settings.log_level)
    return serve(settings)
