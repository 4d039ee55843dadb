"""A 2-D map of the discovered tasks: one self-contained HTML page (inline SVG, no script, no CDN).

Calls are projected by PCA of their embeddings (deterministic, no extra package) and drawn faint, one
colour per task, outliers grey; each task is a bubble at the mean of its calls, its area the task's
volume, the largest ones named. Hovering a point or a bubble shows the task's label.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, PAD = 900, 640, 20
MAX_POINTS = 5000
LEGEND_ROWS = 40
NAMED = 15  # bubbles with their label written beside them


def task_colour(j: int) -> str:
    """The colour of task `j` on the map (a table beside it marks its rows with the same)."""
    return f"hsl({(j * 137.508) % 360:.0f},70%,{45 + (j % 3) * 8}%)"


def project_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Two PCA coordinates per row (zeros when there is nothing to project): the top eigenvectors of the centred
    rows' covariance, signs fixed as scikit-learn fixes them, without importing it (its import alone took 3 s
    of a 10 s report on 2 busy cores, 2026-12-03). `seed` is kept for callers; the exact solution needs none."""
    del seed
    if len(vectors) < 3 or vectors.shape[1] < 2:
        return np.zeros((len(vectors), 2))
    centred = np.asarray(vectors, dtype=np.float64) - np.mean(vectors, axis=0)
    _, vectors_of = np.linalg.eigh(centred.T @ centred)  # the covariance's eigenvectors, ascending
    components = vectors_of[:, ::-1][:, :2].T
    signs = np.sign(components[range(2), np.argmax(np.abs(components), axis=1)])
    return np.asarray(centred @ (components.T * np.where(signs == 0, 1.0, signs)))


def task_map_svg(
    vectors: np.ndarray,
    labels: np.ndarray,
    names: dict[int, str],
    seed: int = 0,
    volumes: dict[int, int] | None = None,
    points: bool = True,
) -> str:
    """The map as one `<svg>` element: `vectors` coloured by `labels` (-1: outlier), a bubble per task at the
    mean of its rows. `volumes` (task -> calls) sizes the bubbles when the rows are not the calls themselves
    (one centroid per task, as `downsize report` draws a stored run); `points` off leaves out the faint rows."""
    rng = np.random.default_rng(seed)
    keep = np.arange(len(vectors))
    if len(keep) > MAX_POINTS:
        keep = np.sort(rng.choice(keep, MAX_POINTS, replace=False))
    xy = project_2d(vectors[keep], seed)
    lo, hi = xy.min(axis=0) if len(xy) else np.zeros(2), xy.max(axis=0) if len(xy) else np.ones(2)
    span = np.where(hi - lo == 0, 1.0, hi - lo)
    scaled = PAD + 20 + (xy - lo) / span * np.array([WIDTH - 2 * PAD - 40, HEIGHT - 2 * PAD - 40])
    circles = []
    kept_labels = labels[keep]
    for (x, y), j in zip(scaled, kept_labels, strict=True):
        if not points:
            break
        j = int(j)
        fill, r = (task_colour(j), 2.5) if j >= 0 else ("#bbb", 2.0)
        name = html.escape(names.get(j, "outlier (no task)"))
        circles.append(
            f'<circle cx="{x:.1f}" cy="{HEIGHT - y:.1f}" r="{r}" fill="{fill}" fill-opacity="0.35">'
            f"<title>{name}</title></circle>"
        )
    volume = task_volumes(labels, names, volumes)
    sizes = sorted(names, key=lambda j: -volume[j])
    biggest = max(volume.values(), default=1) or 1
    bubbles, captions = [], []
    for rank, j in enumerate(sizes):
        mine = scaled[kept_labels == j]
        if not len(mine):
            continue
        bx, by = mine.mean(axis=0)
        r = 4 + 18 * (volume[j] / biggest) ** 0.5
        name = html.escape(names[j])
        bubbles.append(
            f'<circle class="task" cx="{bx:.1f}" cy="{HEIGHT - by:.1f}" r="{r:.1f}" fill="{task_colour(j)}" '
            f'fill-opacity="0.55" stroke="#333" stroke-width="0.8"><title>{name}</title></circle>'
        )
        if rank < NAMED:
            short = html.escape(names[j] if len(names[j]) <= 40 else names[j][:39] + "…")  # cut, then escape
            left = bx > WIDTH * 0.6  # write toward the middle, so the label stays on the page
            x_text, anchor = (bx - r - 2, "end") if left else (bx + r + 2, "start")
            captions.append(
                f'<text x="{x_text:.1f}" y="{HEIGHT - by + 4:.1f}" font-size="11" fill="#222" '
                f'text-anchor="{anchor}">{short}</text>'
            )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="map of the tasks">\n'
        f"{''.join(circles)}\n{''.join(reversed(bubbles))}\n{''.join(captions)}\n</svg>"
    )


def task_volumes(
    labels: np.ndarray, names: dict[int, str], volumes: dict[int, int] | None = None
) -> dict[int, int]:
    """Calls per task: as given, else counted from the labels."""
    return {j: int(volumes[j]) if volumes is not None else int((labels == j).sum()) for j in names}


def write_task_map(
    vectors: np.ndarray,
    labels: np.ndarray,
    names: dict[int, str],
    path: Path,
    title: str = "downsize tasks",
    seed: int = 0,
) -> Path:
    """Write the map of `vectors` coloured by `labels` (-1: outlier) to `path`; returns the path."""
    shown = min(len(vectors), MAX_POINTS)
    volume = task_volumes(labels, names)
    sizes = sorted(names, key=lambda j: -volume[j])
    legend = "".join(
        f'<li><span style="background:{task_colour(j)}"></span>{html.escape(names[j])}</li>'
        for j in sizes[:LEGEND_ROWS]
    )
    more = f"<li>… and {len(sizes) - LEGEND_ROWS} more</li>" if len(sizes) > LEGEND_ROWS else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
.wrap {{ display: flex; gap: 1.5em; align-items: flex-start; }}
svg {{ border: 1px solid #ddd; background: #fff; }}
ul {{ list-style: none; padding: 0; margin: 0; max-width: 32em; }}
li {{ margin: 2px 0; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
li span {{ display: inline-block; width: 10px; height: 10px; margin-right: 6px; border-radius: 50%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Each faint point is one logged call (PCA of its embedding; {shown} of {len(vectors)} shown); colour =
task, grey = outlier. Each bubble is a task at the mean of its calls, its area its volume. Hover for labels.</p>
<div class="wrap">
{task_map_svg(vectors, labels, names, seed)}
<ul>{legend}{more}</ul>
</div></body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
