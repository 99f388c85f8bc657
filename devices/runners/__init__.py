"""The runners wing: how an artifact runs on a device.

- :mod:`devices.runners.base`: the :class:`~devices.runners.base.Runner` interface, ``Infer``, output helpers
- :mod:`devices.runners.server`: the host end of the runner protocol (docs/native.md, "Runner protocol"):
  :class:`~devices.runners.server.RunnerServer`, :class:`~devices.runners.server.RunnerServerPool`
- :mod:`devices.runners.python`: the single-file Python runner (``devices/ondevice/compleak_runner.py``)
- :mod:`devices.runners.native` / :mod:`devices.runners.native_oneshot`: the native ``compleak-runner`` (its bundle
  is built by :mod:`devices.native.bundle`, beside its C++ sources)
- :mod:`devices.runners.android`: Android's ``benchmark_model`` / ``executor_runner``
- :mod:`devices.runners.choose`: which runner runs an artifact on a device, from the facts the transport reports

Transports (``devices.local``, ``devices.ssh``, ``devices.adb``) report facts only; this wing chooses.
"""
