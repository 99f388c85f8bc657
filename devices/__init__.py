"""Talking to devices: Device transports (local, ssh, adb, emulator) and the Runners that execute artifacts on them."""
