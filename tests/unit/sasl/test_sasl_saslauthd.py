"""The saslauthd wire format, sans-I/O: the request as libsasl's checkpw.c builds it, the
reply as it reads it (counted strings, 2-byte big-endian lengths)."""

from __future__ import annotations

import pytest

from mupdate.sasl.saslauthd import (
    MAX_REPLY,
    MAX_REQUEST,
    ReplyDecoder,
    SaslauthdError,
    SaslauthdReply,
    encode_request,
)


def test_request_is_four_counted_strings() -> None:
    assert encode_request("admin", b"secret", "mupdate", "") == (
        b"\x00\x05admin\x00\x06secret\x00\x07mupdate\x00\x00"
    )


def test_request_with_a_realm_and_utf8_login() -> None:
    login = "j\u00fcrgen"  # 7 bytes in UTF-8
    assert encode_request(login, b"pw", "mupdate", "example.org") == (
        b"\x00\x07j\xc3\xbcrgen\x00\x02pw\x00\x07mupdate\x00\x0bexample.org"
    )


@pytest.mark.parametrize("field", ["login", "password", "service", "realm"])
def test_a_nul_byte_is_refused_and_the_error_does_not_show_the_password(field: str) -> None:
    values = {"login": "admin", "password": b"hunter2", "service": "mupdate", "realm": ""}
    values[field] = b"x\0y" if field == "password" else "x\0y"
    with pytest.raises(SaslauthdError) as info:
        encode_request(**values)  # type: ignore[arg-type]
    assert str(info.value) == f"the {field} contains a NUL byte"
    assert "hunter2" not in str(info.value)


def test_request_size_limit_is_libsasls() -> None:
    fixed = len("admin") + len("mupdate") + 30
    encode_request("admin", b"p" * (MAX_REQUEST - fixed), "mupdate")  # exactly at the limit
    with pytest.raises(SaslauthdError, match="longer than saslauthd's 8192 bytes"):
        encode_request("admin", b"p" * (MAX_REQUEST - fixed + 1), "mupdate")


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"\x00\x02OK", SaslauthdReply(True, "")),
        (b"\x00\x02NO", SaslauthdReply(False, "")),
        (b"\x00\x0aOK Success", SaslauthdReply(True, "Success")),
        (b"\x00\x18NO authentication failed", SaslauthdReply(False, "authentication failed")),
        (b"\x00\x03OK\x00", SaslauthdReply(True, "")),  # a C string's NUL, sent along
    ],
)
def test_reply_whole_and_byte_by_byte(wire: bytes, expected: SaslauthdReply) -> None:
    assert ReplyDecoder().receive_data(wire) == expected
    decoder = ReplyDecoder()
    results = [decoder.receive_data(wire[i : i + 1]) for i in range(len(wire))]
    assert results[:-1] == [None] * (len(wire) - 1)
    assert results[-1] == expected


def test_bytes_after_the_reply_and_a_close_after_it_change_nothing() -> None:
    decoder = ReplyDecoder()
    assert decoder.receive_data(b"\x00\x02OKtrailing") == SaslauthdReply(True, "")
    assert decoder.receive_data(b"") == SaslauthdReply(True, "")


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"\x00\x01O", "not a saslauthd reply (length 1)"),
        (b"\x00\x00", "not a saslauthd reply (length 0)"),
        (b"\x04\x01", f"not a saslauthd reply (length {MAX_REPLY + 1})"),
        (b"\x00\x05HELLO", "not a saslauthd reply (neither OK nor NO)"),
        (b"\x00\x02ok", "not a saslauthd reply (neither OK nor NO)"),  # libsasl: strncmp "OK"
    ],
)
def test_malformed_replies(wire: bytes, message: str) -> None:
    with pytest.raises(SaslauthdError) as info:
        ReplyDecoder().receive_data(wire)
    assert str(info.value) == message


@pytest.mark.parametrize("partial", [b"", b"\x00", b"\x00\x02O"])
def test_a_close_before_the_whole_reply_is_an_error(partial: bytes) -> None:
    decoder = ReplyDecoder()
    if partial:
        assert decoder.receive_data(partial) is None
    with pytest.raises(SaslauthdError) as info:
        decoder.receive_data(b"")
    assert str(info.value) == (
        f"saslauthd closed the connection after {len(partial)} bytes of its reply"
    )
