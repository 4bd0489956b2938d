"""sd_notify without libsystemd: one datagram per message on ``$NOTIFY_SOCKET``.

Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing. The watchdog
interval is half of ``$WATCHDOG_USEC``, and only when ``$WATCHDOG_PID`` is
unset or names this process.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("flowflexd.engine.notify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()  # an abstract socket
        elif address.startswith("/"):
            self._address = address
        self._socket: socket.socket | None = None
        if self._address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval: float | None = (
            int(usec) / 2_000_000 if usec.isdigit() and int(usec) > 0 and mine else None
        )
        self._last_status = ""

    def send(self, *lines: str) -> None:
        if self._socket is None or self._address is None:
            return
        try:
            # Never waited on: a receiver that stopped reading (its queue holds only
            # net.unix.max_dgram_qlen messages, 10 by default) must not hold the loop.
            self._socket.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, self._address)
        except OSError as err:
            log.debug("sd_notify failed", error=str(err))

    def ready(self) -> None:
        self.send("READY=1")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match this reload.
        self.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """Send STATUS= when it changed (systemctl status shows it)."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")
