"""Build the C++ runner (llama2_et_runner) with CMake against the pip-installed ExecuTorch wheel.

The wheel ships the runtime as shared libraries plus a CMake package
(`<site-packages>/executorch/share/cmake/executorch-config.cmake`), so `find_package(executorch)`
is all the runner needs: no ExecuTorch source checkout. The build lives in a cache folder
outside the package and is reused while the sources, the generated contract.h and the wheel stay the
same.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import contract, designs
from ..assets import cache_dir

SOURCE_DIR = Path(__file__).resolve().parent
BINARY_NAME = "llama2_et_runner"
GENERATED_DIR = "generated"  # in the build folder: CMakeLists.txt adds it to the include path


def executorch_cmake_dir() -> Path:
    """The folder of the wheel's executorch-config.cmake, or a RuntimeError saying how to get it."""
    import executorch

    for root in executorch.__path__:
        cmake_dir = Path(root) / "share" / "cmake"
        if (cmake_dir / "executorch-config.cmake").is_file():
            return cmake_dir
    raise RuntimeError(
        f"the executorch package at {list(executorch.__path__)} has no share/cmake/executorch-config.cmake; "
        "install the ExecuTorch wheel with `pip install executorch`"
    )


def _require_tools() -> str:
    """The cmake executable; a RuntimeError naming the fix when cmake or a C++ compiler is missing."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError(
            "cmake not found on PATH; install it (apt-get install cmake, or pip install cmake)"
        )
    compilers = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        raise RuntimeError(
            "no C++ compiler found (looked for $CXX, c++, g++, clang++); install one (apt-get install g++)"
        )
    return cmake


def contract_header() -> str:
    """contract.h: contract.py's ids and metadata names, and the inputs of designs.py's signatures.

    Generated, not checked in: the exporter and both runtimes then read one source of truth, as
    ExecuTorch keeps its runner's metadata names in one header (extension/llm/runner/constants.h).
    A Python name NAME_OF_THING becomes kNameOfThing.
    """

    def cpp(name: str, value: object) -> str:
        cpp_name = "k" + name.title().replace("_", "")
        items = value if isinstance(value, tuple) else (value,)
        if all(isinstance(v, int) for v in items):
            cpp_type, text = "int64_t", ", ".join(map(str, items))
        elif all(isinstance(v, str) for v in items):
            cpp_type, text = "const char*", ", ".join(map(json.dumps, items))
        else:
            raise TypeError(f"{name} = {value!r}: contract.h holds ints, strings and tuples of them")
        if isinstance(value, tuple):
            return f"constexpr {cpp_type} {cpp_name}[] = {{{text}}};"
        return f"constexpr {cpp_type} {cpp_name} = {text};"

    lines = [
        "// Generated from llama2_et/contract.py and designs.py by llama2_et/cpp/build.py: edit those.",
        "#pragma once",
        "",
        "#include <cstdint>",
        "",
        "namespace contract {",
    ]
    lines += [cpp(k, v) for k, v in vars(contract).items() if k.isupper() and not callable(v)]
    for name, signature in vars(designs).items():
        if isinstance(signature, designs.Signature):
            users = ", ".join(d for d, s in designs.SIGNATURES.items() if s == signature)
            lines += [f"// forward's inputs in design {users}, in order; its output: float32 logits (1, V)"]
            lines += [cpp(f"{name}_NAMES", signature.names), cpp(f"{name}_DTYPES", signature.dtypes)]
    lines += ["// a bucket's method: <prefix><W>, forward attending the first W cache positions only"]
    lines += [cpp("BUCKET_PREFIX", designs.BUCKET_PREFIX)]
    return "\n".join([*lines, "}  // namespace contract", ""])


def _build_stamp(cmake_dir: Path, header: str) -> str:
    """A digest of what the binary depends on: the sources, the generated header, the wheel's CMake package."""
    digest = hashlib.sha256(header.encode())
    for path in sorted(SOURCE_DIR.glob("*")):
        if path.suffix in (".cpp", ".h", ".txt"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for path in sorted(cmake_dir.glob("*.cmake")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _run(command: list[str], log_path: Path) -> None:
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        raise RuntimeError(f"building the C++ runner failed; full log in {log_path}:\n{tail}")


def build_runner(build_dir: str | Path | None = None, force: bool = False) -> Path:
    """Configure and build llama2_et_runner (Release); return the binary's path, reusing a fresh build.

    build_dir defaults to `<cache>/runner` ($LLAMA2_ET_CACHE or ~/.cache/llama2_et). force=True
    rebuilds from an empty folder.
    """
    cmake = _require_tools()
    cmake_dir = executorch_cmake_dir()
    build = Path(build_dir) if build_dir is not None else cache_dir() / "runner"
    _check_writable(build)
    with open(build.parent / f"{build.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time: tests, bench and the CLI share the folder
        return _build(cmake, cmake_dir, build, force)


def _check_writable(build: Path) -> None:
    """Create the build folder; a RuntimeError naming it when it is a file or cannot be written."""
    if build.exists() and not build.is_dir():
        raise RuntimeError(f"build folder {build} is a file, not a folder; pass another --build-dir")
    try:
        build.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=build).close()  # permissions alone do not tell: root ignores them
        tempfile.TemporaryFile(dir=build.parent).close()  # the lock file goes beside the folder
    except OSError as exc:
        raise RuntimeError(
            f"cannot write to build folder {build} ({exc.strerror}); pass a writable --build-dir"
        ) from None


def _build(cmake: str, cmake_dir: Path, build: Path, force: bool) -> Path:
    binary, stamp_path = build / BINARY_NAME, build / "llama2_et_build.stamp"
    header = contract_header()
    stamp = _build_stamp(cmake_dir, header)
    fresh = binary.is_file() and stamp_path.is_file() and stamp_path.read_text() == stamp
    if fresh and not force:
        return binary
    cache = build / "CMakeCache.txt"
    configured_elsewhere = (
        cache.is_file() and f"CMAKE_HOME_DIRECTORY:INTERNAL={SOURCE_DIR}\n" not in cache.read_text()
    )
    if force or configured_elsewhere:  # CMake refuses a build folder made for other sources
        shutil.rmtree(build, ignore_errors=True)
    header_path = build / GENERATED_DIR / "contract.h"
    header_path.parent.mkdir(parents=True, exist_ok=True)
    if not header_path.is_file() or header_path.read_text() != header:  # unchanged: no recompile
        header_path.write_text(header)
    stamp_path.unlink(missing_ok=True)
    log_path = build / "build.log"
    log_path.write_text("")
    print(f"building {BINARY_NAME} in {build} (log: {log_path})", file=sys.stderr)
    configure = [cmake, "-S", str(SOURCE_DIR), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
    _run([*configure, f"-Dexecutorch_DIR={cmake_dir}"], log_path)
    _run([cmake, "--build", str(build), "--config", "Release", "--parallel"], log_path)
    if not binary.is_file():
        raise RuntimeError(f"the build finished but {binary} is missing; see {log_path}")
    stamp_path.write_text(stamp)
    return binary
