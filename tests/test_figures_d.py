"""The runtime-memory and C++ build figures, the heap measurement behind the first, and the log silencer."""

import os

import matplotlib
import pytest

matplotlib.use("Agg")


def texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def test_runtime_memory_figure_labels_the_measured_bytes():
    from llama2_et.figures.runtime_memory import runtime_memory_figure

    fig = runtime_memory_figure("m.pte", 15, 4_608_064, 655_360, 10, 4_613_088, 1_626_032, 1_039_360)
    shown = texts(fig)
    for label in (
        "m.pte",
        "15 methods",
        "4,608,064 bytes",
        "10 mutable buffers, 655,360",
        "1,626,032 bytes",
        "1,039,360 bytes in the file",
    ):
        assert label in shown
    assert "(not measured)" in texts(runtime_memory_figure("m.pte", 1, 100, 10, 2, None, None, 5))


def test_heap_in_use_sees_an_allocation_that_reuses_freed_memory():
    from llama2_et.bench.memory import heap_in_use

    if heap_in_use() is None:
        pytest.skip("not glibc")
    freed = bytearray(8 << 20)
    del freed  # the allocator may hand these bytes out again below
    before = heap_in_use()
    kept = bytearray(8 << 20)
    assert heap_in_use() - before >= len(kept)


def test_cpp_build_figure_names_what_it_is_given():
    from llama2_et.figures.cpp_build import cpp_build_figure

    fig = cpp_build_figure(
        ["libexecutorch.so"],
        ["runner.cpp", "program.cpp", "a.cpp"],
        "contract.h",
        "runner_bin",
        158,
        "p.pte",
        "t.bin",
    )
    shown = texts(fig)
    for label in (
        "libexecutorch.so",
        "runner.cpp  program.cpp",
        "generated/contract.h",
        "runner_bin",
        "158 KiB",
        "p.pte",
    ):
        assert label in shown


def test_native_logs_discarded_swallows_writes_to_the_file_descriptors(capfd):
    from llama2_et.display import native_logs_discarded

    with native_logs_discarded():
        os.write(1, b"native stdout\n")
        os.write(2, b"native stderr\n")
        print("python stdout")
    print("after")
    out, err = capfd.readouterr()
    assert out == "after\n" and err == ""
