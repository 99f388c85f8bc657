# CMake toolchain file: cross-compile compleak-runner for 64-bit Arm Linux (aarch64, glibc) on an x86-64 host with
# Debian's cross toolchain (apt-get install g++-aarch64-linux-gnu). Used by `compleak runners build --arch arm64`
# (harness/runners_cross.py); by hand:
#
#   cmake -S devices/native -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=devices/native/cmake/aarch64-linux-gnu.cmake \
#         -DEXECUTORCH_ROOT=<unpacked aarch64 executorch wheel>/executorch
#
# The target's C and C++ libraries come from the toolchain's own sysroot (/usr/aarch64-linux-gnu: glibc 2.36 and
# libstdc++ of GCC 12, the same as Debian bookworm on a board). The ExecuTorch package is found through the
# explicit EXECUTORCH_ROOT (its config globs its own lib/ folder, so no search re-rooting applies); headers are
# searched on the host too, because the only foreign header the runner needs (nlohmann/json.hpp) is
# architecture-independent and header-only.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(COMPLEAK_CROSS_TRIPLE aarch64-linux-gnu CACHE STRING "GNU triple of the cross compilers")
set(CMAKE_C_COMPILER ${COMPLEAK_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${COMPLEAK_CROSS_TRIPLE}-g++)

# the Debian cross packages put the target's libraries under /usr/<triple>
set(CMAKE_FIND_ROOT_PATH /usr/${COMPLEAK_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# the runner is run on boards as qemu emulates them here (Cortex-A72, ARMv8.0-A): no newer ISA extensions
set(CMAKE_C_FLAGS_INIT "-march=armv8-a")
set(CMAKE_CXX_FLAGS_INIT "-march=armv8-a")
