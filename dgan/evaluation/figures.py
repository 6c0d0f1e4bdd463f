"""PNG figures people look at: a registration pair before/after with its deformation grid, loss
and validation curves, and the evaluation's montages, method comparisons and Dice box plots.

Every figure is a :class:`matplotlib.figure.Figure` drawn on its own Agg canvas and written
atomically (temporary file, then rename); nothing here touches pyplot or chooses matplotlib's
backend, so importing dgan changes nothing for a program's own plots.
"""

import math

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core import metrics
from ..data.io import atomic_write


def new_figure(rows=1, columns=1, figsize=None, squeeze=True):
    """(figure, axes) like ``pyplot.subplots``, on an Agg canvas of its own."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, columns, squeeze=squeeze)


def display_slice(volume, axis, index=None):
    """A slice of a (X, Y, Z) volume across ``axis`` (the middle one by default), oriented for
    display; every dgan figure shows slices this way."""
    index = volume.shape[axis] // 2 if index is None else index
    return np.rot90(np.take(volume, index, axis=axis))


def finish_panels(fig, axes, title=None):
    """No ticks on any panel, and the figure's title if one is given."""
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)


def plot_grid(ax, flow, axis, spacing=4, background=None):
    """Draw the deformed grid p + flow(p) in the middle slice across ``axis``.

    :param flow: shape = (X, Y, Z, 3), in voxels
    :param background: optional (X, Y, Z) image shown faintly under the grid
    """
    if background is not None:
        ax.imshow(display_slice(background, axis), cmap="gray", vmin=0, vmax=1, alpha=0.5)
    in_plane = [d for d in range(3) if d != axis]
    field = np.take(flow, flow.shape[axis] // 2, axis=axis)  # (a, b, 3)
    a, b = np.meshgrid(*(np.arange(field.shape[i], dtype=float) for i in (0, 1)), indexing="ij")
    u = a + field[..., in_plane[0]]
    v = b + field[..., in_plane[1]]
    # display as display_slice does: rot90 maps (a, b) to (row = B - 1 - b, column = a)
    rows, cols = field.shape[1] - 1 - v, u
    for i in range(0, field.shape[0], spacing):
        ax.plot(cols[i, :], rows[i, :], color="tab:orange", linewidth=0.6)
    for j in range(0, field.shape[1], spacing):
        ax.plot(cols[:, j], rows[:, j], color="tab:orange", linewidth=0.6)
    ax.set_xlim(-0.5, field.shape[0] - 0.5)
    ax.set_ylim(field.shape[1] - 0.5, -0.5)
    ax.set_aspect("equal")


def save_pair_figure(path, fixed, moving, moved, flow, translated=None, title=None,
                     fixed_labels=None):
    """Fixed, moving, moved, (translated), and the deformation grid; one row per view.

    :param fixed, moving, moved, translated: shape = (X, Y, Z)
    :param flow: shape = (X, Y, Z, 3)
    :param fixed_labels: optional (X, Y, Z) label map drawn as contours over each image
    """
    images = [("fixed R", fixed), ("moving F", moving), ("moved F(phi)", moved)]
    if translated is not None:
        images.append(("translated F'(phi)", translated))
    columns = len(images) + 1
    fig, axes = new_figure(3, columns, figsize=(2.6 * columns, 7.8))
    for row, axis in enumerate((2, 1, 0)):  # axial, coronal, sagittal
        for col, (name, volume) in enumerate(images):
            ax = axes[row, col]
            ax.imshow(display_slice(volume, axis), cmap="gray", vmin=0, vmax=1)
            if fixed_labels is not None:
                ax.contour(display_slice(fixed_labels, axis), levels=np.unique(fixed_labels)[1:] - 0.5,
                           colors="tab:red", linewidths=0.5)
            if row == 0:
                ax.set_title(name, fontsize=9)
        grid_ax = axes[row, -1]
        plot_grid(grid_ax, flow, axis, background=moved)
        if row == 0:
            grid_ax.set_title("deformation grid", fontsize=9)
    finish_panels(fig, axes, title)
    fig.tight_layout()
    save_figure(fig, path)


#: The panels of :func:`save_curves`: one per network, by the loss names' prefix, in this order.
CURVE_PANELS = (("d", "D, the discriminator"), ("g", "G, the generator"),
                ("t", "T, the registration network"))
#: Legend text of the loss terms every trainer reports (:data:`dgan.training.trainers.LOSS_NAMES`,
#: the VxmDense baseline's); any other name is shown as it is.
CURVE_LABELS = {
    "d_loss": "L_D (least squares)",
    "g_loss": "L_G, weighted total",
    "g_adv": "adversarial",
    "g_lg": "1 - L_LG(F'(phi), F(phi))",
    "g_l1": "L1(F'(phi), R)",
    "t_loss": "L_T, weighted total",
    "t_lcc": "1 - L_LCC",
    "t_lg": "1 - L_LG(R, F(phi))",
    "t_smooth": "sum |grad phi|^2",
    "t_mi": "-MI(R, F(phi))",
    "t_grad": "Grad l2(phi)",
}


def curve_panels(names):
    """``names`` (loss columns) grouped into the panels of :func:`save_curves`:
    ``[(title, [name, ...]), ...]``, one per network that has a term (``d_``, ``g_``, ``t_``), the
    total (``<n>_loss``) first, then names of no network in one panel of their own."""
    panels, left = [], list(names)
    for prefix, title in CURVE_PANELS:
        group = [n for n in left if n.split("_", 1)[0] == prefix]
        if group:
            group.sort(key=lambda n: (n != f"{prefix}_loss", list(names).index(n)))
            panels.append((title, group))
            left = [n for n in left if n not in group]
    if left:
        panels.append(("other", left))
    return panels


def _running_mean(values, window):
    """The mean of each value with up to ``window - 1`` before it (same length)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def save_curves(path, history, title="training losses"):
    """Loss curves, one panel per network (D, G, T; :func:`curve_panels`) with each of its
    terms: the logged values faint, their running mean over about a thirtieth of the run as a
    line, a legend, the step on x and the loss on y (logarithmic, over at most four decades, where a
    panel's terms span more than one, as the smoothness term and the totals do).

    :param history: maps a loss name to a list of (step, value), as
        :func:`dgan.training.callbacks.read_loss_history` reads ``losses.csv``
    """
    panels = curve_panels(list(history)) or [("no losses logged", [])]
    fig, axes = new_figure(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel_title, names) in zip(axes[0], panels):
        positive = []
        for k, name in enumerate(names):
            if not history[name]:
                continue
            steps, values = (np.asarray(v, dtype=float) for v in zip(*history[name]))
            color = colors[k % len(colors)]
            window = max(1, len(values) // 30)
            if window > 1:
                ax.plot(steps, values, color=color, linewidth=0.5, alpha=0.3)
            ax.plot(steps, _running_mean(values, window), color=color,
                    linewidth=1.8 if name.endswith("_loss") else 1.2,
                    label=CURVE_LABELS.get(name, name))
            positive.append(values)
        if positive:
            values = np.concatenate(positive)
            if values.min() > 0 and values.max() > 10 * values.min():
                ax.set_yscale("log")  # at most 4 decades: the first steps' ~0 smoothness aside
                ax.set_ylim(bottom=max(values.min(), 1e-4 * values.max()) / 1.5)
            ax.legend(fontsize=7, loc="best")
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.set_ylabel("loss", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def save_validation_curve(path, history, title="held-out Dice against the training step",
                          labels=None, xlabel="step"):
    """Validation Dice against the step: T alone as a line, after refinement as markers, and
    the identity (no registration) dashed.

    :param history: ``{"identity"|"network"|"refined": [(step, Dice), ...]}``, or any other
        names (each a line) with ``labels`` naming them
    """
    labels = labels or {"network": "T alone", "refined": "T + refinement", "identity": "identity"}
    fig, ax = new_figure(figsize=(5.0, 3.4))
    for name, points in history.items():
        if not points:
            continue
        steps, values = zip(*points)
        style = {"identity": dict(linestyle="--", color="gray"),
                 "refined": dict(marker="o", linestyle="none")}.get(name, dict(marker="."))
        ax.plot(steps, values, label=labels.get(name, name), linewidth=1, **style)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("mean Dice", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path):
    """Write a matplotlib figure as PNG atomically."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


# --- the evaluation's figures -------------------------------------------------------------------


def _contours(ax, labels, label_ids, color, axis):
    """Outline every label of ``label_ids`` in the middle slice of ``labels``."""
    section = display_slice(labels, axis)
    for label in label_ids:
        mask = section == label
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=0.5)


def _jacobian_panel(ax, det_slice):
    """The Jacobian determinant, blue < 1 < red, folding (det <= 0) in black."""
    image = ax.imshow(det_slice, cmap="RdBu_r", vmin=0.0, vmax=2.0)
    folded = np.ma.masked_where(det_slice > 0, np.ones_like(det_slice))
    ax.imshow(folded, cmap="gray", vmin=0, vmax=1)
    return image


def save_method_figure(path, pair, result, label_ids, title=None):
    """Montage for one method and pair: one row per view (axial, coronal, sagittal), columns
    fixed image with fixed (red) and warped moving (cyan) label contours, moved image with the
    fixed contours, deformation grid, Jacobian determinant."""
    det = metrics.jacobian_determinant(result.flow)
    fig, axes = new_figure(3, 4, figsize=(11.0, 8.4))
    for row, axis in enumerate((2, 1, 0)):
        ax = axes[row, 0]
        ax.imshow(display_slice(pair["fixed"], axis), cmap="gray", vmin=0, vmax=1)
        _contours(ax, pair["fixed_labels"], label_ids, "tab:red", axis)
        _contours(ax, result.labels, label_ids, "cyan", axis)
        ax = axes[row, 1]
        ax.imshow(display_slice(result.moved, axis), cmap="gray", vmin=0, vmax=1)
        _contours(ax, pair["fixed_labels"], label_ids, "tab:red", axis)
        plot_grid(axes[row, 2], result.flow, axis, background=result.moved)
        image = _jacobian_panel(axes[row, 3], display_slice(det, axis))
        if row == 0:
            for ax, name in zip(axes[0], ("fixed: fixed (red), warped (cyan) labels",
                                          "moved + fixed labels", "deformation grid",
                                          "Jacobian determinant")):
                ax.set_title(name, fontsize=8)
    finish_panels(fig, axes, title)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    fig.colorbar(image, cax=fig.add_axes((0.93, 0.3, 0.012, 0.4)), label="det J (black: <= 0)")
    save_figure(fig, path)


def save_comparison_figure(path, pair, results, label_ids, title=None):
    """All methods on one pair, one row each (axial middle slice): label contours over the fixed
    image, deformation grid, Jacobian determinant.

    :param results: ``{method name: MethodResult}``
    """
    rows = len(results)
    fig, axes = new_figure(rows, 3, figsize=(8.4, 2.8 * rows), squeeze=False)
    for row, (name, result) in enumerate(results.items()):
        ax = axes[row, 0]
        ax.imshow(display_slice(pair["fixed"], 2), cmap="gray", vmin=0, vmax=1)
        _contours(ax, pair["fixed_labels"], label_ids, "tab:red", 2)
        _contours(ax, result.labels, label_ids, "cyan", 2)
        ax.set_ylabel(name, fontsize=9)
        plot_grid(axes[row, 1], result.flow, 2, background=result.moved)
        _jacobian_panel(axes[row, 2], display_slice(metrics.jacobian_determinant(result.flow), 2))
    for ax, name in zip(axes[0], ("fixed (red) / warped (cyan) labels", "deformation grid",
                                  "Jacobian det. (0..2)")):
        ax.set_title(name, fontsize=9)
    finish_panels(fig, axes, title)
    # leave 0.4 inch at the top for the title, above the column titles
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight() if title else 1))
    save_figure(fig, path)


def save_dice_boxplot(path, records, label_ids, label_names, title=None):
    """Dice per structure, one box per method, grouped by structure (all pairs)."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(1, len(methods))
    fig, ax = new_figure(figsize=(max(6.0, 2.0 + len(label_ids) * (0.15 + 0.06 * len(methods))),
                                  4.2))
    for m, method in enumerate(methods):
        data, positions = [], []
        for k, label in enumerate(label_ids):
            values = [r[f"dice_{label}"] for r in records if r["method"] == method]
            values = [v for v in values if not math.isnan(v)]
            if values:
                data.append(values)
                positions.append(k + (m - (len(methods) - 1) / 2) * width)
        if not data:
            continue
        parts = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                           manage_ticks=False, flierprops={"markersize": 2})
        for box in parts["boxes"]:
            box.set_facecolor(colors[m % len(colors)])
            box.set_alpha(0.7)
        ax.plot([], [], color=colors[m % len(colors)], linewidth=6, alpha=0.7, label=method)
    ax.set_xticks(range(len(label_ids)))
    ax.set_xticklabels([label_names.get(i, str(i)) for i in label_ids], rotation=60, ha="right",
                       fontsize=7)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(len(methods), 5), loc="lower left")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
