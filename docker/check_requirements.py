"""Check that every pin of the images' requirements exists on the package index for the image's Python and glibc.

    python docker/check_requirements.py        (or `make check-image-requirements`; needs the package index)

For each image, one `pip install --dry-run --no-deps` over its requirements file, for the image's
Python version and platform: pip reads each pinned release's metadata (PEP 658) and downloads no
wheel, so a typo'd or yanked pin, or one without a wheel for the image, fails in seconds instead
of in a 40-minute image build. Packages published only as source (SDIST_ONLY) may be built from
source; every other one must have a wheel. torch is checked on PyPI; the images install the same
release from the PyTorch index (its CUDA or CPU build), which this check does not reach.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DOCKER = Path(__file__).resolve().parent
# Published on PyPI as source only; the image builds them (deepspeed with its ops, against torch).
SDIST_ONLY = ("deepspeed", "kfp-server-api")


@dataclass(frozen=True)
class Image:
    requirements: str
    python: str  # the base image's Python (major.minor)
    glibc: tuple[int, int]  # the base image's glibc: wheels for it or older install there

    def platforms(self) -> list[str]:
        major, minor = self.glibc
        return [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 4, -1)] + [
            "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


IMAGES = {
    # nvidia/cuda:12.8.1-*-ubuntu24.04: Ubuntu's python3 (3.12), glibc 2.39
    "trainer": Image("requirements-trainer.txt", "3.12", (2, 39)),
    # python:3.11.13-slim-bookworm: glibc 2.36
    "components": Image("requirements-components.txt", "3.11", (2, 36)),
}


def pins(path: Path) -> set[str]:
    """The package names pinned in a requirements file and the files it includes with -r."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= pins(path.parent / line[3:].strip())
        elif line:
            name, sep, version = line.partition("==")
            if not sep or not version.strip():
                raise SystemExit(f"{path.name}: {line!r} is not pinned with ==")
            names.add(name.strip().lower())
    return names


def check(name: str, image: Image) -> list[str]:
    """Problems with one image's pins (empty when all resolve)."""
    path = DOCKER / image.requirements
    wanted = pins(path)
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [
            sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
            # --isolated: PyPI as the image sees it, not this machine's pip config (local wheels, constraints).
            "--isolated", "--target", str(Path(scratch) / "target"), "--report", str(report),
            "--python-version", image.python, "--only-binary=:all:", f"--no-binary={','.join(SDIST_ONLY)}",
            *[option for platform in image.platforms() for option in ("--platform", platform)],
            "-r", str(path),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
            return [f"{name}: {line}" for line in errors or result.stderr.splitlines()[-3:]]
        installed = json.loads(report.read_text())["install"]
    resolved = {item["metadata"]["name"].lower().replace("_", "-") for item in installed}
    missing = sorted({n.replace("_", "-") for n in wanted} - resolved)
    # pip installs a yanked release when it is pinned exactly; its authors withdrew it for a reason.
    yanked = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in installed if i.get("is_yanked"))
    return [f"{name}: {package} did not resolve" for package in missing] + [
        f"{name}: {pin} is a yanked release; pin another" for pin in yanked]


def main() -> int:
    problems = []
    for name, image in IMAGES.items():
        started = time.monotonic()
        found = check(name, image)
        problems += found
        status = "FAILED" if found else "ok"
        print(f"{name}: {len(pins(DOCKER / image.requirements))} pins for Python {image.python}, "
              f"glibc {image.glibc[0]}.{image.glibc[1]}: {status} ({time.monotonic() - started:.1f} s)")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
