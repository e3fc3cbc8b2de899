"""Marketo sandbox: a Marketo Engage REST emulator (ASGI app + CLI)."""

from sandbox.app import create_app
from sandbox.clock import Clock, ManualClock, SystemClock
from sandbox.settings import FieldSpec, SandboxSettings, WorkspaceSpec
from sandbox.transport import asgi_transport

__all__ = [
    "Clock",
    "FieldSpec",
    "ManualClock",
    "SandboxSettings",
    "SystemClock",
    "WorkspaceSpec",
    "asgi_transport",
    "create_app",
]
