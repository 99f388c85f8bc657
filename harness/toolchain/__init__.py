"""Containers and cross builds: the container engine, base images, pinned build toolchains, edge devices as
containers (:mod:`harness.toolchain.containers`) and the aarch64 wheels and cross toolchain of the native runner
(:mod:`harness.toolchain.cross`)."""
