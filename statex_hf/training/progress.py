"""A one-line progress bar for training that shows the latest loss instead of printing every log."""

from __future__ import annotations

from tqdm.auto import tqdm
from transformers import TrainerCallback


class LossProgressBar(TrainerCallback):
    """tqdm over optimizer steps with the last logged loss as postfix (use with ``disable_tqdm=True``)."""

    def __init__(self, desc: str | None = None) -> None:
        self.desc = desc
        self.bar = None
        self.losses: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, desc=self.desc, initial=state.global_step, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{self.losses[-1]:.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["LossProgressBar"]
