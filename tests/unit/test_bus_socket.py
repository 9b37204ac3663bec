"""The bus's socket under paho (dispatch/bus.py): large reads served in pieces, and the
writes of one write pass gathered into one send, in order, whatever the kernel takes."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dispatch.bus import _BufferedSocket


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


class CountingSocket:
    """A socket that counts its sends (each is a system call)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends = 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)

    def close(self) -> None:
        self.sock.close()


def drain(sock: socket.socket) -> bytes:
    got = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk


def test_a_write_pass_goes_out_as_one_send(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    counting = CountingSocket(a)
    buffered = _BufferedSocket(counting)  # type: ignore[arg-type]
    buffered.gathering = True
    packets = [bytes([n]) * (10 + n) for n in range(12)]
    assert [buffered.send(p) for p in packets] == [len(p) for p in packets]
    assert counting.sends == 0
    assert drain(b) == b""
    buffered.gathering = False
    assert buffered.flush() is False  # all taken
    assert counting.sends == 1
    assert drain(b) == b"".join(packets)
    # Outside a pass, with nothing kept, a send is the socket's own.
    assert buffered.send(b"ping") == 4
    assert counting.sends == 2
    assert drain(b) == b"ping"


def test_what_the_kernel_does_not_take_leaves_first_later(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    buffered = _BufferedSocket(a)
    buffered.gathering = True
    big = bytes(range(256)) * 8192  # 2 MiB: far more than the kernel takes at once
    buffered.send(big)
    buffered.gathering = False
    assert buffered.flush() is True  # some is left
    # A later packet waits behind what is left, even outside a pass.
    assert buffered.send(b"after") == 5
    received = bytearray(drain(b))
    while buffered.flush():
        received += drain(b)
    received += drain(b)
    assert bytes(received) == big + b"after"


def test_close_sends_what_was_kept_first(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    buffered = _BufferedSocket(a)
    buffered.gathering = True
    buffered.send(b"\xe0\x00")  # a DISCONNECT, written just before paho closes
    buffered.close()
    assert drain(b) == b"\xe0\x00"
