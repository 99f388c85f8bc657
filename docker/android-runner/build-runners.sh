#!/bin/sh
# build-runners ABIS PLATFORM TFLITE_BENCHMARK_BASE
# Cross-build ExecuTorch's executor_runner for each Android ABI with the NDK and fetch TF-Lite's benchmark_model.
set -eu
abis=$1 platform=$2 tflite_base=$3
for abi in $abis; do
  out=/out/$abi build=/src/executorch/cmake-android-$abi
  mkdir -p "$out"
  cmake -S /src/executorch -B "$build" -G Ninja \
    -DCMAKE_TOOLCHAIN_FILE="$ANDROID_NDK/build/cmake/android.toolchain.cmake" \
    -DANDROID_ABI="$abi" -DANDROID_PLATFORM="$platform" \
    -DCMAKE_BUILD_TYPE=Release \
    -DEXECUTORCH_BUILD_EXECUTOR_RUNNER=ON \
    -DEXECUTORCH_BUILD_EXTENSION_DATA_LOADER=ON \
    -DEXECUTORCH_BUILD_EXTENSION_FLAT_TENSOR=ON \
    -DEXECUTORCH_BUILD_EXTENSION_MODULE=ON \
    -DEXECUTORCH_BUILD_EXTENSION_TENSOR=ON \
    -DEXECUTORCH_BUILD_KERNELS_OPTIMIZED=ON \
    -DEXECUTORCH_BUILD_KERNELS_QUANTIZED=ON \
    -DEXECUTORCH_BUILD_XNNPACK=ON \
    -DEXECUTORCH_ENABLE_LOGGING=ON
  cmake --build "$build" --target executor_runner -j "$(nproc)"
  cp "$build/executor_runner" "$out/executor_runner"
  case $abi in
    arm64-v8a) tfl=android_aarch64_benchmark_model ;;
    x86_64)    tfl=android_x86_64_benchmark_model ;;
    *) echo "unsupported ABI $abi" >&2; exit 2 ;;
  esac
  curl -fsSL -o "$out/benchmark_model" "$tflite_base/$tfl"
  chmod 755 "$out/executor_runner" "$out/benchmark_model"
done
