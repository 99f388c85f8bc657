"""Containers and cross builds: the container engine (:mod:`harness.toolchain.engine`), the Debian base rootfs and
binfmt (:mod:`harness.toolchain.rootfs`), the project's images with their pinned toolchains
(:mod:`harness.toolchain.images`), the build stage inside a toolchain image (:mod:`harness.toolchain.container_build`),
edge devices as containers (:mod:`harness.toolchain.edge`), and the aarch64 wheels and cross toolchain of the native
runner (:mod:`harness.toolchain.cross`)."""
