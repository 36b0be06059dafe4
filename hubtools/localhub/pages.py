"""The local hub's browsable pages: repo list, repo page (card, files, refs, commits, dataset preview)
and the run view comparing every `step-N` revision.

Why server-rendered HTML with no JavaScript: cards are text anyone with a write token can push, so
they go through markdown-it and then an explicit nh3 allow-list, pages send a CSP that allows no
script at all, and the run plot is an SVG drawn here. Read-only, and a repo the request may not read
looks exactly like a missing one.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import math
import posixpath
import re
from pathlib import Path
from typing import Callable
from urllib.parse import quote, unquote, urlsplit

import jinja2
import nh3
from markdown_it import MarkdownIt
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from hubtools.localhub.store import HubError, Repo, Store

PREVIEW_ROWS = 10
PREVIEW_DECODE_LIMIT = 64 << 20  # bytes a preview may decode (a tiny file can hold a huge page)
CELL_LIMIT = 300  # characters shown per dataset cell
COMMITS_SHOWN = 100
FILES_SHOWN = 1000  # rows of the file table (the API lists them all, page by page)
_STEP_RE = re.compile(r"^step-(\d+)$")
_TRAIN_KEYS = ("training_reward", "training_loss")  # a step card's training figure, in order of preference
_CSP = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'")
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                          autoescape=True, trim_blocks=True, lstrip_blocks=True)
_MD = MarkdownIt("commonmark").enable("table")
_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr", "blockquote", "pre", "code", "em", "strong",
         "del", "s", "sub", "sup", "kbd", "span", "div", "ul", "ol", "li", "a", "img", "table", "thead",
         "tbody", "tr", "th", "td", "details", "summary"}
_ATTRS = {"a": {"href", "title"}, "img": {"src", "alt", "title", "width", "height"}, "ol": {"start"},
          "th": {"style", "align"}, "td": {"style", "align"}}
_PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]
_TRAIN_COLOR = "#111827"


class _NotFound(Exception):
    """Anything a page cannot show: answered with the same 404 page whatever the reason."""


def page_routes(store: Store, can_read: Callable[[Request, Repo], bool]) -> list[BaseRoute]:
    """The HTML routes, to mount after the API routes (their patterns do not overlap the API's)."""

    def repo_for(request: Request, repo_type: str) -> Repo:
        try:
            repo = store.get_repo(repo_type, f"{request.path_params['ns']}/{request.path_params['name']}")
        except HubError:
            raise _NotFound
        if not can_read(request, repo):
            raise _NotFound
        return repo

    def page(build: Callable[[Request], tuple[str, dict]]) -> Callable[[Request], HTMLResponse]:
        def endpoint(request: Request) -> HTMLResponse:
            try:
                template, context = build(request)
                status = 200
            except _NotFound:
                template, context, status = "error.html", {"title": "404", "crumbs": []}, 404
            return HTMLResponse(_ENV.get_template(template).render(**context), status,
                                headers={"Content-Security-Policy": _CSP})
        return endpoint  # sync: Starlette runs it in its threadpool, as the SQLite store needs

    def home(request: Request) -> tuple[str, dict]:
        sections = []
        for repo_type, heading in (("model", "Models"), ("dataset", "Datasets")):
            rows = []
            for repo in store.list_repos(repo_type):
                if not can_read(request, repo):
                    continue
                refs = store.refs(repo)
                dates = [store.commit_info(oid)["date"] for kind in refs.values() for oid in kind.values()]
                rows.append({"repo": repo, "url": _repo_url(repo), "branches": len(refs["branch"]),
                             "modified": _date(max(dates, default=repo.created_at))})
            sections.append((heading, rows))
        return "home.html", {"title": "Local hub", "crumbs": [], "sections": sections}

    def repo_page(repo_type: str) -> Callable[[Request], tuple[str, dict]]:
        def build(request: Request) -> tuple[str, dict]:
            repo = repo_for(request, repo_type)
            rev = unquote(request.path_params.get("rev", "main"))  # routing kept %2F and %25 quoted
            try:
                oid = store.resolve(repo, rev)
            except HubError:
                raise _NotFound
            files = store.files(oid)
            meta, body = store.read_card(files.get("README.md"))
            refs = store.refs(repo)
            ctx = {
                "title": f"{repo.repo_id} at {rev}", "repo": repo, "rev": rev, "oid": oid,
                "crumbs": [(repo.repo_id, _repo_url(repo)), (rev, _tree_url(repo, rev))],
                "meta": _meta_rows(meta), "card": _render_card(body, _resolve_url(repo, rev, "")),
                "readme": "README.md" in files,
                "files": [{"path": f.path, "size": _size(f.size), "lfs": f.lfs, "url": _resolve_url(repo, rev, f.path)}
                          for f in itertools.islice(files.values(), FILES_SHOWN)],
                "file_count": len(files),
                "refs": {kind: [(name, _tree_url(repo, name)) for name in names] for kind, names in refs.items()},
                "commits": [{"title": c["title"], "short": c["oid"][:7], "oid": c["oid"], "date": _date(c["date"]),
                             "url": _tree_url(repo, c["oid"])} for c in store.history(oid)[:COMMITS_SHOWN]],
                "run_url": _repo_url(repo) + "/run" if any(_STEP_RE.match(b) for b in refs["branch"]) else None,
                "previews": _previews(store, files, meta) if repo_type == "dataset" else [],
            }
            return "repo.html", ctx
        return build

    def run_view(request: Request) -> tuple[str, dict]:
        repo = repo_for(request, "model")
        steps = sorted((int(m.group(1)), name, oid) for name, oid in store.refs(repo)["branch"].items()
                       if (m := _STEP_RE.match(name)))
        rows, columns, metas = [], {}, []
        for step, name, oid in steps:
            meta, _ = store.read_card(store.files(oid).get("README.md"))
            metas.append(meta)
            metrics = _metrics(meta)
            for key in metrics:
                columns.setdefault(key, None)
            rows.append({"step": step, "url": _tree_url(repo, name), "metrics": metrics})
        # a GRPO run's cards carry training_reward, an SFT run's training_loss: the run's own training figure
        train_key = next((k for k in _TRAIN_KEYS if any(k in m for m in metas)), _TRAIN_KEYS[0])
        for row, meta in zip(rows, metas):
            row["train"] = _number(meta.get(train_key))
        columns, train_label = list(columns), train_key.replace("_", " ")
        return "run.html", {"title": f"{repo.repo_id} run", "repo": repo, "rows": rows, "columns": columns,
                            "train_key": train_key, "train_label": train_label,
                            "crumbs": [(repo.repo_id, _repo_url(repo)), ("run", _repo_url(repo) + "/run")],
                            "plot": _plot(rows, columns, train_label) if rows else None}

    return [
        Route("/", page(home), methods=["GET"]),
        Route("/datasets/{ns}/{name}", page(repo_page("dataset")), methods=["GET"]),
        Route("/datasets/{ns}/{name}/tree/{rev:path}", page(repo_page("dataset")), methods=["GET"]),
        Route("/{ns}/{name}", page(repo_page("model")), methods=["GET"]),
        Route("/{ns}/{name}/tree/{rev:path}", page(repo_page("model")), methods=["GET"]),
        Route("/{ns}/{name}/run", page(run_view), methods=["GET"]),
    ]


# -- URLs ------------------------------------------------------------------------------------
def _repo_url(repo: Repo) -> str:
    return ("/datasets/" if repo.type == "dataset" else "/") + repo.repo_id


def _tree_url(repo: Repo, rev: str) -> str:
    return f"{_repo_url(repo)}/tree/{quote(rev, safe='')}"


def _resolve_url(repo: Repo, rev: str, path: str) -> str:
    return f"{_repo_url(repo)}/resolve/{quote(rev, safe='')}/{quote(path)}"


# -- the card --------------------------------------------------------------------------------
def _render_card(body: str, resolve_base: str) -> str:
    """Markdown → HTML → nh3 allow-list; relative links and images point at the revision's files."""
    def rewrite(tag: str, attr: str, value: str) -> str | None:
        if attr in ("src", "href") and value and not value.startswith(("#", "/")) and not urlsplit(value).scheme:
            return resolve_base + quote(posixpath.normpath(unquote(urlsplit(value).path)))
        return value
    return nh3.clean(_MD.render(body), tags=_TAGS, clean_content_tags={"script", "style"}, attributes=_ATTRS,
                     attribute_filter=rewrite, url_schemes={"http", "https"}, link_rel="noopener noreferrer",
                     filter_style_properties={"text-align"})


def _meta_rows(meta: dict) -> list[tuple[str, str]]:
    """Front matter as short key/value strings (structured values as truncated JSON)."""
    rows = []
    for key, value in meta.items():
        if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
            text = ", ".join(map(str, value))
        elif isinstance(value, (dict, list)):
            text = json.dumps(value, ensure_ascii=False, default=str)
        else:
            text = str(value)
        rows.append((str(key), _truncate(text, 160)))
    return rows


# -- dataset preview -------------------------------------------------------------------------
def _splits(files: dict, meta: dict) -> list[tuple[str, str, list[str]]]:
    """(config, split, parquet paths) from the card's `configs`, else from the `config/split-*` layout."""
    parquet = [p for p in files if p.endswith(".parquet")]
    out = []
    for config in _dicts(meta.get("configs")):
        data_files = config.get("data_files")
        if isinstance(data_files, (str, list)) and not _dicts(data_files):
            data_files = [{"split": "train", "path": data_files}]
        for entry in _dicts(data_files):
            patterns = entry.get("path")
            patterns = [patterns] if isinstance(patterns, str) else [p for p in patterns or [] if isinstance(p, str)]
            paths = sorted(p for p in parquet if any(fnmatch.fnmatchcase(p, pat) for pat in patterns))
            out.append((str(config.get("config_name", "default")), str(entry.get("split", "train")), paths))
    if out:
        return out
    layout: dict[tuple[str, str], list[str]] = {}
    for path in sorted(parquet):
        folder, _, base = path.rpartition("/")
        config = "default" if folder in ("", "data") else folder
        layout.setdefault((config, base.split("-")[0].removesuffix(".parquet")), []).append(path)
    return [(c, s, paths) for (c, s), paths in layout.items()]


def _previews(store: Store, files: dict, meta: dict) -> list[dict]:
    """First PREVIEW_ROWS rows of each config/split: one batch of its first parquet file, never the file."""
    import pyarrow.parquet as pq

    out = []
    for config, split, paths in _splits(files, meta):
        preview = {"config": config, "split": split, "columns": [], "rows": [], "error": None}
        if not paths:
            preview["error"] = "no parquet file matches this split"
        else:
            try:
                parquet = pq.ParquetFile(store.blob_path(files[paths[0]].sha256))
                preview["columns"] = parquet.schema_arrow.names
                meta_ = parquet.metadata
                first = meta_.row_group(0) if meta_.num_row_groups else None
                if first is not None and sum(first.column(i).total_uncompressed_size
                                             for i in range(first.num_columns)) > PREVIEW_DECODE_LIMIT:
                    raise ValueError(f"its first row group decodes to over {PREVIEW_DECODE_LIMIT >> 20} MiB; "
                                     "no preview (a file written by `datasets` keeps row groups small)")
                batch = next(parquet.iter_batches(batch_size=PREVIEW_ROWS), None)
                columns = [column.to_pylist() for column in batch.columns] if batch is not None else []
                preview["rows"] = [[_cell(v) for v in row] for row in zip(*columns)]
            except Exception as e:  # a corrupt or non-parquet blob: say so on the page
                preview["error"] = f"cannot read {paths[0]}: {e}"
        out.append(preview)
    return out


def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return _truncate(text, CELL_LIMIT)


# -- run view --------------------------------------------------------------------------------
def _metrics(meta: dict) -> dict[tuple[str, str], float]:
    """{(metric name, dataset name): value} from `model-index[0].results[*].metrics[*]`."""
    index = _dicts(meta.get("model-index"))
    out = {}
    for result in _dicts(index[0].get("results")) if index else []:
        dataset = result.get("dataset") if isinstance(result.get("dataset"), dict) else {}
        dataset_name = str(dataset.get("name") or dataset.get("type") or "")
        for metric in _dicts(result.get("metrics")):
            label, value = metric.get("name") or metric.get("type"), _number(metric.get("value"))
            if label and value is not None:
                out[(str(label), dataset_name)] = value
    return out


def _plot(rows: list[dict], columns: list[tuple[str, str]], train_label: str) -> dict:
    """Geometry of the run plot: evals on the left axis, the training figure (reward or loss) on the right one."""
    width, left, right, top, bottom = 960, 64, 64, 16, 300
    steps = [r["step"] for r in rows]
    x0, x1 = min(steps), max(steps)
    span = (x1 - x0) or 1

    def x(step: int) -> float:
        return left + (step - x0) / span * (width - left - right) if x1 > x0 else width / 2

    def axis(values: list[float]) -> tuple[list[float], Callable[[float], float]] | None:
        if not values:
            return None
        ticks = _ticks(min(values), max(values))
        lo, hi = ticks[0], ticks[-1]
        return ticks, lambda v: bottom - (v - lo) / ((hi - lo) or 1) * (bottom - top)

    series = [(f"{name} · {ds}" if ds else name, [(r["step"], r["metrics"].get((name, ds))) for r in rows], "left")
              for name, ds in columns]
    series.append((f"{train_label} (right axis)", [(r["step"], r["train"]) for r in rows], "right"))
    scales = {side: axis([v for _, points, s in series if s == side for _, v in points if v is not None])
              for side in ("left", "right")}
    lines = []
    for i, (label, points, side) in enumerate(series):
        if scales[side] is None:
            continue
        y = scales[side][1]
        color = _TRAIN_COLOR if side == "right" else _PALETTE[i % len(_PALETTE)]
        coords = [(round(x(s), 1), round(y(v), 1)) for s, v in points if v is not None]
        lines.append({"label": label, "color": color, "dashed": side == "right", "coords": coords,
                      "points": " ".join(f"{a},{b}" for a, b in coords)})
    legend, lx, ly = [], left, bottom + 58
    for line in lines:
        w = 36 + 7 * len(line["label"])
        if lx + w > width - right and lx > left:
            lx, ly = left, ly + 20
        legend.append({**line, "x": lx, "y": ly})
        lx += w + 16
    return {"width": width, "height": ly + 16, "left": left, "right": width - right, "top": top, "bottom": bottom,
            "xticks": [(round(x(s), 1), _fmt(s)) for s in _step_ticks(steps)], "lines": lines, "legend": legend,
            "yticks": {side: [(round(scale[1](t), 1), _fmt(t)) for t in scale[0]] if scale else []
                       for side, scale in scales.items()}}


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round-numbered ticks covering [lo, hi] (a flat series gets a range around its value)."""
    if hi - lo < 1e-9 * max(1.0, abs(lo), abs(hi)):
        pad = max(1.0, abs(lo), abs(hi)) / 2
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / (count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(math.ceil((hi - first) / step - 1e-9) + 1)]


def _step_ticks(steps: list[int], most: int = 12) -> list[float]:
    """Every step when few, else round numbers across the steps (uneven steps would crowd)."""
    if len(steps) <= most:
        return steps
    return [t for t in _ticks(steps[0], steps[-1], 8) if steps[0] <= t <= steps[-1]]


# -- small helpers ---------------------------------------------------------------------------
def _dicts(value) -> list[dict]:
    """The dict items of a YAML list (card metadata is untrusted and may have any shape)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _number(value) -> float | None:
    """A metric value from card metadata, or None; beyond ±1e12 it is no metric and would break the axes."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if abs(number) <= 1e12 else None


def _fmt(value: float | None) -> str:
    return "" if value is None else format(value, ".6g")


_ENV.filters["num"] = _fmt


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _size(n: float) -> str:
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}"


def _date(iso: str) -> str:
    return iso[:16].replace("T", " ")
