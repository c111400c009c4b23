"""The README's walk-through runs: every ```bash command that uses `trimkit` on the shipped model, in order,
with its build/walk/ outputs in a temporary folder and fewer questions, exits 0."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHIPPED = "models/easyvqa-small.pt"

# commands not run here, each with its reason (a pattern in the command -> why)
SKIPPED = {
    "--format trt": "builds a TensorRT engine: needs TensorRT and an NVIDIA GPU (make gpu-check)",
}
# counts of questions cut to keep the run short (the commands' own values are for a real run)
SMALLER = {"--samples": 32, "--holdout": 32}
# options added to keep the run short: verify times every shape this many times instead of 20
EXTRA = {"trimkit verify": ["--repeats", "2"]}


def readme_commands() -> list[str]:
    """The command lines of the README's bash blocks that run `trimkit` on the shipped model or its
    walk-through outputs, and the `mkdir`s that make their folders; continuation lines joined, in order."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(("trimkit ", "mkdir ")) and (SHIPPED in line or "build/walk" in line):
                out.append(" ".join(line.split()))
    return out


def rewritten(command: str, tmp: Path) -> str:
    """The command with the shipped model's absolute path, build/walk under `tmp`, fewer questions."""
    command = command.replace(SHIPPED, str(ROOT / SHIPPED))
    command = re.sub(r"(?<![\w/])build/walk\b", f"{tmp}/build/walk", command)
    for option, most in SMALLER.items():
        command = re.sub(rf"{option} (\d+)", lambda m, o=option, n=most: f"{o} {min(int(m.group(1)), n)}", command)
    for prefix, extra in EXTRA.items():
        if command.startswith(prefix + " "):
            command += " " + " ".join(shlex.quote(x) for x in extra)
    return command


def test_the_readme_names_the_commands_this_test_runs():
    commands = readme_commands()
    for expected in ("trimkit export", "trimkit inspect", "trimkit verify", "trimkit show", "trimkit calibrate budget",
                     "trimkit calibrate heads", "trimkit calibrate int8", "--format openvino", "--format triton"):
        assert any(expected in c for c in commands), expected
    for pattern in SKIPPED:  # no stale skip: each still matches a README command
        assert any(pattern in c for c in commands), pattern


@pytest.mark.slow
def test_readme_walk_through_runs(tmp_path):
    bin_dir = Path(sys.executable).parent  # `trimkit` and `python` of this environment
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    ran = []
    for command in readme_commands():
        if any(pattern in command for pattern in SKIPPED):
            continue
        cmd = rewritten(command, tmp_path)
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}\nexit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        ran.append(cmd)
    assert len(ran) >= 8
    walk = tmp_path / "build" / "walk"
    for name in ("trim.onnx", "verify.json", "verify.xml", "show.png", "trim40.pt", "trim.int8.onnx",
                 "openvino/trim.xml", "triton"):
        assert (walk / name).exists(), name
