"""Print docker/requirements-common.txt: kubetune's runtime dependency closure as installed in this venv.

`make install` uses this file as pip constraints, so a dev or CI venv holds exactly these versions.
After adding a dependency (installed unconstrained) or upgrading one (`pip install -U NAME` in the
venv), run the tests, then regenerate:
    python docker/lock.py > docker/requirements-common.txt
torch and deepspeed are left out (each image pins its own build of them), and so is kubetune itself.
"""

from __future__ import annotations

import importlib.metadata as metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Pinned per image (torch: CUDA or CPU build; deepspeed: built against that torch), or installed from the repo.
PINNED_PER_IMAGE = {"kubetune", "torch", "deepspeed", "setuptools"}

HEADER = """\
# Every runtime dependency of kubetune (the whole closure, not just the direct ones), pinned to the
# versions its test suite passed with. Both images install it after torch; torch and deepspeed are
# pinned in requirements-trainer.txt and requirements-components.txt, which include this file.
# Regenerate from a venv where the tests pass: python docker/lock.py > docker/requirements-common.txt"""


def closure(name: str, extras: tuple[str, ...] = (), found: dict[str, str] | None = None) -> dict[str, str]:
    """{canonical name: installed version} of `name` and everything it requires (markers evaluated here)."""
    found = {} if found is None else found
    key = canonicalize_name(name)
    if key in found:
        return found
    distribution = metadata.distribution(name)
    found[key] = distribution.version
    for text in distribution.requires or []:
        requirement = Requirement(text)
        wanted = requirement.marker is None or any(
            requirement.marker.evaluate({"extra": extra}) for extra in (extras or ("",))
        )
        if wanted:
            closure(requirement.name, tuple(requirement.extras), found)
    return found


def main() -> None:
    pins = closure("kubetune")
    print(HEADER)
    for name, version in sorted(pins.items()):
        if name not in PINNED_PER_IMAGE:
            print(f"{name}=={version}")


if __name__ == "__main__":
    main()
