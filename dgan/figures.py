"""PNG figures people look at: a registration pair before/after, with its deformation grid, and loss curves.

Every figure is written atomically (temporary file, then rename) with matplotlib's Agg backend.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_write  # noqa: E402


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
    fig, axes = plt.subplots(3, columns, figsize=(2.6 * columns, 7.8))
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


def save_curves(path, history, title="training losses"):
    """Loss curves: ``history`` maps a name to a list of (step, value)."""
    names = sorted(history)
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        steps, values = zip(*history[name]) if history[name] else ((), ())
        ax.plot(steps, values, linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def save_validation_curve(path, history, title="held-out Dice against the training step",
                          labels=None):
    """Validation Dice against the step: T alone as a line, after refinement as markers, and
    the identity (no registration) dashed.

    :param history: ``{"identity"|"network"|"refined": [(step, Dice), ...]}``, or any other
        names (each a line) with ``labels`` naming them
    """
    labels = labels or {"network": "T alone", "refined": "T + refinement", "identity": "identity"}
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    for name, points in history.items():
        if not points:
            continue
        steps, values = zip(*points)
        style = {"identity": dict(linestyle="--", color="gray"),
                 "refined": dict(marker="o", linestyle="none")}.get(name, dict(marker="."))
        ax.plot(steps, values, label=labels.get(name, name), linewidth=1, **style)
    ax.set_xlabel("step", fontsize=9)
    ax.set_ylabel("mean Dice", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path):
    """Write a matplotlib figure as PNG atomically and close it."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
