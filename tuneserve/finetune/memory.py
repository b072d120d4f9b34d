"""Memory while training, for the manifest and the README's QLoRA / LoRA / full table."""

import threading

import psutil
from transformers import TrainerCallback

SAMPLE_EVERY_S = 0.05


class PeakMemory(TrainerCallback):
    """Process RSS before training and its peak while training, sampled every 50 ms.

    Sampling between steps would miss the activations, which are freed by the end of a step.
    The process's lifetime peak (ru_maxrss) also counts loading and data preparation; the
    difference of these two is what optimizer state, gradients and activations cost.
    """

    def __init__(self):
        self._process = psutil.Process()
        self.before_mib = self.peak_mib = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def _rss_mib(self) -> int:
        return round(self._process.memory_info().rss / (1 << 20))

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.peak_mib = max(self.peak_mib, self._rss_mib())

    def on_train_begin(self, args, state, control, **kwargs):
        self.before_mib = self.peak_mib = self._rss_mib()
        self._stop.clear()
        self._sampler = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._sampler.start()

    def stop(self) -> None:
        """End sampling; the caller runs it after training, also when training raised."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()

    def metrics(self) -> dict:
        return {"rss_before_train_mib": self.before_mib, "train_peak_rss_mib": self.peak_mib}


class StepCounter(TrainerCallback):
    """Optimizer steps this process ran (a resumed run skips the steps its checkpoint holds)."""

    def __init__(self):
        self.num_steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.num_steps += 1
