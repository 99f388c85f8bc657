"""Errors raised by the devices package. One line each: what failed, on which device, and the fix."""

from __future__ import annotations


class DeviceError(RuntimeError):
    """A device could not be reached, lacks a runtime, refused a command or returned bad output."""


class UnreachableDevice(DeviceError):
    """The device did not answer within its deadline (network, daemon down, emulator not booted)."""


class IncompatibleArtifact(DeviceError):
    """The artifact needs something the device's runtime lacks (e.g. a newer TF-Lite op version)."""


class NoRunnerError(DeviceError):
    """Nothing on the device can run this artifact's format (no runtime for it, and the native runner does not
    take it): a collect of the whole run skips such artifacts with a note; one asked for by id fails."""
