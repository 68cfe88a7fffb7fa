"""Extra CA certificates: PEM files, bundles and folders, with real certificates from openssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from isofeat import extra_ca
from isofeat.cli import main
from isofeat.errors import IsofeatError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def make_ca(folder: Path, name: str) -> Path:
    """A throwaway self-signed CA certificate (EC keys: fast to generate)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert = folder / f"{name}.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(folder / f"{name}.key"), "-out", str(cert), "-days", "2",
            "-subj", f"/CN=isofeat test {name}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert


def fingerprint(path: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().split("=", 1)[1].replace(":", "").lower()


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cas")
    return {name: make_ca(folder, name) for name in ("one", "two", "three")}


def test_a_single_pem_file_gives_one_certificate_written_as_one_crt(
    cas: dict[str, Path], tmp_path: Path
) -> None:
    ca_set = extra_ca.load(cas["one"])
    assert len(ca_set) == 1
    written = extra_ca.write_into(ca_set, tmp_path / "ctx")
    assert [p.suffix for p in written] == [".crt"]
    assert written[0].stat().st_mode & 0o777 == 0o644
    # The rewritten file is the same certificate, byte for byte in DER.
    assert fingerprint(written[0]) == fingerprint(cas["one"]) == ca_set.certificates[0].sha256


def test_a_bundle_is_split_into_one_file_per_certificate(
    cas: dict[str, Path], tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(
        "# corporate bundle\n" + cas["one"].read_text() + "\nsome text\n" + cas["two"].read_text()
    )
    written = extra_ca.write_into(extra_ca.load(bundle), tmp_path / "ctx")
    assert len(written) == 2
    for path in written:
        assert path.read_text().count("-----BEGIN CERTIFICATE-----") == 1
    assert {fingerprint(p) for p in written} == {fingerprint(cas["one"]), fingerprint(cas["two"])}


def test_a_folder_is_read_recursively_and_duplicates_count_once(
    cas: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "local-cas"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(cas["one"], folder / "one.crt")
    (folder / "bundle.pem").write_text(cas["two"].read_text() + cas["one"].read_text())
    shutil.copy(cas["three"], folder / "nested" / "three.CRT")
    (folder / "README.txt").write_text("not a certificate, and not read\n")
    ca_set = extra_ca.load(folder)
    assert len(ca_set) == 3
    assert {c.sha256 for c in ca_set.certificates} == {
        fingerprint(cas[n]) for n in ("one", "two", "three")
    }


def test_the_set_hash_ignores_order_and_changes_with_the_set(
    cas: dict[str, Path], tmp_path: Path
) -> None:
    ab = tmp_path / "ab.pem"
    ba = tmp_path / "ba.pem"
    ab.write_text(cas["one"].read_text() + cas["two"].read_text())
    ba.write_text(cas["two"].read_text() + cas["one"].read_text())
    assert extra_ca.load(ab).sha256 == extra_ca.load(ba).sha256
    assert extra_ca.load(ab).sha256 != extra_ca.load(cas["one"]).sha256
    assert extra_ca.load(cas["one"]).sha256 != extra_ca.EMPTY.sha256


def test_a_file_without_a_certificate_block_names_the_file_and_the_fix(
    cas: dict[str, Path], tmp_path: Path
) -> None:
    key_only = tmp_path / "key.pem"
    shutil.copy(cas["one"].with_suffix(".key"), key_only)
    with pytest.raises(IsofeatError) as info:
        extra_ca.load(key_only)
    assert str(key_only) in str(info.value)
    assert "BEGIN CERTIFICATE" in str(info.value)
    assert info.value.code == 2


def test_a_der_file_is_refused_with_the_conversion_command(
    cas: dict[str, Path], tmp_path: Path
) -> None:
    der = tmp_path / "ca.der"
    subprocess.run(
        ["openssl", "x509", "-in", str(cas["one"]), "-outform", "der", "-out", str(der)],
        check=True,
    )
    with pytest.raises(IsofeatError) as info:
        extra_ca.load(der)
    assert "openssl x509 -inform der" in str(info.value)


def test_corrupt_base64_inside_a_block_is_refused(cas: dict[str, Path], tmp_path: Path) -> None:
    lines = cas["one"].read_text().splitlines()
    lines[2] = "!!!!" + lines[2][4:]
    broken = tmp_path / "broken.crt"
    broken.write_text("\n".join(lines) + "\n")
    with pytest.raises(IsofeatError, match="certificate 1 is not valid base64"):
        extra_ca.load(broken)


def test_missing_path_empty_folder_and_unreadable_file_are_errors(
    cas: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(IsofeatError, match="no such file or folder"):
        extra_ca.load(tmp_path / "nope.pem")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IsofeatError, match=r"no \*\.crt or \*\.pem"):
        extra_ca.load(tmp_path / "empty")

    target = tmp_path / "locked.pem"
    shutil.copy(cas["one"], target)
    real_read_bytes = Path.read_bytes

    # Root reads any file whatever its mode (and CI runs as root), so the permission error
    # the kernel would give an ordinary user is raised here for this one file.
    def read_bytes(self: Path) -> bytes:
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(IsofeatError) as info:
        extra_ca.load(target)
    assert "cannot read" in str(info.value) and str(target) in str(info.value)


def test_option_wins_over_the_environment_and_nothing_means_keep(
    cas: dict[str, Path],
) -> None:
    env = {"ISOFEAT_EXTRA_CA_CERTS": str(cas["two"])}
    from_env = extra_ca.from_option(None, env)
    from_opt = extra_ca.from_option(cas["one"], env)
    assert from_env is not None and from_opt is not None
    assert from_env.sha256 == extra_ca.load(cas["two"]).sha256
    assert from_opt.sha256 == extra_ca.load(cas["one"]).sha256
    assert extra_ca.from_option(None, {}) is None
    assert extra_ca.from_option("", {"ISOFEAT_EXTRA_CA_CERTS": ""}) is None


def test_cli_rejects_a_bad_extra_ca_before_touching_docker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An engine that cannot exist: if the CLI talked to Docker first, the error would differ.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    bad = tmp_path / "not-a-cert.crt"
    bad.write_text("hello\n")
    assert main(["image", "build", "base", "--extra-ca", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "fix:" in err and "Docker engine" not in err


def test_cli_without_an_engine_says_how_to_start_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.delenv("ISOFEAT_EXTRA_CA_CERTS", raising=False)
    assert main(["image", "build", "base"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Docker engine" in err and "scripts/bootstrap" in err
