"""`dvc plots diff` draws every declared plot in a real browser with the network off.

The repository's .dvc/config points DVC's `plots.html_template` at .dvc/plots/offline.html,
which carries Vega, Vega-Lite and vega-embed (scripts/update_plots_template.py writes it). The
test builds a tiny git + DVC repository with this repository's `plots:` definitions, its
plots template and config, and two commits of the plotted files (taken from this repository's
committed metrics), runs `dvc plots diff HEAD~1`, and opens the page in headless Chromium with
no network. Every declared plot must be drawn (an SVG with marks), with its axis titles and
both revisions, and the console must stay free of errors. DVC's stock page, in the
same browser, must stay blank: that shows the network really is off. A screenshot is saved
(in a folder of its own under the temp folder) and its path printed.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from html import unescape
from pathlib import Path

import pytest
import yaml

from conftest import REPO, subprocess_env

TEMPLATE = REPO / ".dvc/plots/offline.html"
CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
    None,
)
# Console errors fail the test (the page under test is instrumented: see instrument). Warnings do
# not: DVC 3.67's own templates make Vega warn ("Infinite extent for field", "Dropping {} from
# channel "row""), for plots that draw correctly.
CONSOLE_ERROR = re.compile(r'CONSOLE[^\]]*\] "(Uncaught|console\.error:)')
CONSOLE_WARNING = re.compile(r'CONSOLE[^\]]*\] "console\.warn:')


def needs_chromium() -> None:
    """Skip (one line) without Chromium; in CI (CI=true) fail instead: .ci/run installs it."""
    if CHROMIUM:
        return
    if os.environ.get("CI"):
        pytest.fail("CI has no Chromium: .ci/run installs Debian's `chromium` package")
    pytest.skip("no Chromium (Debian: apt-get install chromium); the offline plots page is untested")


def declared_plots() -> list[tuple[str, dict]]:
    """This repository's `plots:` entries of dvc.yaml as (id, properties)."""
    plots = []
    for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]:
        if isinstance(entry, str):
            plots.append((entry, {}))
        else:
            ((name, properties),) = entry.items()
            plots.append((name, properties or {}))
    return plots


def plotted_files(name: str, properties: dict) -> list[str]:
    """The files a plot definition reads (its y and x mappings, else its id)."""
    files = [path for key in ("y", "x") if isinstance(properties.get(key), dict) for path in properties[key]]
    return sorted(set(files)) or [name]


def update_script():
    spec = importlib.util.spec_from_file_location(
        "update_plots_template", REPO / "scripts/update_plots_template.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_repository_uses_the_offline_template():
    config = (REPO / ".dvc/config").read_text()
    assert re.search(r"^\s*html_template\s*=\s*plots/offline\.html\s*$", config, re.MULTILINE), config
    page = TEMPLATE.read_text(encoding="utf-8")
    assert "{plot_divs}" in page  # DVC refuses a template without it
    assert "{scripts}" not in page  # where DVC would put its CDN <script src=...> tags
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)
    versions = update_script().VERSIONS
    for name, version in versions.items():
        assert f"/*! {name} {version} (BSD-3-Clause)" in page
    assert page.count("Redistribution and use in source and binary forms") == len(versions)
    assert TEMPLATE.stat().st_size < 2_000_000


def run(folder: Path, *command: str) -> str:
    result = subprocess.run(
        command, cwd=folder, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def rows_of(path: Path) -> tuple[str, list[str]]:
    lines = path.read_text().splitlines()
    return lines[0], [line for line in lines[1:] if line.strip()]


def write_plotted_files(folder: Path, files: list[str], drop_last: bool) -> None:
    """Copy the plotted files from this repository. An empty CSV (an arm skipped offline when the
    outputs were made) gets the rows of another plotted file with the same header; ``drop_last``
    drops the last row of each CSV (another commit's data). Other files (JSON, YAML) are copied."""
    for path in files:
        if Path(path).suffix not in (".csv", ".tsv"):
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / path, folder / path)
    tables = {path: rows_of(REPO / path) for path in files if Path(path).suffix in (".csv", ".tsv")}
    for path, (header, rows) in tables.items():
        if not rows:
            rows = next((other for h, other in tables.values() if h == header and other), [])
        assert rows, f"{path} and every plotted file with its columns are empty in the repository"
        if drop_last and len(rows) > 1:
            rows = rows[:-1]
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join([header, *rows]) + "\n")


@pytest.fixture()
def plots_repo(tmp_path) -> Path:
    """A git + DVC repository with this one's plots, its template, and two commits of the data."""
    folder = tmp_path / "repo"
    folder.mkdir()
    run(folder, "git", "init", "-q")
    run(folder, "git", "config", "user.email", "test@example.com")
    run(folder, "git", "config", "user.name", "test")
    run(folder, "dvc", "init", "-q")
    shutil.copy(REPO / ".dvc/config", folder / ".dvc/config")
    shutil.copytree(REPO / ".dvc/plots", folder / ".dvc/plots")
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    files = sorted({path for name, props in declared_plots() for path in plotted_files(name, props)})
    for drop_last, message in ((True, "one epoch fewer"), (False, "as committed")):
        write_plotted_files(folder, files, drop_last)
        run(folder, "git", "add", "-A")
        run(folder, "git", "commit", "-qm", message)
    return folder


def offline_prefix() -> list[str]:
    """Run Chromium in a network namespace of its own where the system allows (no network at all)."""
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        if shutil.which(prefix[0]) and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return []  # the proxy flags below still send every request to a closed port


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        *offline_prefix(),
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=20000",
        "--hide-scrollbars",
        *extra,
        page.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
    return result


