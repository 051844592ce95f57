"""The Dockerfile, read as data: no Docker engine is needed to check what matters most.

A small parser turns it into stages (base, name, instructions), following ``FROM <stage>``
chains the way a build does, so each check asks about a target as Docker would build it:
who it runs as, what it starts, what it is built from. The kind path
(``scripts/kind-e2e.sh``) does the real builds.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
DOCKERFILE = REPOSITORY / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    """Join backslash continuations and drop comments and blank lines."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    return lines


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Return the global ARG defaults and the stages in order."""
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [word for word in rest.split() if not word.startswith("--platform")]
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: arguments[m[1] or m[2]], words[0])
            name = words[2].lower() if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages and keyword == "ARG":
            variable, _, default = rest.partition("=")
            arguments[variable.strip()] = default.strip()
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest.strip()))
    return arguments, stages


def _chain(stages: list[Stage], target: str) -> list[Stage]:
    """The target and every stage it builds on, innermost (the target) first."""
    by_name = {stage.name: stage for stage in stages if stage.name}
    chain = [by_name[target]]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    return chain


def _effective(stages: list[Stage], target: str, keyword: str) -> str | None:
    """The last value of an instruction that the target inherits or sets itself."""
    for stage in _chain(stages, target):
        values = [rest for name, rest in stage.instructions if name == keyword]
        if values:
            return values[-1]
    return None


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_target_runs_as_a_numeric_non_root_user(stages: list[Stage], target: str) -> None:
    user = _effective(stages, target, "USER")

    assert user is not None, f"the {target} image would run as root"
    uid, _, gid = user.partition(":")
    # Kubernetes' runAsNonRoot can verify a numeric user only.
    assert uid.isdigit(), f"USER {user!r} is not numeric"
    assert int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)


@pytest.mark.parametrize(
    ("target", "command"), [("operator", "jobqueue-operator"), ("worker", "jobqueue-worker")]
)
def test_target_starts_its_console_script(stages: list[Stage], target: str, command: str) -> None:
    entrypoint = _effective(stages, target, "ENTRYPOINT")

    assert entrypoint is not None
    # Exec form, so the process is PID 1 and receives SIGTERM (workers drain on it).
    assert json.loads(entrypoint) == [command]
    scripts = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["scripts"]
    assert command in scripts


def test_runtime_images_build_on_slim_python_3_11(stages: list[Stage]) -> None:
    for target in ("operator", "worker"):
        root = _chain(stages, target)[-1]
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", root.base), root.base


def test_build_stage_installs_the_package_from_the_repository(stages: list[Stage]) -> None:
    instructions = [item for stage in stages for item in stage.instructions]
    copied = [rest for keyword, rest in instructions if keyword == "COPY"]
    run = " ".join(rest for keyword, rest in instructions if keyword == "RUN")

    assert any("pyproject.toml" in sources for sources in copied)
    assert any(sources.split()[0] == "jobqueue" for sources in copied)
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", run), run


def test_runtime_stages_copy_no_build_context(stages: list[Stage]) -> None:
    # Only the build stage sees source; the runtime gets the finished virtualenv.
    for stage in stages:
        if stage.name in ("runtime", "operator", "worker"):
            for keyword, rest in stage.instructions:
                if keyword == "COPY":
                    assert rest.startswith("--from="), f"{stage.name} copies {rest!r} from source"


def test_dockerignore_lets_every_copied_source_through(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in (REPOSITORY / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        # Docker's rule: the last matching pattern wins; "!" re-includes.
        verdict = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            glob = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, glob) or path.startswith(glob + "/"):
                verdict = not negated
        return verdict

    sources = [
        source
        for stage in stages
        for keyword, rest in stage.instructions
        if keyword == "COPY" and not rest.startswith("--from=")
        for source in rest.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (REPOSITORY / source).exists(), source
        assert not ignored(source.rstrip("/")), f".dockerignore leaves out {source}"
    assert ignored(".venv")
    assert ignored(".devenv.env")
    assert ignored("jobqueue/__pycache__")


def test_parser_follows_stage_chains_and_arguments() -> None:
    text = (
        "ARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS one\n"
        "USER 1000\n"
        "# a comment\n"
        "FROM one AS two\n"
        'ENTRYPOINT ["a", \\\n  "b"]\n'
    )
    arguments, parsed = parse_dockerfile(text)

    assert arguments == {"BASE": "python:3.11-slim"}
    assert [stage.base for stage in parsed] == ["python:3.11-slim", "one"]
    assert _effective(parsed, "two", "USER") == "1000"
    assert json.loads(_effective(parsed, "two", "ENTRYPOINT") or "") == ["a", "b"]
    assert _effective(parsed, "one", "ENTRYPOINT") is None
