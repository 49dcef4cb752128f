"""The processes of one run meet over TCP before JAX connects them, and watch each other.

Process 0 listens; every other process connects and sends its index. Once all have come,
process 0 answers each, and the connections stay open for the rest of the run:

* a process that never comes is named by process 0 after `timeout_s` (RuntimeError);
* a process that dies (crash, kill -9, OOM) closes its connection at once, and the watcher
  thread ends the others with one line naming it (exit status 1) instead of letting them wait
  in a collective until JAX's heartbeat aborts them minutes later;
* a process that ends on purpose says goodbye first (`leave`, called by the command line when
  training finished or checkpointed on a signal), which is not mistaken for a death; one that
  fails with an error closes without goodbye, which stops the others too;
* a process that stops on a signal on its own, with nothing to checkpoint (`leave(status)`),
  stops the others with the same exit status (75: requeue; 130: Ctrl-C).

When a peer dies, JAX's coordination client in the survivors logs the lost connection natively
(a dozen lines, then an abort) at the same moment as the watcher notices it. So that the
watcher's one line is all the user sees, a joined process sends native output (file descriptor
2) through a filter that holds JAX's coordination-service messages back for `_HOLD_S` and drops
them once a peer is known dead; everything else passes at once, and Python's own stderr is
written directly.

Only the standard library is used; nothing here touches JAX.
"""

import atexit
import contextlib
import os
import re
import select
import selectors
import socket
import sys
import threading
import time

_HELLO = b"H"
_GO = b"G"
_BYE = b"B"
_STOP = b"S"  # followed by one byte: the exit status


class _Peers:
    """The open connections of this process and their watcher."""

    def __init__(self, process_id: int, sockets: dict[int, socket.socket]):
        self.process_id = process_id
        self.sockets = sockets  # peer index -> socket (process 0: all others; else: {0: ...})
        self.finished: set[int] = set()
        self.leaving = False
        self.dead: int | None = None
        thread = threading.Thread(target=self._watch, name="rendezvous-watch", daemon=True)
        thread.start()

    def _watch(self) -> None:
        selector = selectors.DefaultSelector()
        for peer, sock in self.sockets.items():
            selector.register(sock, selectors.EVENT_READ, peer)
        while len(self.finished) < len(self.sockets):
            for key, _ in selector.select():
                peer = key.data
                data = _receive(key.fileobj)
                selector.unregister(key.fileobj)
                self.finished.add(peer)
                if data == _BYE or self.leaving:
                    continue
                if data[:1] == _STOP and len(data) == 2:
                    self._stop_too(peer, data[1])
                self.dead = peer
                self._exit(
                    f"process {peer} of the run died (its connection closed without goodbye): "
                    f"stopping process {self.process_id} too.",
                    1,
                )

    def _stop_too(self, peer: int, status: int) -> None:
        self.leave(status)  # passes the stop on (process 0 is every other process's peer)
        self._exit(
            f"process {peer} of the run stopped on a signal with nothing to checkpoint: "
            f"stopping process {self.process_id} too (exit status {status}).",
            status,
        )

    @staticmethod
    def _exit(message: str, status: int) -> None:
        print(message, file=sys.stderr, flush=True)
        for cleanup in list(AT_EXIT):
            with contextlib.suppress(Exception):  # exiting anyway
                cleanup()
        os._exit(status)

    def leave(self, status: int | None = None) -> None:
        """Says goodbye to every peer: this process ends on purpose (with `status` when it
        stops on its own on a signal, which stops the peers too)."""
        if self.leaving:
            return
        self.leaving = True
        message = _BYE if status is None else _STOP + bytes([status])
        for sock in self.sockets.values():
            try:
                sock.sendall(message)
            except OSError:
                pass


def _receive(sock: socket.socket) -> bytes:
    """A peer's message: b'' when its connection closed, else BYE or STOP and a status."""
    try:
        data = sock.recv(2)
        if data == _STOP:  # the status byte follows
            sock.settimeout(1.0)
            data += sock.recv(1)
    except OSError:
        return b""
    return data


_PEERS: _Peers | None = None
# What to do before the watcher ends the process (e.g. remove a run directory that has no
# checkpoint yet); the process's own code adds and removes entries.
AT_EXIT: list = []


def joined() -> bool:
    """Whether this process is one of several that met (`join`)."""
    return _PEERS is not None


