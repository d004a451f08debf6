"""The README's promises that can drift from the code: its first screen has exactly the two
set-up commands, and its Install section names the packages the build really needs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def console_blocks(text: str) -> list[list[str]]:
    return [block.splitlines() for block in re.findall(r"```console\n(.*?)```", text, re.S)]


def test_the_first_screen_has_exactly_the_two_set_up_commands():
    first = console_blocks(README)[0]
    assert [line.split("#")[0].strip() for line in first] == ["./scripts/demo", "./scripts/test"]


def test_install_names_the_packages_the_build_needs():
    install = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    [apt_line] = [line for block in console_blocks(install) for line in block if "apt-get install" in line]
    named = apt_line.split("apt-get install", 1)[1].split()
    needed = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/bootstrap.sh && core_build_packages"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert set(named) == set(needed) - {"python3-venv"}


def test_install_pins_the_cpu_torch_and_shows_the_wheel():
    install = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    lines = [line for block in console_blocks(install) for line in block]
    assert any(line.startswith("./scripts/wheel") for line in lines)
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in lines
    assert lines.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu") < lines.index("pip install 'shardscan[hf]'")


def test_user_docs_cite_no_issue_numbers():
    # Readers outside the project cannot see its issue tracker.
    docs = [ROOT / "README.md", ROOT / "benches" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for doc in docs:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            assert not re.search(r"\bissues? #?\d+|(?<![\w&])#\d+\b", line, re.I), f"{doc.name}:{number}: {line}"


def synopsis() -> dict[str, list[str]]:
    block = README.split("## Commands", 1)[1].split("```", 2)[1]
    lines = [line.split() for line in block.strip().splitlines()]
    return {words[1]: words[2:] for words in lines if len(words) > 1 and not words[1].startswith("-")}


def test_the_synopsis_shows_every_option_of_every_command_and_no_other():
    import typer

    from shardscan.cli import app

    group = typer.main.get_command(app)
    shown = synopsis()
    assert set(shown) == set(group.commands)
    for name, command in group.commands.items():
        tokens = {t for word in shown[name] for t in re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", word)}
        options = [p for p in command.params if p.param_type_name == "option" and p.name != "help"]
        for option in options:
            assert tokens & set(option.opts + option.secondary_opts), f"{name}: {option.opts} missing from the README synopsis"
        known = {o for option in options for o in option.opts + option.secondary_opts}
        assert tokens <= known, f"{name}: {tokens - known} is no option"
