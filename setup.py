import sys

from setuptools import setup

# cffi compiles the core against the stable ABI (Py_LIMITED_API), so the wheel is tagged abi3:
# one wheel for the CPython it was built with and every later one.
setup(
    cffi_modules=["build.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": f"cp{sys.version_info.major}{sys.version_info.minor}"}},
)
