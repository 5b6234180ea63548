"""The public API: every name resolves, and the README's list is exactly ``jadapt.__all__``."""
from __future__ import annotations

import re

import jadapt
from tests.conftest import REPO


def test_every_export_resolves():
    for name in jadapt.__all__:
        assert getattr(jadapt, name) is not None, name


def test_readme_lists_the_public_api():
    text = (REPO / "README.md").read_text()
    section = text.split("## Public API", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for line in section.split("\n\nSubpackages")[0].splitlines():
        listed |= set(re.findall(r"`(\w+)`", line))
    listed.discard("jadapt")
    assert listed == set(jadapt.__all__)


def test_internals_stay_in_their_modules():
    for name in ("dropout", "jit_steps", "CompileAhead", "fused_attention", "overlay"):
        assert name not in jadapt.__all__
