"""The processes of one run meet over TCP before JAX connects them, and watch each other.

Process 0 listens; every other process connects and sends its index. Once all have come,
process 0 answers each, and the connections stay open for the rest of the run:

* a process that never comes is named by process 0 after `timeout_s` (RuntimeError);
* a process that dies (crash, kill -9, OOM) closes its connection at once, and the watcher
  thread ends the others with one line naming it (exit status 1) instead of letting them wait
  in a collective until JAX's heartbeat aborts them minutes later;
* a process that ends on purpose says goodbye first (`leave`, called by the command line when
  training finished or checkpointed on a signal), which is not mistaken for a death; one that
  fails with an error closes without goodbye, which stops the others too.

Only the standard library is used; nothing here touches JAX.
"""

import os
import selectors
import socket
import sys
import threading
import time

_HELLO = b"H"
_GO = b"G"
_BYE = b"B"


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
                data = key.fileobj.recv(1)
                selector.unregister(key.fileobj)
                self.finished.add(peer)
                if data != _BYE and not self.leaving:
                    self.dead = peer
                    print(
                        f"process {peer} of the run died (its connection closed without "
                        f"goodbye): stopping process {self.process_id} too.",
                        file=sys.stderr,
                        flush=True,
                    )
                    os._exit(1)

    def leave(self) -> None:
        """Says goodbye to every peer: this process ends on purpose."""
        if self.leaving:
            return
        self.leaving = True
        for sock in self.sockets.values():
            try:
                sock.sendall(_BYE)
            except OSError:
                pass


_PEERS: _Peers | None = None


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


def leave() -> None:
    """Tells the run's other processes that this one ends on purpose (no-op if alone)."""
    if _PEERS is not None:
        _PEERS.leave()


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
