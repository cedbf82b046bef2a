"""README.md's `dvc metrics show` sample is what `dvc metrics show` prints on the committed metrics.

scripts/readme_samples.py rewrites the blocks marked `<!-- sample: COMMAND -->` from real runs
(after `dvc repro`); this test runs its check on the repository as it is (no training: the
metrics are committed) and on a README the test writes, where it must find a stale sample and
rewrite it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env

SCRIPT = REPO / "scripts/readme_samples.py"


def samples(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_the_readme_metrics_sample_is_what_dvc_prints():
    result = samples("--check", "--only", "dvc metrics show")
    assert result.returncode == 0, (
        f"{result.stdout}{result.stderr}\nRegenerate it: python scripts/readme_samples.py"
    )
    assert "1 of 1 README samples are current" in result.stdout


@pytest.mark.slow
def test_a_stale_sample_is_found_and_rewritten(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("```\nPath  acc\n```\n")  # a block without the markers is not a sample
    current = samples("--check", "--only", "dvc metrics show", "--readme", str(readme), cwd=tmp_path)
    assert current.returncode != 0 and "no '<!-- sample: dvc metrics show -->' block" in current.stderr
    readme.write_text(
        "Before.\n\n<!-- sample: dvc metrics show -->\n```\nPath  acc\nold   0.945\n```\n"
        "<!-- /sample -->\n\nAfter.\n"
    )
    checked = samples("--check", "--readme", str(readme), "--cwd", str(REPO))
    assert checked.returncode == 1 and "-old   0.945" in checked.stdout
    assert samples("--readme", str(readme), "--cwd", str(REPO)).returncode == 0
    shown = subprocess.run(
        ["dvc", "metrics", "show"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    text = readme.read_text()
    assert text.startswith("Before.\n\n<!-- sample: dvc metrics show -->\n```\n") and text.endswith(
        "```\n<!-- /sample -->\n\nAfter.\n"
    )
    assert "0.945" not in text and "\n".join(line.rstrip() for line in shown.strip().splitlines()) in text
    assert samples("--check", "--readme", str(readme), "--cwd", str(REPO)).returncode == 0


def test_only_dvc_commands_are_run(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- sample: touch pwned -->\n```\n```\n<!-- /sample -->\n")
    result = samples("--check", "--readme", str(readme), cwd=tmp_path)
    assert result.returncode != 0 and "only dvc commands are run" in result.stderr
    assert not (tmp_path / "pwned").exists()
