"""Memory while training, for the manifest and the README's QLoRA / LoRA / full table."""

import psutil
from transformers import TrainerCallback


class PeakMemory(TrainerCallback):
    """Process RSS before training and its peak over the training steps.

    The process's lifetime peak (ru_maxrss) also counts loading and data preparation; the
    difference of these two is what optimizer state, gradients and activations cost.
    """

    def __init__(self):
        self._process = psutil.Process()
        self.before_mib = self.peak_mib = 0

    def _rss_mib(self) -> int:
        return round(self._process.memory_info().rss / (1 << 20))

    def on_train_begin(self, args, state, control, **kwargs):
        self.before_mib = self._rss_mib()

    def on_step_end(self, args, state, control, **kwargs):
        self.peak_mib = max(self.peak_mib, self._rss_mib())

    def metrics(self) -> dict:
        return {"rss_before_train_mib": self.before_mib, "train_peak_rss_mib": self.peak_mib}
