"""Training records: a JSONL of per-step numbers any plotting tool reads, and a PNG of the loss curve."""
from __future__ import annotations

import json
from pathlib import Path

LOG_FILE = "train_log.jsonl"
PLOT_FILE = "loss.png"


class TrainingLog:
    """Per-step numbers in memory (for the plot) and, given a folder, in ``<folder>/train_log.jsonl``.

    The file is appended to, so a resumed run's rows follow the interrupted
    run's; each row is written as it comes, so a killed run leaves a readable log.
    """

    def __init__(self, folder: Path | None = None):
        self.path = folder / LOG_FILE if folder is not None else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self.steps: list[tuple[int, float]] = []
        self.eval_loss: float | None = None

    def _write(self, row: dict) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def step(self, step: int, loss: float, learning_rate: float, tokens_per_s: float) -> None:
        self.steps.append((step, loss))
        self._write({"step": step, "loss": round(loss, 6), "learning_rate": learning_rate,
                     "tokens_per_s": round(tokens_per_s, 1)})

    def end(self, step: int, eval_loss: float | None, eval_on: str) -> None:
        self.eval_loss = eval_loss
        self._write({"step": step, "eval_loss": None if eval_loss is None else round(eval_loss, 6),
                     "eval_on": eval_on})


def plot_loss(log: TrainingLog, png: Path, title: str) -> Path:
    """Draw the training loss per step (and the final eval loss as a dashed line) to ``png``."""
    import matplotlib

    matplotlib.use("Agg")           # no display on a server; must precede pyplot
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if log.steps:
            xs, ys = zip(*log.steps)
            ax.plot(xs, ys, marker="." if len(xs) <= 50 else None, label="training loss")
        if log.eval_loss is not None:
            ax.axhline(log.eval_loss, linestyle="--", color="tab:red", label=f"eval loss {log.eval_loss:.4f}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, format="png")
    finally:
        plt.close(fig)
    return png