def instrument(page: Path) -> Path:
    """A copy of ``page`` whose console.error / console.warn messages are marked as such in Chromium's
    log (which shows every console message alike); uncaught errors are marked "Uncaught" already."""
    marker = (
        "<script>['error', 'warn'].forEach(function (level) { var original = console[level];"
        " console[level] = function () { original.call(console, 'console.' + level + ': ' +"
        " Array.prototype.join.call(arguments, ' ')); }; });</script>"
    )
    text = page.read_text(encoding="utf-8")
    head = text.index("<head>") + len("<head>")  # before any library's own text
    copy = page.with_name("instrumented.html")
    copy.write_text(text[:head] + marker + text[head:], encoding="utf-8")
    return copy


def plot_ids(html: str) -> list[str]:
    """The ids of DVC's plot <div>s, in the page's order."""
    return re.findall(r'<div id\s*=\s*"([^"]+)"', html)


def div_id(name: str) -> str:
    from dvc_render.base import Renderer

    return Renderer.remove_special_chars(name)


def svg_texts(fragment: str, role: str) -> list[str]:
    """The texts of the SVG elements of ``role``, unescaped (``>=`` is ``&gt;=`` in the markup)."""
    return [
        unescape(text)
        for text in re.findall(rf'class="[^"]*\brole-{role}\b[^"]*"[^>]*>(?:<[^>]+>)*([^<]+)<', fragment)
    ]


@pytest.mark.slow
def test_every_declared_plot_draws_offline_for_two_commits(plots_repo, tmp_path, capsys):
    needs_chromium()
    out = tmp_path / "dvc_plots"
    run(plots_repo, "dvc", "plots", "diff", "HEAD~1", "-o", str(out))
    page = out / "index.html"
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.IGNORECASE), "the page loads a script"
    plots = declared_plots()
    assert plot_ids(html) == [div_id(name) for name, _ in plots]

    result = chromium(instrument(page), tmp_path / "profile", "--dump-dom")
    errors = [line for line in result.stderr.splitlines() if CONSOLE_ERROR.search(line)]
    assert not errors, "console errors:\n" + "\n".join(errors)
    warnings = sorted(
        {
            line.split('"', 1)[1].rsplit('", source', 1)[0]
            for line in result.stderr.splitlines()
            if CONSOLE_WARNING.search(line)
        }
    )
    dom = result.stdout
    starts = {m.group(1): m.start() for m in re.finditer(r'<div id="([^"]+)"', dom)}
    for name, properties in plots:
        start = starts[div_id(name)]
        end = min([s for s in starts.values() if s > start] + [len(dom)])
        fragment = dom[start:end]
        head = fragment[: fragment.index(">")]
        assert 'data-dvc-plot="drawn"' in head, f"{name!r} was not drawn: {fragment[:2000]}"
        assert "<svg" in fragment and len(re.findall(r"\brole-mark\b", fragment)) >= 1, name
        titles = svg_texts(fragment, "axis-title")
        for axis in ("x", "y"):
            label = properties.get(f"{axis}_label") or properties.get(axis)
            if isinstance(label, str):
                assert label in titles, f"{name!r}: no axis title {label!r} among {titles}"
        text = " ".join(re.findall(r">([^<]+)<", fragment[fragment.index("<svg") :]))
        assert "HEAD~1" in text and "workspace" in text, f"{name!r} does not show both revisions: {text}"

    # pytest removes a passing test's tmp_path (pyproject: tmp_path_retention_policy), so the
    # screenshot goes to a folder of its own in the temp folder, kept for the person who ran the test.
    screenshot = Path(tempfile.mkdtemp(prefix="retinopathy-plots-offline-")) / "dvc-plots-diff.png"
    chromium(page, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1400,2400")
    assert screenshot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\n`dvc plots diff HEAD~1`, drawn offline in Chromium: {screenshot}")
        print("".join(f"  console warning: {warning}\n" for warning in warnings), end="")


@pytest.mark.slow
def test_the_stock_page_stays_blank_here(plots_repo, tmp_path):
    """DVC's own page loads its libraries from a CDN: in the test's browser it must draw nothing,
    or the test above would not show that the offline template is what draws."""
    needs_chromium()
    from dvc_render.html import PAGE_HTML

    stock = tmp_path / "stock.html"
    stock.write_text(PAGE_HTML)
    out = tmp_path / "stock_plots"
    run(plots_repo, "dvc", "plots", "diff", "HEAD~1", "-o", str(out), "--html-template", str(stock))
    page = out / "index.html"
    assert re.search(r"<script[^>]*\bsrc\s*=\s*\"https://", page.read_text())
    dom = chromium(page, tmp_path / "profile", "--dump-dom").stdout
    assert plot_ids(dom) and "<svg" not in dom and "<canvas" not in dom


def test_the_update_script_refuses_a_library_that_breaks_the_page(tmp_path):
    module = update_script()
    for text in ("x='</script>'", "a{plot_divs}b"):
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            for path, data in (
                ("package/package.json", '{"version": "1.0.0", "license": "MIT"}'),
                ("package/build/vega.min.js", text),
                ("package/LICENSE", "MIT licence"),
            ):
                info = tarfile.TarInfo(path)
                info.size = len(data.encode())
                tar.addfile(info, io.BytesIO(data.encode()))
        packed = archive.getvalue()
        module.npm_pack = lambda spec, folder, packed=packed: (
            tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz"),  # noqa: SIM115
            "sha512-test",
        )
        with pytest.raises(SystemExit, match="cannot be inlined"):
            module.library_script("vega", "1.0.0", tmp_path)
