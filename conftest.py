"""Tests and notebooks read real files from LLAMA2_ET_DATA: default ../shared/data beside the repo."""

import os
from pathlib import Path

os.environ.setdefault("LLAMA2_ET_DATA", str(Path(__file__).resolve().parent.parent / "shared" / "data"))
