"""The Marketo sandbox and the service as separate processes on real ports.

Shared by the crash test (tests/e2e/test_crash.py) and the reliability suite
(tests/reliability/): start them, find their ports, kill or stop them, read a dataflow.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import grpc

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service._proto.marketo_destination.v1 import destination_pb2_grpc as pb_grpc

__all__ = [
    "ServiceProcess",
    "dataflow",
    "rss_kib",
    "sandbox_process",
    "stub",
    "wait_for",
]


@contextlib.contextmanager
def sandbox_process(*args: str) -> Iterator[str]:
    """A sandbox on a free port (extra command-line `args`); yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            found = re.search(r"REST endpoint: (\S+)/rest", line)
            if found:
                yield found.group(1)
                break
        else:
            raise AssertionError("the sandbox did not start")
    finally:
        process.kill()
        process.wait()


_STARTED: list[subprocess.Popen[bytes]] = []


def kill_leftovers() -> None:
    """Kill every service process a test started and left running (a failed test, a timeout)."""
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


class ServiceProcess:
    """`python -m service serve` on a free port, its log in a file next to `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        endpoint: str | None,
        env: Mapping[str, str] | None = None,
        *,
        args: Sequence[str] = (),
    ) -> None:
        """`endpoint`: the default Marketo endpoint (None with `args` ("--sandbox",): the
        embedded sandbox's); `args`: more flags of `serve`."""
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("MARKETO_DEST_", "OTEL_"))
        }
        environment.update(
            MARKETO_DEST_ADDRESS="127.0.0.1:0",
            MARKETO_DEST_DATA_DIR=str(data_dir),
            # Sandboxes and webhook receivers of tests listen on loopback.
            MARKETO_DEST_ALLOWED_ENDPOINTS="https://*.mktorest.com,http://127.0.0.1:*",
            MARKETO_DEST_ALLOWED_WEBHOOK_ORIGINS="http://127.0.0.1:*",
            MARKETO_DEST_MARKETO_WINDOW_SECONDS="2",
            MARKETO_DEST_LINGER_SECONDS="0.2",
            OTEL_SDK_DISABLED="true",
        )
        if endpoint is not None:
            environment["MARKETO_DEST_DEFAULT_MARKETO_ENDPOINT"] = endpoint
        environment.update(env or {})
        # A log file, not a pipe: an unread pipe would fill up and block the service.
        self.log = data_dir.parent / f"service-{time.monotonic_ns()}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", *args],
                env=environment,
                stderr=log,
                stdout=subprocess.DEVNULL,
            )
        _STARTED.append(self.process)
        deadline = time.monotonic() + 60
        while True:
            found = re.search(r" service: listening on \S+:(\d+)", self.log.read_text())
            if found:
                self.port = int(found.group(1))
                break
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=60) == 0


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a live process from /proc (`VmRSS` now, `VmHWM` its peak), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def stub(port: int) -> tuple[grpc.Channel, pb_grpc.MarketoDestinationServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.MarketoDestinationServiceStub(channel)


def dataflow(port: int, destination_id: str) -> pb.Dataflow:
    channel, client = stub(port)
    with channel:
        flow: pb.Dataflow = client.GetDataflow(
            pb.GetDataflowRequest(destination_id=destination_id)
        ).dataflow
        return flow


def wait_for(
    port: int,
    destination_id: str,
    done: Callable[[pb.Dataflow], bool],
    timeout: float = 120,
) -> pb.Dataflow:
    """Poll the destination's dataflow until `done` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        flow = dataflow(port, destination_id)
        if done(flow):
            return flow
        assert time.monotonic() < deadline, f"timed out; last dataflow {flow}"
        time.sleep(0.05)
