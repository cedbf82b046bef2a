"""Write .dvc/plots/offline.html: DVC's plots page with Vega, Vega-Lite and vega-embed inside it.

`dvc plots show` and `dvc plots diff` fill DVC's HTML template; the stock one loads the three
JavaScript libraries from a CDN, so offline the page is blank. This repository's .dvc/config sets
`plots.html_template` to the page this script writes, which carries the libraries (their minified
UMD builds from the npm registry, at the versions below) and their licences, and nothing that
reaches the network.

A maintainer updates the libraries by changing VERSIONS and running, from the repository root
(needs `npm`, which fetches the packages from the npm registry):

    python scripts/update_plots_template.py
    pytest tests/test_browser.py       # draws every declared plot in headless Chromium, offline

Keep the majors that DVC's templates declare: DVC 3's plot templates are Vega-Lite v5 specs
(`"$schema": ".../vega-lite/v5.json"`), and vega-embed warns in the console when a spec's major
differs from the library's (Vega-Lite 6 / Vega 6 / vega-embed 7 would do that for every plot).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / ".dvc" / "plots" / "offline.html"

# npm package -> version: the last releases of the majors that DVC 3's templates target.
VERSIONS = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
# The file of the package's minified browser build (UMD: it sets window.vega, vegaLite, vegaEmbed).
BUILDS = {
    "vega": "build/vega.min.js",
    "vega-lite": "build/vega-lite.min.js",
    "vega-embed": "build/vega-embed.min.js",
}
# vega's 5.x npm packages ship no LICENSE file (package.json says BSD-3-Clause); the project's
# licence text is taken from the first release whose package carries it.
LICENCE_FROM = {"vega": "vega@6.4.0"}
# DVC fills these in the template (dvc_render.html.HTML.embed); the libraries must not contain them.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

# Wraps vegaEmbed, which DVC's page calls once per plot as `vegaEmbed('#id', spec)`: draw as SVG
# (axis titles and labels become text a reader can select and a test can read), no "Open in
# Vega Editor" link (a web site), and mark each plot's <div> data-dvc-plot="drawn" or "failed";
# a failure is written into the page, not only into the console.
WRAPPER = """
(function () {
  "use strict";
  var embed = window.vegaEmbed;
  window.vegaEmbed = function (el, spec, options) {
    var target = typeof el === "string" ? document.querySelector(el) : el;
    var settings = Object.assign({renderer: "svg", actions: {export: true, source: true,
                                  compiled: true, editor: false}}, options || {});
    return embed(el, spec, settings).then(function (result) {
      if (target) { target.setAttribute("data-dvc-plot", "drawn"); }
      return result;
    }, function (error) {
      if (target) {
        target.setAttribute("data-dvc-plot", "failed");
        var note = document.createElement("pre");
        note.className = "dvc-plot-error";
        note.textContent = "This plot could not be drawn: " + error;
        target.appendChild(note);
      }
      console.error("vega-embed failed for " + el + ": " + error);
    });
  };
})();
"""

PAGE = """<!DOCTYPE html>
<!-- DVC's page for `dvc plots show` and `dvc plots diff` in this repository (.dvc/config:
     plots.html_template). It carries @NAMES@, so it draws with no network.
     Written by scripts/update_plots_template.py; change the versions there, not here. -->
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
@LIBRARIES@
    <style>
        table {
            border-spacing: 15px;
        }
        .dvc-plot-error {
            color: #b00020;
            white-space: pre-wrap;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def npm_pack(spec: str, folder: Path) -> tuple[tarfile.TarFile, str]:
    """Fetch ``spec`` (name@version) with `npm pack`; return the tarball and npm's integrity."""
    result = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"npm pack {spec} failed:\n{result.stderr.strip()}")
    info = json.loads(result.stdout)[0]
    data = (folder / info["filename"]).read_bytes()
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz"), info["integrity"]


def member(archive: tarfile.TarFile, path: str) -> str | None:
    """The text of ``package/<path>`` in an npm tarball, or None."""
    try:
        handle = archive.extractfile(f"package/{path}")
    except KeyError:
        return None
    return handle.read().decode("utf-8") if handle else None


def library_script(name: str, version: str, folder: Path) -> str:
    """One <script> element: the licence as a comment, then the minified build."""
    archive, integrity = npm_pack(f"{name}@{version}", folder)
    package = json.loads(member(archive, "package.json") or "{}")
    if package.get("version") != version:
        sys.exit(f"npm gave {name} {package.get('version')}, not {version}")
    code = member(archive, BUILDS[name])
    if code is None:
        sys.exit(f"{name}@{version} has no {BUILDS[name]}: update BUILDS in {__file__}")
    licence = member(archive, "LICENSE")
    source = f"{name}@{version}"
    if licence is None and name in LICENCE_FROM:
        source = LICENCE_FROM[name]
        licence = member(npm_pack(source, folder)[0], "LICENSE")
    if licence is None:
        sys.exit(f"{name}@{version} ships no LICENSE: add where its licence text is to LICENCE_FROM")
    for text, what in ((code, BUILDS[name]), (licence, "LICENSE")):
        if re.search(r"</script", text, re.IGNORECASE) or any(p in text for p in PLACEHOLDERS):
            sys.exit(
                f"{name}@{version}'s {what} contains '</script' or one of DVC's placeholders "
                f"{PLACEHOLDERS}: it cannot be inlined as it is"
            )
    if "*/" in licence:
        sys.exit(f"{source}'s LICENSE contains '*/': it cannot sit in a comment")
    sha256 = hashlib.sha256(code.encode("utf-8")).hexdigest()
    header = (
        f"/*! {name} {version} ({package.get('license')}), {BUILDS[name]} of the npm package "
        f"(integrity {integrity}; sha256 of that file {sha256}). It bundles code of its "
        f"dependencies, under their licences (see its package.json).\n"
        f"Licence, from the LICENSE file of {source}:\n\n{licence.strip()}\n*/\n"
    )
    return f"    <script>\n{header}{code.strip()}\n    </script>\n"


def main(argv: list[str] | None = None) -> int:
    """Write the template; print its size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TEMPLATE, help=f"default: {TEMPLATE}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        scripts = "".join(library_script(name, version, Path(folder)) for name, version in VERSIONS.items())
    scripts += f"    <script>{WRAPPER}    </script>"
    names = ", ".join(f"{name} {version}" for name, version in VERSIONS.items())
    page = PAGE.replace("@NAMES@", names).replace("@LIBRARIES@", scripts)  # scripts last: no markers in it
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_name(f".{args.out.name}.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
