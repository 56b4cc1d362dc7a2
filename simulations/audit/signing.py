"""Ed25519 signatures over JSON documents (the privacy audit report, ``fedrec audit report``).

Signed document format::

    {"payload": {...},
     "signature": {"algorithm": "Ed25519",
                   "public_key_sha256": "<hex sha256 of the raw 32-byte public key>",
                   "value": "<standard base64 of the 64-byte signature>"}}

The signature covers the *canonical serialisation* of ``payload`` only::

    json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
               allow_nan=False).encode("utf-8")

so the document can be re-indented or its keys reordered without breaking the signature,
while any change of a value (one digit of an ε) breaks it. Floats are written as Python's
shortest round-trip repr; a verifier in another language must reproduce that (or verify with
this module). ``public_key_sha256`` is not signed: it only names the key, so a verifier can
say "signed by another key" instead of "changed"; a forged one still fails the signature.
Nothing else may appear at the top level or in ``signature`` (unsigned additions would pass
for signed content).

Keys are PEM files: PKCS#8 private key (unencrypted, mode 0600) and SubjectPublicKeyInfo
public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "Ed25519"
DOCUMENT_KEYS = {"payload", "signature"}
SIGNATURE_KEYS = {"algorithm", "public_key_sha256", "value"}


class SignatureError(Exception):
    """The document does not verify: changed, signed with another key, or malformed. One line."""


class KeyFileError(ValueError):
    """A key file that cannot be read or written as asked. The message is one line and names it."""


def canonical_bytes(payload: Any) -> bytes:
    """The bytes a signature covers (see the module docstring). NaN/Infinity are refused: they
    are not JSON, and another verifier could not reproduce them."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def payload_sha256(payload: Any) -> str:
    """sha256 (hex) of the canonical payload: lets the Markdown/HTML renderings name the JSON
    they were made from."""
    return hashlib.sha256(canonical_bytes(payload)).hexdigest()


def public_key_sha256(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _write_new(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write ``path`` atomically with ``mode`` set before any byte is written; without
    ``overwrite`` the final step fails rather than replace a file that appeared meanwhile."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; a private key must not be wider
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic "create unless it exists"
            except FileExistsError:
                raise KeyFileError(f"{path}: already exists; not overwritten (use --force / overwrite=True)") from None
            except OSError:  # a file system without hard links: check, then rename
                if path.exists():
                    raise KeyFileError(f"{path}: already exists; not overwritten") from None
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def generate_keypair(private_path: str | Path, public_path: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """A new Ed25519 key pair as PEM files: the private key (PKCS#8, unencrypted, mode 0600)
    and the public key (mode 0644). Refuses to replace either existing file unless
    ``overwrite``: a replaced key would make every report signed with it unverifiable."""
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise KeyFileError(f"{private_path}: the private and the public key need different files")
    if not overwrite:
        for p in (private_path, public_path):
            if p.exists():
                raise KeyFileError(f"{p}: already exists; not overwritten (use --force / overwrite=True)")
    for p in (private_path, public_path):
        if not p.parent.is_dir():
            raise KeyFileError(f"{p.parent}: no such folder")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600, overwrite)
    _write_new(public_path, public_pem, 0o644, overwrite)
    return private_path, public_path


def _read_key(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    data = _read_key(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(
            f"{path}: the private key is encrypted; fedrec expects an unencrypted PKCS#8 key (mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    data = _read_key(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        hint = " (this is a private key: verify with the .pub.pem file)" if b"PRIVATE KEY" in data else ""
        raise KeyFileError(f"{path}: not a PEM public key{hint}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
    return key


def sign_json(payload: dict, private_key_path: str | Path) -> dict:
    """The signed document ``{"payload": payload, "signature": {...}}`` (format above)."""
    if not isinstance(payload, dict):
        raise TypeError(f"sign_json: the payload must be a dict, not {type(payload).__name__}")
    try:
        message = canonical_bytes(payload)
    except ValueError as e:  # NaN/Infinity somewhere
        raise ValueError(f"sign_json: the payload is not plain JSON ({e})") from None
    key = load_private_key(private_key_path)
    return {
        "payload": payload,
        "signature": {
            "algorithm": ALGORITHM,
            "public_key_sha256": public_key_sha256(key.public_key()),
            "value": base64.b64encode(key.sign(message)).decode("ascii"),
        },
    }


def verify_json(document: Any, public_key_path: str | Path) -> None:
    """Return when ``document`` carries a valid Ed25519 signature of its payload by the key in
    ``public_key_path``; else raise SignatureError (one line) saying what is wrong.
    KeyFileError when the public key file itself is unusable."""
    key = load_public_key(public_key_path)
    if not isinstance(document, dict):
        raise SignatureError(f"malformed document: a JSON object expected, got {type(document).__name__}")
    if set(document) != DOCUMENT_KEYS:
        extra, missing = sorted(set(document) - DOCUMENT_KEYS), sorted(DOCUMENT_KEYS - set(document))
        raise SignatureError(
            f"malformed document: top-level keys must be exactly payload, signature "
            f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})"
        )
    sig = document["signature"]
    if sig is None:
        raise SignatureError("the document is not signed (signature is null)")
    if not isinstance(sig, dict) or set(sig) != SIGNATURE_KEYS:
        raise SignatureError(f"malformed document: signature must hold exactly {', '.join(sorted(SIGNATURE_KEYS))}")
    if sig["algorithm"] != ALGORITHM:
        raise SignatureError(f"unsupported signature algorithm {sig['algorithm']!r} (expected {ALGORITHM})")
    if not isinstance(document["payload"], dict):
        raise SignatureError("malformed document: payload must be a JSON object")
    try:
        value = base64.b64decode(str(sig["value"]), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("malformed document: signature.value is not base64") from None
    if len(value) != 64:
        raise SignatureError(f"malformed document: signature.value has {len(value)} bytes, an Ed25519 signature 64")
    try:
        message = canonical_bytes(document["payload"])
    except ValueError:
        raise SignatureError("malformed document: the payload holds NaN or Infinity (not JSON)") from None
    expected = public_key_sha256(key)
    try:
        key.verify(value, message)
    except InvalidSignature:
        if sig["public_key_sha256"] != expected:
            raise SignatureError(
                f"signed by another key (sha256 {str(sig['public_key_sha256'])[:16]}…), "
                f"not by {public_key_path} (sha256 {expected[:16]}…)"
            ) from None
        raise SignatureError("signature does not match the payload: the document was changed after signing") from None
    if sig["public_key_sha256"] != expected:
        # Valid signature but a wrong key name: someone edited the unsigned field.
        raise SignatureError("signature.public_key_sha256 does not name the key that signed (the field was edited)")
