"""report.html, viewed in a real headless browser: every table of report.md renders as an HTML
table with its rows and header, and every plot decodes (nonzero natural width). Skipped, saying
why, only where no headless Chromium is installed (scripts/setup.sh installs one with apt-get)."""

import html
import json
import random
import re
import shutil
import subprocess

import pytest

from eval.report import write_report

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "headless_shell")
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight}));
  const tables = [...document.querySelectorAll("table")].map(t => ({
    rows: t.rows.length, heads: [...t.rows[0].cells].map(c => c.textContent), w: t.offsetWidth, h: t.offsetHeight}));
  const pre = document.createElement("pre");
  pre.id = "zs-probe";
  pre.textContent = JSON.stringify({imgs, tables});
  document.body.appendChild(pre);
});
</script>
<img alt="control: not an image" src="data:image/png;base64,AAAA">
"""


def browser() -> str | None:
    return next((p for b in BROWSERS if (p := shutil.which(b))), None)


def make_run(path, rng: random.Random):
    methods, sets = ["noadapt", "tent", "zerosiam"], ["arith", "mine"]
    (path / "rows").mkdir(parents=True)
    for d in sets:
        n = rng.randint(3, 40)
        for m in methods:
            with open(path / "rows" / f"{m}__{d}.jsonl", "w") as f:
                for i in range(n):
                    f.write(json.dumps({"id": f"{d}{i}", "index": i, "method": m, "dataset": d,
                                        "correct": rng.random() < 0.5, "response": f"\\boxed{{{i}}}",
                                        "extracted": str(i), "steps": [{"entropy": rng.random(),
                                                                        "logit_norm_centered": 5.0}]}) + "\n")
    (path / "run.json").write_text(json.dumps({"config": {"model": "tiny", "datasets": sets, "methods": methods},
                                               "config_hash": "h", "git_commit": "abc"}))
    return path


def md_tables(md: str) -> list[list[str]]:
    """The tables of report.md, each as its lines without the |---| one."""
    tables, block = [], []
    for line in md.splitlines() + [""]:
        if line.lstrip().startswith("|"):
            block.append(line)
        elif block:
            tables.append([r for r in block if not re.fullmatch(r"\s*\|[\s|:-]*\|\s*", r)])
            block = []
    return tables


def view(page, tmp_path) -> dict:
    exe = browser()
    if exe is None:
        pytest.skip(f"no headless browser ({', '.join(BROWSERS)}) on PATH; scripts/setup.sh installs "
                    "chromium-headless-shell with apt-get")
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'ud'}",
                          "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="zs-probe">(.*?)</pre>', out.stdout, re.S)
    assert m, f"the page's script did not run ({out.returncode}): {out.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


@pytest.mark.parametrize("seed", range(2))
def test_report_html_renders_its_tables_and_plots_in_a_browser(seed, tmp_path):
    run = make_run(tmp_path / "run", random.Random(seed))
    md_path = write_report(run)
    page = run / "report.html"
    assert page.is_file()
    md = md_path.read_text()
    text = page.read_text()
    assert "plots/" not in re.sub(r'alt="[^"]*"', "", text)  # every plot inline, none linked
    seen = view(page, tmp_path)
    plots = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    imgs = [i for i in seen["imgs"] if not i["alt"].startswith("control")]
    assert len(imgs) == len(plots) >= 3  # accuracy and one diagnostics plot per set
    assert all(i["w"] > 0 and i["h"] > 0 for i in imgs), imgs
    assert [i for i in seen["imgs"] if i["alt"].startswith("control")][0]["w"] == 0  # the probe can tell
    tables = md_tables(md)
    assert len(seen["tables"]) == len(tables) >= 3  # accuracy, change from noadapt, diagnostics
    for got, want in zip(seen["tables"], tables):
        assert got["rows"] == len(want) and got["w"] > 0 and got["h"] > 0
        heads = [re.sub(r"\*\*|`", "", c.strip()) for c in want[0].strip().strip("|").split("|")]
        assert got["heads"] == heads
