"""Device URIs: parsing, canonical ids, clear one-line errors."""

from __future__ import annotations

import getpass

import pytest

from devices.errors import DeviceError
from devices.local import LocalDevice
from devices.uri import connect, parse_device_uri
from rundir import device_dirname


@pytest.mark.parametrize(
    "uri, canonical",
    [
        ("local", "local"),
        ("ssh://pi@board.lan:2222", "ssh://pi@board.lan:2222"),
        ("ssh://pi@10.0.0.7", "ssh://pi@10.0.0.7:22"),
        (f"ssh://{getpass.getuser()}@h:22", f"ssh://{getpass.getuser()}@h:22"),
        ("ssh://h", f"ssh://{getpass.getuser()}@h:22"),
        ("ssh://pi@[fe80::1]:22", "ssh://pi@[fe80::1]:22"),
        ("ssh://pi@h:22?python=/opt/venv/bin/python3", "ssh://pi@h:22"),
        ("adb://emulator-5554", "adb://emulator-5554"),
        ("adb://127.0.0.1:5555", "adb://127.0.0.1:5555"),
        ("emulator://Pixel_7_API_34", "emulator://Pixel_7_API_34"),
    ],
)
def test_parse_and_canonical(uri: str, canonical: str) -> None:
    assert parse_device_uri(uri).canonical == canonical


def test_fields_and_dirname() -> None:
    u = parse_device_uri("ssh://pi@board:2200?python=/opt/v/bin/python3")
    assert (u.scheme, u.user, u.host, u.port, u.python) == ("ssh", "pi", "board", 2200, "/opt/v/bin/python3")
    assert device_dirname(u.canonical) == "ssh_pi@board_2200"
    assert parse_device_uri("adb://R58M123").serial == "R58M123"
    assert parse_device_uri("emulator://avd1").avd == "avd1"


@pytest.mark.parametrize(
    "uri, words",
    [
        ("", "not a device URI"),
        ("board.lan", "not a device URI"),
        ("telnet://x", "unknown device scheme 'telnet'"),
        ("ssh://pi@:22", "no host name"),
        ("ssh://pi@h:99999", "bad ssh URI"),
        ("ssh://pi:secret@h", "never put a password"),
        ("ssh://pi@h/some/path", "unexpected path"),
        ("ssh://pi@h?foo=1", "only URI option"),
        ("adb://", "bad adb serial"),
        ("adb://bad serial", "bad adb serial"),
        ("emulator://", "bad AVD name"),
        ("local://x", "takes no address"),
    ],
)
def test_bad_uris_are_one_line(uri: str, words: str) -> None:
    with pytest.raises(DeviceError, match=words) as exc:
        parse_device_uri(uri)
    assert "\n" not in str(exc.value)
    assert "secret" not in str(exc.value)


def test_connect_local_and_missing_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = connect("local")
    assert isinstance(dev, LocalDevice) and dev.id == "local"
    monkeypatch.delenv("COMPLEAK_TEST_NO_SUCH_VAR", raising=False)
    with pytest.raises(DeviceError, match="COMPLEAK_TEST_NO_SUCH_VAR"):
        connect("ssh://pi@192.0.2.1", password_env="COMPLEAK_TEST_NO_SUCH_VAR")
