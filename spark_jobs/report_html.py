"""The validation report as one self-contained HTML page: tables, and plots embedded as PNG.

Plots (matplotlib, Agg backend, no display needed): label shares old vs new, score histograms
old vs new, and the confusion table old vs new labels. Each is a ``data:image/png;base64`` image,
so the page can be mailed, attached or served from anywhere without its neighbours.
"""

from __future__ import annotations

import base64
import io
import itertools
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}.pass{color:#17702a;font-weight:600}.fail{color:#b00020;font-weight:600}
.skip{color:#777}.verdict{font-size:1.2em;padding:.6em;border-radius:4px}
.verdict.pass{background:#e6f4ea}.verdict.fail{background:#fde7e9}img{max-width:100%;display:block}
code{background:#f5f5f5;padding:0 .2em}
"""


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{escape(alt)}">'


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot) never touches a GUI backend or global state.
    return Figure(figsize=(width, height))


def label_shares_plot(new: dict[str, float], old: dict[str, float] | None, new_name: str, old_name: str) -> str:
    labels = sorted(set(new) | set(old or {}))
    fig = _figure(7, 3.2)
    ax = fig.subplots()
    positions = list(range(len(labels)))
    width = 0.4 if old is not None else 0.8
    if old is not None:
        ax.bar([p - width / 2 for p in positions], [old.get(x, 0) for x in labels], width, label=old_name)
        ax.bar([p + width / 2 for p in positions], [new.get(x, 0) for x in labels], width, label=new_name)
    else:
        ax.bar(positions, [new.get(x, 0) for x in labels], width, label=new_name)
    ax.set_xticks(positions, labels, rotation=30 if len(labels) > 6 else 0)
    ax.set_ylabel("share of images")
    ax.set_title("Label shares")
    ax.legend()
    return _png(fig)


def score_histogram_plot(
    edges: list[float], new: list[int], old: list[int] | None, new_name: str, old_name: str
) -> str:
    fig = _figure(7, 3.2)
    ax = fig.subplots()
    centers = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    width = (edges[1] - edges[0]) if len(edges) > 1 else 0.1

    def shares(counts: list[int]) -> list[float]:
        total = sum(counts)
        return [c / total if total else 0.0 for c in counts]

    if old is not None:
        ax.bar([c - width / 4 for c in centers], shares(old), width / 2, label=old_name)
        ax.bar([c + width / 4 for c in centers], shares(new), width / 2, label=new_name)
    else:
        ax.bar(centers, shares(new), width * 0.9, label=new_name)
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (confidence of the predicted label)")
    ax.set_ylabel("share of predictions")
    ax.set_title("Score histogram")
    ax.legend()
    return _png(fig)


def confusion_plot(labels: list[str], counts: list[list[int]], new_name: str, old_name: str) -> str:
    side = max(3.5, 0.6 * len(labels) + 2)
    fig = _figure(side, side)
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel(f"label from {new_name}")
    ax.set_ylabel(f"label from {old_name}")
    ax.set_title("Confusion: old vs new label")
    peak = max((max(row) for row in counts), default=0)
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    return _png(fig)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _text(value: Any) -> str:
    return escape("" if value is None else str(value))


def render_html(report: dict[str, Any]) -> str:
    """The whole page for a report as built by :func:`spark_jobs.validate.validate_predictions`."""
    name, version = report["model_name"], report["model_version"]
    new_name = f"v{version}"
    dist, cmp = report["distribution"], report.get("comparison")
    old_name = f"v{cmp['baseline_version']} (promoted)" if cmp else ""
    ok = report["passed"]

    gate_rows = []
    for g in report["gates"]:
        state = ("skip", "skipped") if g.get("skipped") else ("pass", "passed") if g["passed"] else ("fail", "FAILED")
        gate_rows.append(
            [
                f"<code>{_text(g['name'])}</code>",
                f'<span class="{state[0]}">{state[1]}</span>',
                _text(g["value"]),
                _text(g["threshold"]),
                _text(g["detail"]),
            ]
        )
    cov, san, run, scope = report["coverage"], report["sanity"], report["run"], report["scope"]
    facts = [
        ["images in scope", _text(cov["images_in_scope"])],
        ["scope (ingestion dates)", f"{_text(scope['from_date'] or 'first')} .. {_text(scope['to_date'] or 'last')}"],
        ["predictions", _text(cov["predictions"])],
        ["missing", f"{cov['missing']} {_text(', '.join(cov['missing_sample']))}"],
        ["duplicates", f"{cov['duplicates']} {_text(', '.join(cov['duplicate_sample']))}"],
        *[[escape(k.replace("_", " ")), _text(san[k])] for k in san if k not in ("error_sample", "invalid_rows")],
        ["scoring errors (sample)", _text("; ".join(san["error_sample"]) or "none")],
        ["rows validated", _text(run["rows"])],
        ["wall time (s)", _text(run["wall_seconds"])],
        ["rows per second", _text(run["rows_per_second"])],
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Validation: {escape(name)} v{escape(str(version))}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Validation report: {escape(name)} v{escape(str(version))}</h1>",
        f'<p class="verdict {"pass" if ok else "fail"}">{escape(report["verdict"])}</p>',
        f"<p>Run <code>{_text(report.get('run_id'))}</code>, created {_text(report['created_at'])}; "
        f"compared with: {escape(old_name) if cmp else 'nothing (no other version is promoted)'}.</p>",
        "<h2>Gates</h2>",
        _table(["gate", "result", "measured", "threshold", "detail"], gate_rows),
        "<h2>Label shares</h2>",
        _img(
            label_shares_plot(
                dist["label_shares"], cmp["baseline_distribution"]["label_shares"] if cmp else None, new_name, old_name
            ),
            "label shares old vs new",
        ),
        "<h2>Score histogram</h2>",
        _img(
            score_histogram_plot(
                dist["score_histogram"]["edges"],
                dist["score_histogram"]["counts"],
                cmp["baseline_distribution"]["score_histogram"]["counts"] if cmp else None,
                new_name,
                old_name,
            ),
            "score histograms old vs new",
        ),
    ]
    if cmp:
        conf = cmp["confusion"]
        parts += [
            "<h2>Compared with the promoted version</h2>",
            _table(
                ["measure", "value"],
                [
                    ["images scored by both", _text(cmp["compared_images"])],
                    ["label changed", _text(cmp["label_changed"])],
                    ["label change share", _text(cmp["label_change_share"])],
                    ["PSI of scores", _text(cmp["psi"])],
                    ["Jensen-Shannon divergence of scores", _text(cmp["js_divergence"])],
                ],
            ),
            "<h3>Confusion table (rows: old label, columns: new label)</h3>",
            _img(confusion_plot(conf["labels"], conf["counts"], new_name, old_name), "confusion table old vs new"),
            _table(
                ["old \\ new", *conf["labels"]],
                [[f"<b>{escape(lbl)}</b>", *row] for lbl, row in zip(conf["labels"], conf["counts"], strict=True)],
            ),
            "<h3>Changed labels with the largest confidence swing</h3>",
            _table(
                ["image_id", "old label", "new label", "old score", "new score", "swing"],
                [
                    [f"<code>{_text(c['image_id'])}</code>", _text(c["old_label"]), _text(c["new_label"]),
                     _text(c["old_score"]), _text(c["new_score"]), _text(c["swing"])]
                    for c in cmp["top_changed"]
                ],
            ),
        ]  # fmt: skip
    else:
        parts.append("<p>No confusion table: no other version is promoted to compare with.</p>")
    parts += ["<h2>Coverage, sanity and run facts</h2>", _table(["fact", "value"], facts), "</body></html>"]
    return "\n".join(parts)
