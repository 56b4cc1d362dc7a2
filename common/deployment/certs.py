"""Key material for an on-premise Flower deployment: ``fedrec certs DIR``.

Writes, under DIR:

- ``ca.key`` / ``ca.crt``: a private certificate authority (EC P-384, self-signed).
- ``server.key`` / ``server.crt``: the SuperLink's TLS certificate, signed by the CA, with a
  subjectAltName for every server name (DNS names, IP addresses for values that parse as IPs).
  ``127.0.0.1`` is always included: Flower 1.41's SuperLink starts its own SuperExec, which
  connects back to the SuperLink's HTTPS port on the loopback address and verifies it with
  the same CA (flwr/superlink/cli/flower_superlink.py, ``_start_superexec_if_needed``).
- ``supernodes/<org>/``: one folder per organisation, the bundle shipped to it:
  ``auth.key`` (SuperNode authentication private key, OpenSSH format, EC P-384, what
  ``flower-supernode --auth-supernode-private-key`` loads with ``load_ssh_private_key``),
  ``auth.pub`` (the matching ``ecdsa-sha2-nistp384 ...`` OpenSSH public key, what
  ``flwr supernode register`` loads with ``load_ssh_public_key``) and a copy of ``ca.crt``
  (for ``flower-supernode --root-certificates``).
- ``README.txt``: which file goes where, and the commands.

Flower 1.41 has no public-key list file any more (``--auth-list-public-keys`` is rejected):
the SuperLink runs with ``--enable-supernode-auth`` and each public key is registered with
``flwr supernode register``.

Private keys are written with mode 0600; every file is written atomically (temporary file in
the same folder + ``os.replace``). Existing key or certificate files are never replaced unless
``overwrite=True``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shlex
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8000  # flower-superlink --port default in Flower 1.41 (SuperLink HTTP API)

_ORG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_DNS_RE = re.compile(
    r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class CertsError(ValueError):
    """Invalid input (organisation or server name, days)."""


def validate_organisations(organisations: Sequence[str]) -> list[str]:
    """Return the names, or raise CertsError: each must be a safe folder name, all unique."""
    orgs = list(organisations)
    if not orgs:
        raise CertsError("at least one organisation is needed (--org NAME)")
    seen: dict[str, str] = {}
    for org in orgs:
        if not isinstance(org, str) or not _ORG_RE.match(org):
            raise CertsError(
                f"invalid organisation name {org!r}: use 1-63 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        key = org.lower()  # case-insensitive file systems would merge 'Acme' and 'acme'
        if key in seen:
            raise CertsError(f"duplicate organisation name {org!r} (also given as {seen[key]!r})")
        seen[key] = org
    return orgs


def _san_entries(server_names: Sequence[str]) -> tuple[list[str], list[x509.GeneralName]]:
    names: list[str] = []
    for name in [*server_names, LOOPBACK]:
        name = str(name).strip()
        if name and name not in names:
            names.append(name)
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
            continue
        except ValueError:
            pass
        if len(name) > 253 or not _DNS_RE.match(name):
            raise CertsError(f"invalid server name {name!r}: not a DNS name or an IP address")
        entries.append(x509.DNSName(name.lower()))
    return names, entries


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrec"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _ca(now: dt.datetime, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name("fedrec deployment CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign=False, cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _key_usage(sign: bool, cert_sign: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs); a TLS server signs its handshakes."""
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _server(
    now: dt.datetime,
    days: int,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[str],
    entries: list[x509.GeneralName],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign=True, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(entries), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def _supernode_keys(org: str) -> tuple[bytes, bytes]:
    """OpenSSH private key + ``ecdsa-sha2-nistp384 AAAA... org`` public key line."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + f" fedrec-{org}\n".encode()


def generate(
    directory: str | os.PathLike,
    organisations: list[str],
    server_names: Sequence[str] = DEFAULT_SERVER_NAMES,
    days: int = 365,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the CA, the SuperLink certificate and one SuperNode key pair per organisation.

    Returns {relative path (posix) -> absolute path} of every file written. Raises CertsError
    on bad input and FileExistsError (naming the file) when a key or certificate already
    exists and ``overwrite`` is False; in both cases nothing is written.
    """
    orgs = validate_organisations(organisations)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise CertsError(f"days must be a positive whole number, got {days!r}")
    names, entries = _san_entries(server_names)
    root = Path(directory).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise CertsError(f"{root} exists and is not a folder")

    secret = ["ca.key", "server.key", *(f"supernodes/{o}/auth.key" for o in orgs)]
    public = ["ca.crt", "server.crt"]
    for o in orgs:
        public += [f"supernodes/{o}/auth.pub", f"supernodes/{o}/ca.crt"]
    if not overwrite:
        for rel in [*secret, *public]:
            if (root / rel).exists():
                raise FileExistsError(f"{root / rel} already exists; use --force (overwrite=True) to replace it")

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, ca_cert = _ca(now, days)
    server_key, server_cert = _server(now, days, ca_key, ca_cert, names, entries)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    content: dict[str, bytes] = {
        "ca.key": _key_pem(ca_key),
        "ca.crt": ca_pem,
        "server.key": _key_pem(server_key),
        "server.crt": server_cert.public_bytes(serialization.Encoding.PEM),
    }
    for o in orgs:
        private, pub = _supernode_keys(o)
        content[f"supernodes/{o}/auth.key"] = private
        content[f"supernodes/{o}/auth.pub"] = pub
        content[f"supernodes/{o}/ca.crt"] = ca_pem
    content["README.txt"] = readme(root, orgs, names, days).encode()

    written: dict[str, Path] = {}
    for rel, data in content.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, data, 0o600 if rel in secret else 0o644)
        written[rel] = path
    return written


