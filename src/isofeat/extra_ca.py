"""Extra CA certificates to trust inside every image isofeat builds.

Users behind TLS interception (corporate proxies, this project's own CI machine) give a PEM
file, possibly a bundle of several certificates, or a folder of ``*.crt`` / ``*.pem`` files.
We split that into one certificate per ``.crt`` file, because Debian's
``update-ca-certificates`` reads exactly one certificate per file, and we hash the set so that
an image built with another set is recognised as stale.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from isofeat import envvars
from isofeat.errors import IsofeatError

# Only real X.509 certificates: "TRUSTED CERTIFICATE" (OpenSSL's own format with trust
# settings) and keys are not something update-ca-certificates can use.
_PEM_CERT = re.compile(
    r"-----BEGIN CERTIFICATE-----(?P<body>.*?)-----END CERTIFICATE-----", re.DOTALL
)
_FOLDER_SUFFIXES = (".crt", ".pem")
# Folder name inside an image build context; the Dockerfile copies it.
CONTEXT_FOLDER = "extra-ca"


@dataclass(frozen=True)
class Certificate:
    """One certificate and where it came from (for messages)."""

    source: Path
    index: int  # 1-based position inside ``source``
    der: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    def pem(self) -> str:
        b64 = base64.b64encode(self.der).decode("ascii")
        lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
        return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


@dataclass(frozen=True)
class CaSet:
    """A de-duplicated set of certificates, in a stable order (by fingerprint)."""

    certificates: tuple[Certificate, ...] = ()

    @property
    def sha256(self) -> str:
        """A hash of the set; the empty set has a hash too, so "no extra CA" is comparable."""
        digest = hashlib.sha256()
        for cert in self.certificates:
            digest.update(cert.sha256.encode("ascii") + b"\n")
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.certificates)


EMPTY = CaSet()


def _fail(path: Path, problem: str, fix: str) -> IsofeatError:
    return IsofeatError(f"extra CA {path}: {problem}", fix=fix)


def _parse_file(path: Path) -> list[Certificate]:
    if not path.is_file():
        # A FIFO or a device would block the read, or never end it.
        raise _fail(path, "not a regular file", "pass a PEM file or a folder of them")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _fail(
            path,
            f"cannot read it ({err.strerror or err})",
            "pass a readable PEM file or folder with --extra-ca or ISOFEAT_EXTRA_CA_CERTS",
        ) from err
    return parse_pem(data, path)


def parse_pem(data: bytes, path: Path) -> list[Certificate]:
    """The certificates in PEM ``data``; ``path`` names the source in messages."""
    text = data.decode("ascii", errors="replace")
    certs: list[Certificate] = []
    for number, match in enumerate(_PEM_CERT.finditer(text), start=1):
        body = "".join(match.group("body").split())
        try:
            der = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as err:
            raise _fail(
                path,
                f"certificate {number} is not valid base64",
                "re-export the certificate in PEM form",
            ) from err
        # Every X.509 certificate is a DER SEQUENCE; anything else is a corrupt paste.
        if len(der) < 64 or der[0] != 0x30:
            raise _fail(
                path,
                f"certificate {number} does not decode to an X.509 certificate",
                "re-export the certificate in PEM form",
            )
        certs.append(Certificate(source=path, index=number, der=der))
    if not certs:
        if data[:1] == b"\x30":
            fix = f"it looks like DER; convert it: openssl x509 -inform der -in {path} -out CA.pem"
        else:
            fix = "give a PEM file holding at least one '-----BEGIN CERTIFICATE-----' block"
        raise _fail(path, "holds no '-----BEGIN CERTIFICATE-----' block", fix)
    return certs


def _folder_files(folder: Path) -> list[Path]:
    try:
        # Recursive like update-ca-certificates, which reads sub-folders of its local folder.
        found = sorted(
            p for p in folder.rglob("*") if p.suffix.lower() in _FOLDER_SUFFIXES and p.is_file()
        )
    except OSError as err:
        raise _fail(
            folder,
            f"cannot list the folder ({err.strerror or err})",
            "make the folder readable, or pass a PEM file instead",
        ) from err
    if not found:
        raise _fail(
            folder,
            "the folder holds no *.crt or *.pem file",
            "put the CA certificates there as PEM files named *.crt or *.pem, or pass one file",
        )
    return found


def load(path: Path) -> CaSet:
    """Read a PEM file (one or several certificates) or a folder of them.

    Raises :class:`IsofeatError` naming the file and the fix on anything unusable: a missing
    or unreadable path, a file without a certificate block, or an empty folder.
    """
    path = path.expanduser()
    if not path.exists():
        raise _fail(
            path,
            "no such file or folder",
            "pass an existing PEM file or folder with --extra-ca or ISOFEAT_EXTRA_CA_CERTS",
        )
    files = _folder_files(path) if path.is_dir() else [path]
    by_fingerprint: dict[str, Certificate] = {}
    for file in files:
        for cert in _parse_file(file):
            by_fingerprint.setdefault(cert.sha256, cert)
    return CaSet(tuple(by_fingerprint[k] for k in sorted(by_fingerprint)))


def from_option(option: str | Path | None, environ: Mapping[str, str] = os.environ) -> CaSet | None:
    """The CA set asked for: ``--extra-ca``, else ``$ISOFEAT_EXTRA_CA_CERTS``.

    ``None`` means the user asked for nothing: keep the set the existing image trusts.
    """
    value = str(option) if option else environ.get(envvars.ISOFEAT_EXTRA_CA_CERTS, "")
    if not value:
        return None
    return load(Path(value))


def from_pems(items: Iterable[tuple[Path, bytes]]) -> CaSet:
    """A set from already-read PEM files (for instance the ones inside an existing image)."""
    by_fingerprint: dict[str, Certificate] = {}
    for path, data in items:
        for cert in parse_pem(data, path):
            by_fingerprint.setdefault(cert.sha256, cert)
    return CaSet(tuple(by_fingerprint[k] for k in sorted(by_fingerprint)))


def write_into(ca_set: CaSet, folder: Path) -> list[Path]:
    """Write one ``.crt`` per certificate into ``folder`` (created; may stay empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, cert in enumerate(ca_set.certificates, start=1):
        # The fingerprint in the name keeps names unique and stable between builds.
        target = folder / f"isofeat-extra-{number:02d}-{cert.sha256[:16]}.crt"
        target.write_text(cert.pem(), encoding="ascii")
        target.chmod(0o644)
        written.append(target)
    return written
