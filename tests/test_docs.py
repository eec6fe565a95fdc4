"""Documentation that travels with the code: docs/PROTOCOL.md and docs/ARCHITECTURE.md are
copies of the design folder (../shared/design) kept in step; docs/CONFIG.md is generated
from the typed config and must be up to date; the README links resolve inside the
repository."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

from interest.engine.config import load_config
from interest.tools import config_docs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DESIGN = ROOT.parent / "shared" / "design"
COPIES = ("PROTOCOL.md", "ARCHITECTURE.md")


def _diff(expected: str, actual: str, name: str) -> str:
    lines = difflib.unified_diff(expected.splitlines(), actual.splitlines(),
                                 f"expected {name}", f"docs/{name}", lineterm="", n=1)
    return "\n".join(list(lines)[:40])


@pytest.mark.parametrize("name", COPIES)
def test_the_design_copies_are_in_the_repository(name):
    text = (DOCS / name).read_text(encoding="utf-8")
    assert text.startswith("# ") and len(text) > 1000


@pytest.mark.parametrize("name", COPIES)
def test_the_design_copies_match_the_design_folder(name):
    if not DESIGN.is_dir():
        pytest.skip(f"{DESIGN} is absent (a clone without the design folder): docs/{name} "
                    "is not compared with it")
    shared = (DESIGN / name).read_text(encoding="utf-8")
    copy = (DOCS / name).read_text(encoding="utf-8")
    assert copy == shared, (f"docs/{name} differs from {DESIGN / name}: run "
                            f"`cp ../shared/design/{name} docs/`\n" + _diff(shared, copy, name))


def test_the_config_reference_is_up_to_date():
    expected = config_docs.render()
    actual = (DOCS / "CONFIG.md").read_text(encoding="utf-8")
    assert actual == expected, ("docs/CONFIG.md is out of date: run `interest config docs`\n"
                                + _diff(expected, actual, "CONFIG.md"))
    assert config_docs.main(["docs", "--check"]) == 0


def test_check_fails_on_a_stale_reference(tmp_path, capsys):
    stale = tmp_path / "CONFIG.md"
    stale.write_text(config_docs.render().replace("| `max_k` |", "| `max_kk` |"))
    assert config_docs.main(["docs", "--check", "--out", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert config_docs.main(["docs", "--out", str(stale)]) == 0
    assert config_docs.main(["docs", "--check", "--out", str(stale)]) == 0


def test_every_config_key_has_a_comment_in_the_defaults():
    assert config_docs.undocumented() == [], (
        "keys without a comment on their line in configs/default.toml: "
        + ", ".join(config_docs.undocumented()))


def test_the_config_reference_lists_every_key_with_its_default():
    text = (DOCS / "CONFIG.md").read_text(encoding="utf-8")
    tables = dict(re.findall(r"^## \[([a-z_.]+)\]\n(.*?)(?=^## |\Z)", text, re.M | re.S))

    def check(path: str, table: dict) -> None:
        for key, default in table.items():
            if isinstance(default, dict):
                check(f"{path}.{key}" if path else key, default)
                continue
            assert path in tables, f"no section [{path}] in docs/CONFIG.md"
            row = re.search(rf"^\| `{key}` \| [^|]+ \| `([^`]*)` \|", tables[path], re.M)
            assert row, f"{path}.{key} is not in docs/CONFIG.md"
            assert row.group(1).replace("\\|", "|") == config_docs.toml_value(default)
    check("", load_config())


def test_comments_are_read_outside_strings_only():
    sections, keys = config_docs.toml_comments(
        '[a]\n# about a\n# second line\nx = "#not" # the x\ny = 1\n[b.c]\nz = \'#\'  # z\n')
    assert sections == {"a": "about a second line"}
    assert keys == {("a", "x"): "the x", ("b.c", "z"): "z"}
    assert config_docs.allowed(int, config_docs.Range(1, 400)) == "1 to 400"
    assert config_docs.allowed(float, config_docs.Range(0, above=True)) == "> 0"
    assert config_docs.allowed(str, config_docs.OneOf(("a", "b"))) == "one of `a`, `b`"


def test_readme_links_resolve_inside_the_repository():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    for name in ("docs/PROTOCOL.md", "docs/ARCHITECTURE.md", "docs/CONFIG.md"):
        assert name in links, f"the README does not link to {name}"
    for link in links:
        if re.match(r"[a-z]+:|#", link):
            continue
        target = (ROOT / link.split("#")[0]).resolve()
        assert target.is_relative_to(ROOT), f"README links outside the repository: {link}"
        assert target.exists(), f"README links to a missing file: {link}"
