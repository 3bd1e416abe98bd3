"""What a cluster connection's TLS handshake costs the client, full against resumed.

    python bench/tls.py [--handshakes 300]

A first pass opens two TLS connections per cluster (the second for the second watch),
and every controller poll opens one more, so handshakes are a fifth of the event
loop's CPU in a first pass (issue 10's profile).  TLS 1.3 resumption (a session ticket
from the cluster's first connection offered on the next) skips the certificate chain's
parsing and verification on the client and the signature on the server; the key
exchange is still made.  This measures the client's CPU per handshake against a TLS
server in a process of its own (an ECDSA P-256 certificate, as the sandbox's, and what
k3s and kind serve), full handshakes (the baseline) and resumed ones, alternately in
rounds, and prints the medians and their ratio.  asyncio does not pass ``session=`` to
``wrap_bio``, so the daemon does not resume today; this says what it would gain.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import socket
import ssl
import statistics
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROUNDS = 7


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _serve(listener: socket.socket, cert: str, key: str) -> None:
    """Accept, handshake, answer one byte, close; until killed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    while True:
        conn, _ = listener.accept()
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                if tls.recv(1):
                    tls.sendall(b"k")
        except (ssl.SSLError, OSError):
            pass


def _handshakes(port: int, context: ssl.SSLContext, count: int, *,
                resume: bool) -> tuple[float, int]:
    """Client CPU seconds per handshake (handshake and one round trip), and how many of
    the handshakes the server really resumed."""
    session: ssl.SSLSession | None = None
    spent, reused = 0.0, 0
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        started = time.thread_time()
        with context.wrap_socket(sock, server_hostname="localhost",
                                 session=session if resume else None) as tls:
            tls.sendall(b"p")
            tls.recv(1)   # the server's TLS 1.3 tickets arrive before its answer
            spent += time.thread_time() - started
            reused += tls.session_reused
            if resume and tls.session is not None and tls.session.has_ticket:
                session = tls.session
    return spent / count, reused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=300,
                        help="handshakes per kind and round (7 rounds)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sealfleet-tls-bench-") as tmp:
        cert, key = _self_signed(Path(tmp))
        listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        port = listener.getsockname()[1]
        server = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(listener, str(cert), str(key)), daemon=True)
        server.start()
        try:
            context = ssl.create_default_context(cafile=str(cert))
            _handshakes(port, context, 20, resume=True)   # warm up both sides
            full: list[float] = []
            resumed: list[float] = []
            reused = 0
            for _ in range(ROUNDS):
                full.append(_handshakes(port, context, args.handshakes, resume=False)[0])
                cost, sessions_reused = _handshakes(port, context, args.handshakes,
                                                    resume=True)
                resumed.append(cost)
                reused += sessions_reused
        finally:
            server.kill()
            server.join()
            listener.close()
    full_ms, resumed_ms = statistics.median(full) * 1000, statistics.median(resumed) * 1000
    print(f"{ssl.OPENSSL_VERSION}; ECDSA P-256 server certificate; {ROUNDS} rounds of "
          f"{args.handshakes} handshakes each; the server resumed {reused} of the "
          f"{ROUNDS * (args.handshakes - 1)} that offered a session (a round's first has "
          "none)")
    print(f"client CPU per handshake: full (baseline) {full_ms:.3f} ms "
          f"(rounds {min(full) * 1000:.3f}-{max(full) * 1000:.3f}), resumed {resumed_ms:.3f} ms "
          f"(rounds {min(resumed) * 1000:.3f}-{max(resumed) * 1000:.3f}): "
          f"ratio {resumed_ms / full_ms:.2f}")


if __name__ == "__main__":
    main()