def wait_for_dead_peer(seconds: float = 2.0) -> bool:
    """Whether a peer died (waiting up to `seconds` for the watcher to notice; it then exits).

    An error in a collective is often the first sign of a dead peer: the command line calls
    this before printing such an error, so that the watcher's one line is what the user sees.
    """
    if _PEERS is None:
        return False
    deadline = time.monotonic() + seconds
    while _PEERS.dead is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if _PEERS.dead is not None:
        time.sleep(seconds)  # the watcher is exiting the process
    return _PEERS.dead is not None


def leave(status: int | None = None) -> None:
    """Tells the run's other processes that this one ends on purpose (no-op if alone).

    Args:
      status: None when every process ends together (the run finished, or checkpointed on an
        agreed step); an exit status when this process stops alone on a signal, which the others
        then stop with too.
    """
    if _PEERS is not None:
        _PEERS.leave(status)


def join(address: tuple[str, int], num_processes: int, process_id: int, timeout_s: float):
    """Meets the run's other processes at `address` (process 0 listens there).

    Raises:
      ConnectionError: a process did not come, or process 0 could not be reached, in time.
    """
    global _PEERS
    if num_processes == 1:
        return
    if process_id == 0:
        sockets = _serve(address, num_processes, timeout_s)
    else:
        sockets = {0: _connect(address, process_id, timeout_s)}
    _PEERS = _Peers(process_id, sockets)
    _filter_native_stderr(lambda: _PEERS is not None and _PEERS.dead is not None)


def _serve(address, num_processes: int, timeout_s: float) -> dict[int, socket.socket]:
    server = socket.create_server(("", address[1]), reuse_port=False)
    deadline = time.monotonic() + timeout_s
    joined: dict[int, socket.socket] = {}
    with server:
        while len(joined) < num_processes - 1:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(1, num_processes)) - set(joined))
                raise ConnectionError(
                    f"process(es) {missing} of {num_processes} did not start within {timeout_s:g} "
                    "s (crashed, or never launched): see their logs"
                )
            server.settimeout(remaining)
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(remaining)
            hello = conn.recv(8)
            if hello[:1] == _HELLO and hello[1:].isdigit():
                joined[int(hello[1:])] = conn
    for conn in joined.values():
        conn.settimeout(None)
        conn.sendall(_GO)
    return joined


def _connect(address, process_id: int, timeout_s: float) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock = socket.create_connection(address, timeout=max(0.1, deadline - time.monotonic()))
            sock.sendall(_HELLO + str(process_id).encode())
            if sock.recv(1) == _GO:
                sock.settimeout(None)
                return sock
            sock.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ConnectionError(
                f"process {process_id} could not reach process 0 at {address[0]}:{address[1]} "
                f"within {timeout_s:g} s: it crashed or was never started (see its log)"
            )
        time.sleep(0.2)


_HOLD_S = 0.5  # how long JAX's coordination messages wait for the watcher to notice a death
# JAX's coordination client and its gRPC channel, in absl's log format or its continuation.
_COORDINATION = re.compile(
    rb"coordination|preemption_sync|JAX distributed service|Check failure stack|^\s+@\s+0x"
)


def _filter_native_stderr(peer_died) -> None:
    """Sends file descriptor 2 through `_forward`; Python's stderr keeps the real one."""
    real = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    sys.stderr.flush()
    sys.stderr = open(real, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115 - the process's
    thread = threading.Thread(
        target=_forward, args=(read_fd, real, peer_died), name="stderr-filter", daemon=True
    )
    thread.start()

    def restore() -> None:  # at exit: native output goes straight out again, the rest drains
        os.dup2(real, 2)
        thread.join(timeout=1.0)

    atexit.register(restore)


def _forward(read_fd: int, real_fd: int, peer_died) -> None:
    """Copies lines from `read_fd` to `real_fd`, holding coordination messages (and the lines
    that follow them) for `_HOLD_S`, and dropping them if a peer died meanwhile."""
    held: list[bytes] = []
    held_since = 0.0
    partial = b""
    while True:
        timeout = max(0.0, held_since + _HOLD_S - time.monotonic()) if held else None
        if select.select([read_fd], [], [], timeout)[0]:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            *lines, partial = (partial + chunk).split(b"\n")
            for line in lines:
                if held or _COORDINATION.search(line):
                    held_since = held_since if held else time.monotonic()
                    held.append(line)
                else:
                    os.write(real_fd, line + b"\n")
        if held and time.monotonic() >= held_since + _HOLD_S:
            if not peer_died():
                os.write(real_fd, b"".join(line + b"\n" for line in held))
            held.clear()
    if not peer_died():
        os.write(real_fd, b"".join(line + b"\n" for line in held) + partial)
