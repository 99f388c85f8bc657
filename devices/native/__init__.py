"""The native runner ``compleak-runner``: its C++ sources (``CMakeLists.txt``, ``src/``, ``cmake/``) and
:mod:`devices.native.bundle`, which builds them into a self-contained bundle (docs/native.md)."""
