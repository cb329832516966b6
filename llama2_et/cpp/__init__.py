"""The C++ runner (llama2_et_runner): sources beside this file, built by `build.build_runner`."""

from .build import BINARY_NAME, SOURCE_DIR, build_runner, executorch_cmake_dir

__all__ = ["BINARY_NAME", "SOURCE_DIR", "build_runner", "executorch_cmake_dir"]