def commands(root: Path, orgs: Sequence[str], server_names: Sequence[str], port: int = DEFAULT_PORT) -> str:
    """The Flower 1.41 commands that use these files (checked against its --help)."""
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    host = next((n for n in server_names if n not in ("localhost", LOOPBACK)), server_names[0])
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [
        "# 1. Coordinator: the SuperLink (Fleet, Control and Runtime APIs share one HTTPS port)",
        f"flower-superlink --ssl-ca-certfile {q(root / 'ca.crt')} --ssl-certfile {q(root / 'server.crt')} \\",
        f"    --ssl-keyfile {q(root / 'server.key')} --enable-supernode-auth \\",
        f"    --host 0.0.0.0 --port {port} --database superlink-state.db",
        "",
        "# 2. Coordinator: register every organisation's public key with the SuperLink",
        "#    needs a connection in $FLWR_HOME/config.toml (default ~/.flwr/config.toml):",
        "#      [superlink.fedrec]",
        f'#      address = "{addr}"',
        f'#      root-certificates = "{root / "ca.crt"}"',
    ]
    for o in orgs:
        lines.append(f"flwr supernode register {q(root / 'supernodes' / o / 'auth.pub')} fedrec --name {q(o)}")
    lines += [
        "",
        "# 3. Each organisation, with its own folder supernodes/<org>/ copied to its machine:",
        f"flower-supernode --superlink {addr} --root-certificates supernodes/<org>/ca.crt \\",
        "    --auth-supernode-private-key supernodes/<org>/auth.key",
    ]
    return "\n".join(lines) + "\n"


def readme(root: Path, orgs: Sequence[str], server_names: Sequence[str], days: int) -> str:
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    org_lines = "\n".join(f"  supernodes/{o}/" for o in orgs)
    return f"""fedrec deployment key material (Flower 1.41), created {created}, valid {days} days.
SuperLink certificate names: {", ".join(server_names)}

Which file goes where
---------------------
ca.key       the CA's private key. Keep it OFFLINE; it is needed only to issue new
             certificates. Never copy it to the SuperLink or to any organisation.
ca.crt       the CA certificate (public). SuperLink: --ssl-ca-certfile.
             SuperNodes and `flwr`: --root-certificates / root-certificates.
server.key   the SuperLink's TLS private key (mode 0600). SuperLink machine only:
             flower-superlink --ssl-keyfile.
server.crt   the SuperLink's TLS certificate: flower-superlink --ssl-certfile.
supernodes/<org>/   one folder per organisation; send each organisation only its own
             folder, over a channel you trust:
  auth.key   the SuperNode authentication private key (OpenSSH format, EC P-384, 0600):
             flower-supernode --auth-supernode-private-key. Stays with the organisation.
  auth.pub   its public key (OpenSSH line). The coordinator registers it with
             `flwr supernode register auth.pub <connection>`; the SuperLink only accepts
             registered SuperNodes when started with --enable-supernode-auth.
  ca.crt     a copy of ../../ca.crt: flower-supernode --root-certificates.

Organisations:
{org_lines}

Commands
--------
{commands(root, orgs, server_names)}
Notes: 127.0.0.1 is always in the SuperLink certificate, because the SuperLink's own
SuperExec connects to it over the loopback address with this CA. Without --database the
SuperLink keeps registrations in memory and loses them on restart. Re-running
`fedrec certs` with --force makes a NEW CA: every organisation then needs its new folder.
"""
