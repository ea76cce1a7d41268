"""Throw-away credentials for `hookbus --check` on rendered configs (check_chart.py configcheck).

Real ones, so that --check (which parses PEM files, NKey seeds and .creds files, and builds
the librdkafka client, loading its CA/certificate/key) accepts them: an RSA CA and a client
certificate signed by it made with openssl, an NKey user seed encoded as the nkeys crate
expects (base32 of prefix + 32 random bytes + CRC-16/XMODEM), and a NATS .creds file
holding a structurally valid user JWT and that seed. Nothing here is used for a real
connection.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path

PREFIX_SEED = 18 << 3  # 'S'
PREFIX_USER = 20 << 3  # 'U'
PREFIX_ACCOUNT = 0  # 'A'


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


def nkey_seed(public_prefix: int = PREFIX_USER) -> str:
    """An NKey seed (SU... for a user)."""
    raw = bytes([PREFIX_SEED | (public_prefix >> 5), (public_prefix & 31) << 3]) + os.urandom(32)
    return _b32(raw + crc16(raw).to_bytes(2, "little"))


def nkey_public(prefix: int) -> str:
    """A well-formed public NKey (random: --check does not derive it from the seed)."""
    raw = bytes([prefix]) + os.urandom(32)
    return _b32(raw + crc16(raw).to_bytes(2, "little"))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def creds() -> str:
    """A NATS user .creds file as `nsc generate creds` writes it."""
    header = {"typ": "JWT", "alg": "ed25519-nkey"}
    claims = {"jti": _b64url(os.urandom(16)), "iat": int(time.time()), "iss": nkey_public(PREFIX_ACCOUNT),
              "name": "hookbus", "sub": nkey_public(PREFIX_USER),
              "nats": {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}}
    jwt = ".".join((_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()), _b64url(os.urandom(64))))
    return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{nkey_seed()}\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


class Material:
    """Generates each kind of file once under `root`, then copies it where asked."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._pki = False

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.root, check=True, capture_output=True)

    def pki(self) -> None:
        if self._pki:
            return
        self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                      "-days", "30", "-subj", "/CN=check-deploy CA")
        self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr",
                      "-subj", "/CN=hookbus")
        self._openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                      "-out", "tls.crt", "-days", "30")
        self._pki = True

    def content(self, kind: str) -> str:
        if kind in ("ca", "cert", "key"):
            self.pki()
            return (self.root / {"ca": "ca.crt", "cert": "tls.crt", "key": "tls.key"}[kind]).read_text()
        if kind == "seed":
            return nkey_seed() + "\n"
        if kind == "creds":
            return creds()
        return "check-deploy placeholder secret\n"

    def write(self, path: Path, kind: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.content(kind))
        path.chmod(0o600)


# Config keys that name a file, and what the file must hold.
FILE_KEYS = {
    "kafka.properties.ssl.ca.location": "ca",
    "kafka.properties.ssl.certificate.location": "cert",
    "kafka.properties.ssl.key.location": "key",
    "nats.tls_ca_file": "ca",
    "nats.tls_cert_file": "cert",
    "nats.tls_key_file": "key",
    "nats.nkey_seed_file": "seed",
    "nats.credentials_file": "creds",
}
