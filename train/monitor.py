"""What a run shows: a progress bar, log lines, TensorBoard scalars and image grids, PNG files.

Only the main process (rank 0) writes anything. Every step's scalars go to TensorBoard and to
``metrics.jsonl``; every ``log_every`` steps a plain log line is printed too (readable in files
and CI logs, where the progress bar is off because stderr is not a terminal).
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from collections import deque
from typing import Dict, Optional

import torch

from ..files import write_text


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


def phase_line(metrics: Dict[str, float]) -> str:
    """'  ms: encoder_fwd 120 densify 4 …' from a step's ``step_ms/`` metrics (empty when not timed)."""
    phases = [(k.split("/", 1)[1], v) for k, v in metrics.items() if k.startswith("step_ms/")]
    return ("\n    step ms: " + "  ".join(f"{name} {ms:.0f}" for name, ms in phases)) if phases else ""


class Monitor:
    def __init__(self, out_dir: str, enabled: bool, total_steps: int, start_step: int, log_every: int = 10,
                 progress: Optional[bool] = None):
        self.enabled = enabled
        self.out_dir = out_dir
        self.total_steps = total_steps
        self.log_every = max(1, log_every)
        self.step_times = deque(maxlen=50)
        self.writer = None
        self.bar = None
        self.metrics_file = None
        if not enabled:
            return
        os.makedirs(os.path.join(out_dir, "vis"), exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        # a resumed run redoes the steps after its checkpoint: drop what the interrupted run logged for them
        self.writer = SummaryWriter(os.path.join(out_dir, "tensorboard"),
                                    purge_step=start_step + 1 if start_step else None)
        self.metrics_file = self._open_metrics(os.path.join(out_dir, "metrics.jsonl"), start_step)
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            desc="pretrain", smoothing=0.1)

    @staticmethod
    def _open_metrics(path: str, start_step: int):
        """Append to ``metrics.jsonl``, first dropping records past ``start_step`` (a resumed run redoes them)."""
        if os.path.exists(path):
            kept = []
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        if json.loads(line).get("step", 0) <= start_step:
                            kept.append(line)
                    except ValueError:
                        pass  # a line cut short by a kill
            write_text(path, "".join(kept), durable=True)  # a kill while trimming must not lose the file
        return open(path, "a", encoding="utf-8")

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def step(self, step: int, epoch: int, metrics: Dict[str, float]) -> None:
        """Record the metrics of optimiser step ``step`` (1-based count of steps done)."""
        if not self.enabled:
            return
        self.step_times.append(metrics.get("step_time", 0.0))
        for name, value in metrics.items():
            if name != "step_time":  # 'group/name' keeps its own group (step_ms/… : where the step's time went)
                self.writer.add_scalar(name if "/" in name else f"train/{name}", value, step)
        record = {"step": step, "epoch": epoch, "time": time.time(), **metrics}
        self.metrics_file.write(json.dumps(record) + "\n")
        eta = _eta(sum(self.step_times) / len(self.step_times) * (self.total_steps - step))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                                 img_s=f"{metrics['img_per_s']:.1f}", refresh=False)
            self.bar.update(step - self.bar.n)
        if self.logs(step):
            self.metrics_file.flush()
            self.message(f"step {step}/{self.total_steps}  epoch {epoch}  loss {metrics['loss']:.4f}  "
                         f"lr {metrics['lr']:.3e}  wd {metrics['wd']:.3f}  grad_norm {metrics['grad_norm']:.3f}  "
                         f"{metrics['img_per_s']:.1f} img/s  data {metrics['data_time'] * 1000:.0f} ms  ETA {eta}"
                         + phase_line(metrics))

    def logs(self, step: int) -> bool:
        """Whether step ``step`` gets a log line (and its phases timed)."""
        return self.enabled and (step % self.log_every == 0 or step == self.total_steps or step == 1)

    def images(self, step: int, grid: torch.Tensor) -> Optional[str]:
        """Save a (3, H, W) [0, 1] image grid as PNG and to TensorBoard; return the PNG's path."""
        if not self.enabled:
            return None
        from torchvision.utils import save_image
        path = os.path.join(self.out_dir, "vis", f"reconstruction-{step:08d}.png")
        save_image(grid, path)
        self.writer.add_image("reconstruction/input-masked-reconstruction", grid, step)
        return path

    def flush(self) -> None:
        """Put every record so far on disk (called before each checkpoint: a run killed right after
        one keeps the metrics of the steps it covers)."""
        if self.enabled:
            self.writer.flush()
            self.metrics_file.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.enabled = False  # closing twice (an error path after a normal end) is harmless
        if self.bar is not None:
            self.bar.close()
        self.writer.close()
        self.metrics_file.close()
