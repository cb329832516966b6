"""Tables and source render as Markdown for the book and as aligned text for nbval and terminals."""

import pytest
from IPython.core.formatters import DisplayFormatter
from markdown_it import MarkdownIt

from llama2_et.display import Source, source, table
from llama2_et.generate import Sampler


def rendered(obj) -> dict[str, str]:
    """The MIME bundle Jupyter stores for obj in a notebook's outputs."""
    data, _ = DisplayFormatter().format(obj)
    return data


def test_a_table_is_a_markdown_table_and_aligned_text():
    t = table(
        ["preset", "D", "params", "weights"],
        [["stories260K", 64, 260032, "1.0 MiB"], ["llama2-7B", 4096, 6738415616, None]],
    )
    data = rendered(t)
    assert set(data) == {"text/markdown", "text/plain"}
    html = MarkdownIt("commonmark").enable("table").render(data["text/markdown"])
    assert html.count("<tr>") == 3 and html.count("<th style") == 4
    assert '<td style="text-align:right">6,738,415,616</td>' in html  # numbers right-aligned
    assert '<td style="text-align:left">llama2-7B</td>' in html
    assert data["text/plain"].splitlines() == [
        "preset           D         params  weights",
        "stories260K     64        260,032  1.0 MiB",
        "llama2-7B    4,096  6,738,415,616        -",
    ]


def test_cells_keep_their_text_and_pipes_are_escaped():
    t = table(["construct", "verdict"], [["max |logit|", True], ["ratio", 0.5]], title="checks")
    markdown = rendered(t)["text/markdown"]
    assert markdown.startswith("**checks**\n\n")
    assert r"| max \|logit\| | yes |" in markdown
    assert rendered(t)["text/plain"].splitlines() == [
        "checks",
        "construct    verdict",
        "max |logit|  yes",
        "ratio        0.5",
    ]


def test_a_row_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        table(["a", "b", "c"], [[1, 2]])


def test_source_is_a_python_block_and_the_code_as_text():
    data = rendered(source(Sampler))
    assert data["text/plain"].startswith("class Sampler")
    assert data["text/markdown"].startswith("```python\nclass Sampler") and data["text/markdown"].endswith(
        "\n```"
    )
    assert data["text/markdown"][len("```python\n") : -len("\n```")] == data["text/plain"]


def test_other_languages_and_backticks_keep_their_fence():
    markdown = rendered(Source("// a C++ line with ```backticks```", "cpp"))["text/markdown"]
    assert markdown.startswith("````cpp\n// a C++ line") and markdown.endswith("\n````")
