"""The C++ runner's build: the pip wheel and the sources, through CMake, to a binary that runs a .pte."""

from __future__ import annotations

from collections.abc import Sequence

from . import BOOK_SCALE, arrow, box, canvas, enlarge


def cpp_build_figure(
    libraries: Sequence[str],
    sources: Sequence[str],
    header: str,
    binary: str,
    binary_kib: int,
    pte: str,
    tokenizer: str,
):
    """Wheel and sources -> CMake (find_package, generated header) -> runner binary <- .pte + tokenizer."""
    fig, ax = canvas(9.4, 3.5)
    wheel_text = "\n".join(
        [
            "pip wheel: executorch/",
            "include/  (the runtime's headers)",
            "lib/",
            *libraries,
            "share/cmake/executorch-config.cmake",
        ]
    )
    wheel = box(ax, 0.05, 1.25, 3.3, 2.2, wheel_text, kind="weight", fontsize=8, linespacing=1.3)
    ours = box(
        ax,
        0.05,
        0.05,
        3.3,
        1.0,
        "llama2_et/cpp/: CMakeLists.txt\n" + "\n".join(_pairs(sources)),
        kind="op",
        fontsize=8,
    )
    cmake = box(
        ax,
        3.85,
        0.85,
        2.35,
        1.9,
        "CMake\nfind_package(executorch)\nexecutorch_DIR =\n.../share/cmake\n\n"
        f"generated/{header}\n(contract.py, designs.py)\n+ OpenSSL's libcrypto",
        kind="tensor",
        fontsize=8,
    )
    runner = box(
        ax,
        6.75,
        1.35,
        2.6,
        0.9,
        f"{binary}\n({binary_kib} KiB; loads lib/\nat run time)",
        kind="delegate",
        fontsize=8,
    )
    inputs = box(ax, 6.75, 2.75, 2.6, 0.7, f"{pte}\n+ {tokenizer}", kind="cache", fontsize=8)
    output = box(ax, 6.75, 0.1, 2.6, 0.7, "text on stdout,\nspeeds on stderr", kind="op", fontsize=8)
    _arrows(ax, wheel, ours, cmake, runner, inputs, output)
    return enlarge(fig, BOOK_SCALE)


def _pairs(names: Sequence[str]) -> list[str]:
    """Names two to a line."""
    return ["  ".join(names[i : i + 2]) for i in range(0, len(names), 2)]


def _arrows(ax, wheel, ours, cmake, runner, inputs, output) -> None:
    """Wheel and sources into CMake, CMake to the binary, the files into it and its output out of it."""
    arrow(ax, (wheel[0] + wheel[2], 2.3), (cmake[0], 2.2))
    arrow(ax, (ours[0] + ours[2], 0.55), (cmake[0], 1.25))
    arrow(ax, (cmake[0] + cmake[2], 1.8), (runner[0], 1.8))
    ax.text(
        (cmake[0] + cmake[2] + runner[0]) / 2, 1.9, "cmake\n--build", ha="center", va="bottom", fontsize=7
    )
    middle = runner[0] + runner[2] / 2
    arrow(ax, (middle, inputs[1]), (middle, runner[1] + runner[3]))
    arrow(ax, (middle, runner[1]), (middle, output[1] + output[3]))
