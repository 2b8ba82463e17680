"""docs/api.md's Python and grpcurl examples, run against one real engine.

Every InferenceService RPC section of docs/api.md must show a "### Python" block (```python) and a "### grpcurl"
block (```sh) next to its Go one (clients/go/internal/consistency checks the Go blocks). The Errors section has
both too. The blocks of one language build on each other (DeployWorkflow creates `entrance`, AddCamera adds
`lobby`, ... DeleteWorkflow deletes it), so they run in the fixed order of `ORDER`: every Python block, then every
grpcurl block, against one engine subprocess whose config provisions the workflow `people` (plugin `person`).

A Python block runs as a program after the prelude `HOST, PORT, PHOTO = ...`; a grpcurl block runs with bash from
the repository root, with the documented address 127.0.0.1:50051 replaced by the engine's. A block passes when it
exits with 0, or, when it deliberately shows an error and carries `# expect: TEXT` lines, when every TEXT is in
its output. The grpcurl tests are skipped only when no grpcurl binary is found (clients/go/.bin/grpcurl, installed
by `bash scripts/setup-go.sh`, or PATH).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgebox.client import EdgeboxClient
from tests.support.engine import DATA, REPO, EngineProcess, start_engine_process
from tests.support.go_tools import find_go_tool

DOC = REPO / "docs" / "api.md"
PROTO = REPO / "proto" / "infer_service.proto"
PHOTO = DATA / "astronaut.png"
DOC_ADDRESS = "127.0.0.1:50051"  # the address the grpcurl examples show
PROVISIONED_WORKFLOW = "people"
BLOCK_TIMEOUT_S = 90.0  # above the 60 s the stream examples give themselves

# The order the examples of one language run in: each may use what an earlier one created.
ORDER = (
    "HealthCheck",
    "DeployWorkflow",  # creates "entrance"
    "UpdateWorkflow",  # "entrance" version 2
    "ListWorkflows",
    "AddCamera",  # adds "lobby" on "entrance"
    "ListCameras",
    "SubscribeResults",  # reads "lobby"
    "InferSingleFrame",  # "people" and plugin "person"
    "InferBatch",
    "StreamInfer",
    "GetMetrics",
    "RemoveCamera",  # removes "lobby"
    "DeleteWorkflow",  # deletes "entrance"
    "Errors",
)
LANGUAGES = {"Python": "python", "grpcurl": "sh"}  # subsection heading -> fence language


@dataclass(frozen=True)
class Block:
    section: str
    language: str  # "Python" or "grpcurl"
    code: str
    line: int  # 1-based line of the opening fence in docs/api.md

    @property
    def expected(self) -> list[str]:
        return [m.group(1).strip() for m in re.finditer(r"^\s*# expect: (.+)$", self.code, re.MULTILINE)]


def parse_blocks(text: str) -> tuple[dict[tuple[str, str], Block], list[str]]:
    """The Python/grpcurl blocks by (section, language), and the problems found (wrong fence, two blocks)."""
    blocks: dict[tuple[str, str], Block] = {}
    problems: list[str] = []
    section = subsection = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section, subsection = line[3:].strip(), ""
        elif line.startswith("### "):
            subsection = line[4:].strip()
        elif line.startswith("```") and subsection in LANGUAGES:
            fence, start = line[3:].strip(), i
            i += 1
            body = []
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            where = f"docs/api.md:{start + 1} (## {section} / ### {subsection})"
            if fence != LANGUAGES[subsection]:
                problems.append(f"{where}: the block is fenced ```{fence}, expected ```{LANGUAGES[subsection]}")
            elif (section, subsection) in blocks:
                problems.append(f"{where}: a second block; put one runnable block per subsection")
            else:
                blocks[section, subsection] = Block(section, subsection, "\n".join(body) + "\n", start + 1)
        elif line.startswith("```"):  # skip other fenced blocks whole (a "## " inside one is not a heading)
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
        i += 1
    return blocks, problems


def service_rpcs() -> list[str]:
    text = PROTO.read_text(encoding="utf-8")
    service = re.search(r"service InferenceService \{(.*?)\n\}", text, re.DOTALL)
    assert service, f"{PROTO} has no service InferenceService"
    return re.findall(r"^\s*rpc\s+(\w+)\s*\(", service.group(1), re.MULTILINE)


BLOCKS, PROBLEMS = parse_blocks(DOC.read_text(encoding="utf-8"))


GRPCURL = find_go_tool("grpcurl")


# -- the engine -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    eng = start_engine_process(tmp_path_factory.mktemp("docs-api"), {
        "log_level": "WARNING",
        "provision": {"workflows": [{"workflow_id": PROVISIONED_WORKFLOW, "plugins": ["person"]}]},
    })
    yield eng
    assert eng.stop() == 0, eng.log()


def reset(engine: EngineProcess) -> None:
    """Remove what an earlier run of the examples left (a failed block mid-sequence), keeping `people`."""

    async def clean() -> None:
        async with EdgeboxClient(engine.host, engine.port, timeout=30) as client:
            for camera in await client.list_cameras():
                await client.remove_camera(camera.camera_id)
            for workflow in await client.list_workflows():
                if workflow.spec.workflow_id != PROVISIONED_WORKFLOW:
                    await client.delete_workflow(workflow.spec.workflow_id)

    asyncio.run(clean())


def run_block(block: Block, command: list[str], *, cwd: Path, env: dict[str, str], engine: EngineProcess) -> None:
    try:
        proc = subprocess.run(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"{block.language} example of ## {block.section} (docs/api.md:{block.line}) did not finish "
                    f"within {BLOCK_TIMEOUT_S:g} s\n{out[-3000:]}\n{engine.log()}")
    output = proc.stdout + proc.stderr
    where = f"{block.language} example of ## {block.section} (docs/api.md:{block.line})"
    print(f"---- {where}: exit {proc.returncode}\n{output[-2000:]}")  # shown with -s or on failure
    if block.expected:
        missing = [text for text in block.expected if text not in output]
        assert not missing, (f"{where} did not print {missing} (exit {proc.returncode})\n"
                             f"{output[-4000:]}\n{engine.log()}")
    else:
        assert proc.returncode == 0, f"{where} exited with {proc.returncode}\n{output[-4000:]}\n{engine.log()}"


def block_for(section: str, language: str) -> Block:
    block = BLOCKS.get((section, language))
    if block is None:
        pytest.fail(f'docs/api.md section "## {section}" has no "### {language}" subsection with a '
                    f"```{LANGUAGES[language]} block")
    return block


# -- the tests ------------------------------------------------------------------------------------------------
def test_every_rpc_has_python_and_grpcurl_examples() -> None:
    assert not PROBLEMS, "\n".join(PROBLEMS)
    rpcs = service_rpcs()
    missing = [f'"## {rpc}" has no "### {language}" block' for rpc in [*rpcs, "Errors"] for language in LANGUAGES
               if (rpc, language) not in BLOCKS]
    assert not missing, "docs/api.md: " + "; ".join(missing)
    assert sorted(ORDER) == sorted([*rpcs, "Errors"]), (
        f"tests/test_docs_api.py ORDER must list every InferenceService RPC once, plus Errors: {sorted(rpcs)}")
    untested = sorted({section for section, _ in BLOCKS} - set(ORDER))
    assert not untested, f"docs/api.md sections with Python/grpcurl blocks that no test runs: {untested}"


@pytest.mark.parametrize("section", ORDER)
def test_python_example(section: str, engine: EngineProcess, tmp_path: Path) -> None:
    block = block_for(section, "Python")
    if section == ORDER[0]:
        reset(engine)
    prelude = f"HOST, PORT, PHOTO = {engine.host!r}, {engine.port}, {str(PHOTO)!r}\n"
    program = tmp_path / f"example_{section}.py"
    program.write_text(prelude + block.code, encoding="utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    run_block(block, [sys.executable, str(program)], cwd=tmp_path, env=env, engine=engine)


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl not found in clients/go/.bin or on PATH; "
                                            "run: bash scripts/setup-go.sh")
@pytest.mark.parametrize("section", ORDER)
def test_grpcurl_example(section: str, engine: EngineProcess) -> None:
    block = block_for(section, "grpcurl")
    assert GRPCURL is not None
    assert DOC_ADDRESS in block.code, f"grpcurl example of ## {section} does not call {DOC_ADDRESS}"
    if section == ORDER[0]:
        reset(engine)
    script = block.code.replace(DOC_ADDRESS, engine.grpc_address)
    env = dict(os.environ, PATH=f"{Path(GRPCURL).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # -e: a failing command fails the block, unless the block shows an error on purpose (# expect:).
    flags = ["-o", "pipefail"] if block.expected else ["-e", "-o", "pipefail"]
    run_block(block, ["bash", *flags, "-c", script], cwd=REPO, env=env, engine=engine)
