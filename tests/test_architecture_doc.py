"""docs/architecture.md shows the package as it is: its layout block names every module under
streamchat/ (and nothing that is gone), and at most ten modules sit directly in streamchat/."""

from __future__ import annotations

import re

from tests.harness import REPO

DOC = REPO / "docs" / "architecture.md"


def layout_block() -> str:
    text = DOC.read_text()
    section = text.split("## Layout", 1)
    assert len(section) == 2, "docs/architecture.md has no '## Layout' section"
    blocks = re.findall(r"```text\n(.*?)```", section[1], flags=re.S)
    assert blocks, "the Layout section has no ```text block"
    return blocks[0]


def documented_modules() -> set[str]:
    """Paths in the block: a folder line (`core/`) sets the folder for the indented lines below."""
    modules: set[str] = set()
    folder: list[str] = []
    for line in layout_block().splitlines():
        if not line.strip():
            continue
        name = line.split()[0]
        depth = (len(line) - len(line.lstrip())) // 2
        folder = folder[:depth]
        if name.endswith("/"):
            folder.append(name.rstrip("/"))
        elif name.endswith(".py"):
            modules.add("/".join([*folder, name]))
    return modules


def actual_modules() -> set[str]:
    return {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "streamchat").rglob("*.py")
        if path.name != "__init__.py"
    } | {"app.py"}


def test_the_layout_block_names_every_module_and_no_other():
    documented, actual = documented_modules(), actual_modules()
    assert not actual - documented, (
        f"missing from docs/architecture.md: {sorted(actual - documented)}"
    )
    assert not documented - actual, f"named but gone: {sorted(documented - actual)}"


def test_at_most_ten_modules_sit_directly_in_the_package():
    top = sorted(p.name for p in (REPO / "streamchat").glob("*.py"))
    assert len(top) <= 10, top
