"""``fedrec certs``: CA, SuperLink TLS certificate, SuperNode authentication keys (Flower 1.41)."""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from common.deployment import certs
from simulations.cli import certs as certs_cli

ORGS = ["acme", "beta-2"]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("certs")
    written = certs.generate(root, ORGS, server_names=["fl.example.org", "10.0.0.5"], days=30)
    return root, written


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_written_and_private_keys_0600(bundle):
    root, written = bundle
    expected = {"ca.key", "ca.crt", "server.key", "server.crt", "README.txt"}
    for org in ORGS:
        expected |= {f"supernodes/{org}/auth.key", f"supernodes/{org}/auth.pub", f"supernodes/{org}/ca.crt"}
    assert set(written) == expected
    for rel, path in written.items():
        assert path == root / rel and path.is_file()
        mode = stat.S_IMODE(path.stat().st_mode)
        if rel.endswith(".key"):
            assert mode == 0o600, rel
        else:
            assert mode & 0o077 != 0o077 and not mode & 0o022, rel  # readable, not writable by others
    assert not list(root.rglob("*.tmp"))
    readme = (root / "README.txt").read_text()
    assert "--auth-supernode-private-key" in readme and "flwr supernode register" in readme


def test_ca_and_server_certificate(bundle):
    root, _ = bundle
    ca, server = _cert(root / "ca.crt"), _cert(root / "server.crt")
    ca.verify_directly_issued_by(ca)  # self-signed
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),  # always: the SuperLink's SuperExec connects over loopback
    }
    now = dt.datetime.now(dt.timezone.utc)
    for cert in (ca, server):
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
        assert cert.not_valid_after_utc - now < dt.timedelta(days=30, minutes=1)
    assert (root / "supernodes" / "acme" / "ca.crt").read_bytes() == (root / "ca.crt").read_bytes()


def test_server_cert_and_key_pass_a_tls_handshake(bundle):
    """The CA verifies the server certificate for 127.0.0.1 in a real TLS handshake."""
    root, _ = bundle
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(root / "server.crt", root / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(root / "ca.crt"))
    a, b = socket.socketpair()
    with a, b:
        srv = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
        cli = client_ctx.wrap_socket(b, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        srv.setblocking(False), cli.setblocking(False)
        done = {"srv": False, "cli": False}
        deadline = time.monotonic() + 10
        while not all(done.values()) and time.monotonic() < deadline:
            for name, s in (("srv", srv), ("cli", cli)):
                if not done[name]:
                    try:
                        s.do_handshake()
                        done[name] = True
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
        assert all(done.values())
        assert cli.getpeercert()["subjectAltName"]


def test_supernode_keys_load_with_flowers_own_loaders(bundle):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    root, _ = bundle
    seen = set()
    for org in ORGS:
        folder = root / "supernodes" / org
        # exactly what `flower-supernode --auth-supernode-private-key PATH` does
        private, public = _try_setup_client_authentication(
            argparse.Namespace(auth_supernode_private_key=str(folder / "auth.key"), auth_supernode_public_key=None)
        )
        assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
        # exactly what `flwr supernode register PATH` sends to the SuperLink
        registered = try_load_public_key(folder / "auth.pub")
        assert registered == public_key_to_bytes(public)  # the pair matches
        seen.add(registered)
    assert len(seen) == len(ORGS)


def test_second_run_refuses_then_force_regenerates(tmp_path, capsys):
    argv = [str(tmp_path), "--org", "acme", "--days", "5"]
    assert certs_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "flower-superlink --ssl-ca-certfile" in out and "--auth-supernode-private-key" in out
    serial = _cert(tmp_path / "server.crt").serial_number
    ca_key = (tmp_path / "ca.key").read_bytes()

    assert certs_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "ca.key") in err and "--force" in err
    assert (tmp_path / "ca.key").read_bytes() == ca_key

    # an existing file further down the list is named too, and nothing else is touched
    (tmp_path / "ca.key").unlink()
    with pytest.raises(FileExistsError, match="server.key"):
        certs.generate(tmp_path, ["acme"])
    assert not (tmp_path / "ca.key").exists()

    assert certs_cli.main([*argv, "--force"]) == 0
    assert _cert(tmp_path / "server.crt").serial_number != serial
    assert _cert(tmp_path / "server.crt").verify_directly_issued_by(_cert(tmp_path / "ca.crt")) is None
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "orgs, message",
    [
        ([], "at least one"),
        (["../evil"], "invalid organisation"),
        (["a/b"], "invalid organisation"),
        ([".hidden"], "invalid organisation"),
        (["has space"], "invalid organisation"),
        ([""], "invalid organisation"),
        (["acme", "ACME"], "duplicate"),
        (["x" * 64], "invalid organisation"),
    ],
)
def test_bad_organisation_names_refused(tmp_path, orgs, message):
    with pytest.raises(certs.CertsError, match=message):
        certs.generate(tmp_path / "out", orgs)
    assert not (tmp_path / "out").exists()


def test_bad_server_name_and_days_refused(tmp_path, capsys):
    with pytest.raises(certs.CertsError, match="server name"):
        certs.generate(tmp_path, ["acme"], server_names=["not a host"])
    with pytest.raises(certs.CertsError, match="days"):
        certs.generate(tmp_path, ["acme"], days=0)
    assert certs_cli.main([str(tmp_path), "--org", "a/b"]) == 2
    assert "invalid organisation name 'a/b'" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (BIN / "flower-superlink").exists(), reason="flower-superlink not installed")
def test_real_superlink_starts_with_these_files_and_registers_a_supernode(bundle, tmp_path):
    """flower-superlink (TLS + --enable-supernode-auth) serves HTTPS with server.crt, the CA
    verifies it, and `flwr supernode register` accepts an organisation's auth.pub."""
    root, _ = bundle
    port = _free_port()
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_HOME": str(tmp_path / "flwr"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "fedrec"\n\n[superlink.fedrec]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{root / "ca.crt"}"\n'
    )
    log = tmp_path / "superlink.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile",
                str(root / "ca.crt"),
                "--ssl-certfile",
                str(root / "server.crt"),
                "--ssl-keyfile",
                str(root / "server.key"),
                "--enable-supernode-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--isolation",
                "process",
            ],  # no SuperExec child to clean up
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        ctx = ssl.create_default_context(cafile=str(root / "ca.crt"))
        deadline, status = time.monotonic() + 25, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
                conn.request("GET", "/")
                status = conn.getresponse().status
                conn.close()
                break
            except (ConnectionRefusedError, ConnectionResetError, socket.timeout, ssl.SSLEOFError):
                time.sleep(0.3)
        assert status is not None, f"SuperLink did not serve HTTPS; log:\n{log.read_text()[-3000:]}"
        reg = subprocess.run(
            [
                str(BIN / "flwr"),
                "supernode",
                "register",
                str(root / "supernodes" / "acme" / "auth.pub"),
                "fedrec",
                "--name",
                "acme",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert reg.returncode == 0 and "registered successfully" in reg.stdout, reg.stdout + reg.stderr
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
