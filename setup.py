"""Build step: the wheel carries the knowledge, `rules/` and `fhir_mappings/`, as package data.

The two directories stay at the repository root, where reviewers look for them. A wheel (and
so the image) gets a copy under `cds/_bundled/`, which `cds.knowledge` finds with
importlib.resources; an editable install reads the checkout itself. Everything else about
the package is declared in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = ("rules", "fhir_mappings")


class BuildPyWithKnowledge(build_py):
    """build_py, then copy each bundled directory into build/lib/cds/_bundled/."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the checkout's own directories are read in place
            return
        for name in BUNDLED:
            source_dir = ROOT / name
            target_dir = Path(self.build_lib) / "cds" / "_bundled" / name
            for source in sorted(source_dir.rglob("*")):
                if source.is_file() and "__pycache__" not in source.parts:
                    target = target_dir / source.relative_to(source_dir)
                    self.mkpath(str(target.parent))
                    self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildPyWithKnowledge})
