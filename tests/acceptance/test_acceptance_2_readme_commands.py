"""#2 "The README's two commands work": the README opens with ``bash scripts/run.sh`` and
``bash scripts/test.sh``. Setting up (venv + pip) needs the network, so it is not repeated here;
what the set-up ends with — the command line the script ``exec``s — is run as written, on a copy of
config.example.toml in a fresh directory, and must start the gateway on the embedded dev broker."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "claudemesh-gateway"

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:sh|bash)?\n(.*?)```", text, re.DOTALL)
    assert first_block and text.index("```") < 200, "the README must open with the two commands"
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["bash scripts/run.sh", "bash scripts/test.sh"]
    for script in ("scripts/run.sh", "scripts/test.sh"):
        assert (ROOT / script).is_file()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def exec_line(script: str) -> list[str]:
    (line,) = [ln for ln in (ROOT / script).read_text().splitlines() if ln.startswith("exec ")]
    return [a for a in shlex.split(line)[1:] if a != "$@"]  # "$@": the script's own arguments (none here)


RUN_SH_BUG = "claudemesh-gateway run -c" in (ROOT / "scripts" / "run.sh").read_text()


@pytest.mark.xfail(RUN_SH_BUG, strict=True, reason=(
    "BUG: scripts/run.sh execs `claudemesh-gateway run -c config.example.toml`, but -c is a global option "
    "of core/cli.py's parser (before the subcommand); argparse exits 2 'unrecognized arguments: -c "
    "config.example.toml', so the README's first command never starts the gateway (a fix to scripts/run.sh "
    "is being made in the working tree; the marker applies only while the script still has the old order)"))
async def test_run_script_command_line_starts_the_gateway_on_the_example(tmp_path: Path) -> None:
    argv = exec_line("scripts/run.sh")
    assert argv[0] == ".venv/bin/claudemesh-gateway"
    shutil.copy(ROOT / "config.example.toml", tmp_path / "config.example.toml")
    port, broker_port = free_port(), free_port()
    env = {**os.environ, "CLAUDEMESH_SERVER__PORT": str(port), "CLAUDEMESH_DEV_BROKER__PORT": str(broker_port),
           "CLAUDEMESH_GATEWAYS__WEBHOOK__URL": f"http://127.0.0.1:{port}/-/dev/sink"}
    env.pop("CLAUDEMESH_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(str(EXE), *argv[1:], cwd=tmp_path, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                if proc.returncode is not None:
                    break
                try:
                    async with http.get(f"http://127.0.0.1:{port}/-/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        assert proc.returncode is None, f"`{' '.join(argv)}` exited with {proc.returncode}"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-1500:]
