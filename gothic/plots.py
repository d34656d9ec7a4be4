"""Charts as files that open anywhere, offline: PNG, and HTML with its charting scripts inlined.

`dvc plots show` writes HTML that loads Vega from a CDN (blank offline) and no image at all. So
`make plots` and `make compare` take DVC's own Vega-Lite specs (`dvc plots show/diff --json`: the
plots of dvc.yaml with their templates and data filled in) and render them with vl-convert, which
runs Vega in-process: the pictures are the ones DVC would draw, in well under a second each. The
model card draws its loss curve from the checkpoint's own history (gothic.model_card).

    python -m gothic.plots OUT_DIR [REVISION ...]    # no revision: the workspace, as dvc plots show
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

from gothic.errors import GothicError, first_line, printable, run_main
from gothic.files import atomic_path, write_text

# one size for every chart, so a card, a folder of PNGs and a slide line up; "fit" makes it the
# whole image's size (axes and legend inside), not only the plotting area's
WIDTH, HEIGHT = 640, 360


def render(spec: dict, out_dir: Path, name: str, html_page: bool = True) -> Path:
    """Write out_dir/name.png (WIDTH x HEIGHT) and, with html_page, out_dir/name.html (self-contained,
    interactive; about 1 MB of inlined Vega); return the PNG's path."""
    import vl_convert

    spec = {**spec, "width": WIDTH, "height": HEIGHT, "autosize": {"type": "fit", "contains": "padding"}}
    try:
        png = vl_convert.vegalite_to_png(spec, scale=1)
        page = vl_convert.vegalite_to_html(spec, bundle=True) if html_page else None
    except ValueError as e:  # vl-convert's error for a spec Vega-Lite rejects
        raise GothicError(f"cannot render the chart {name!r}: {first_line(e)}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"{name}.png") as tmp:
        tmp.write_bytes(png)
    if page is not None:
        write_text(out_dir / f"{name}.html", page)
    return out_dir / f"{name}.png"


SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"


def loss_curve_spec(history: dict) -> dict | None:
    """A run's train and validation loss against step, from a checkpoint's history; None without rows."""
    rows = [{"step": r["step"], "loss": r["train_loss"], "split": "train"} for r in history.get("train", [])]
    rows += [{"step": r["step"], "loss": r["val_loss"], "split": "validation"} for r in history.get("val", [])]
    if not rows:
        return None
    return {"$schema": SCHEMA, "title": "Loss", "data": {"values": rows}, "mark": "line",
            "encoding": {"x": {"field": "step", "type": "quantitative"},
                         "y": {"field": "loss", "type": "quantitative", "title": "loss (nats per token)",
                               "scale": {"zero": False}},
                         "color": {"field": "split", "type": "nominal", "title": None}}}


def documents_spec(documents: list[dict]) -> dict | None:
    """Held-out bits per byte of each document (metrics/eval.json's list), as bars; None without any."""
    rows = [{"document": d["name"], "bits_per_byte": d["bits_per_byte"]} for d in documents if "name" in d]
    if not rows:
        return None
    return {"$schema": SCHEMA, "title": "Held-out bits per byte", "data": {"values": rows}, "mark": "bar",
            "encoding": {"y": {"field": "document", "type": "nominal", "sort": None, "title": None},
                         "x": {"field": "bits_per_byte", "type": "quantitative",
                               "title": "bits per byte (lower is better)"}}}


def file_name(title: str) -> str:
    """'Learning rate' -> 'learning_rate': a chart's title as a file name."""
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "chart"


def dvc_specs(revisions: list[str] | None = None, cwd: Path | None = None) -> dict[str, dict]:
    """dvc.yaml's plots as filled Vega-Lite specs, by title: the workspace's, or revisions' overlaid."""
    cmd = ["dvc", "plots", "diff", *revisions, "--json"] if revisions else ["dvc", "plots", "show", "--json"]
    # this interpreter's dvc (installed with gothic), whatever PATH holds
    proc = subprocess.run([sys.executable, "-m", *cmd], cwd=cwd, capture_output=True, text=True)
    try:
        data = json.loads(proc.stdout)["data"] if proc.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        data = None
    if data is None:
        why = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no output")
        raise GothicError(f"`{' '.join(cmd)}` failed: {why}")
    return {title: items[0]["content"] for title, items in data.items()
            if items and items[0].get("type") == "vega"}


def render_all(specs: dict[str, dict], out_dir: Path) -> list[Path]:
    """Render each chart, plus an index.html that shows them all; return the PNGs' paths."""
    pngs = [render(spec, out_dir, file_name(title)) for title, spec in specs.items()]
    figures = "\n".join(f'<figure><a href="{html.escape(p.stem)}.html"><img src="{html.escape(p.name)}" '
                        f'alt="{html.escape(title)}"></a><figcaption>{html.escape(title)}</figcaption></figure>'
                        for title, p in zip(specs, pngs, strict=True))
    write_text(out_dir / "index.html", f"<!doctype html>\n<meta charset=utf-8>\n<title>gothic plots</title>\n"
                                       f"{figures}\n")
    return pngs


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        raise GothicError("usage: python -m gothic.plots OUT_DIR [REVISION ...]")
    out_dir, revisions = Path(argv[0]), argv[1:]
    specs = dvc_specs(revisions)
    if not specs:
        raise GothicError("no plot data yet: train a model first (make demo, or dvc exp run)")
    pngs = render_all(specs, out_dir)
    print(printable(f"plots: {', '.join(str(p) for p in pngs)} (open {out_dir / 'index.html'}; each .html is "
                    "interactive)"))


if __name__ == "__main__":
    run_main(main, "plots")
