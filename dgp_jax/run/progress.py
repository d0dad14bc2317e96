"""The progress line of a batch run."""

from __future__ import annotations

import math
import sys
import time

from dgp_jax.run.markers import RunSpec


# --------------------------------------------------------------------------- progress
class Progress:
    """One tqdm line: images done/total, current stage, solver steps/s and ETA.

    When stderr is not a terminal (a log file, a pipe), plain lines instead: one when the
    run starts, one per stage of each batch and one per finished batch, no carriage returns.
    """

    def __init__(self, label: str, total_images: int, done_images: int, total_batches: int,
                 steps_per_batch: int, num_stages: int, enabled: bool = True):  # fmt: skip
        from tqdm.auto import tqdm

        self.label = label
        self.total_images = total_images
        self.done_images = done_images
        self.num_stages = num_stages
        self.steps_per_batch = max(steps_per_batch, 1)
        interactive = enabled and sys.stderr.isatty()
        self.plain = enabled and not interactive
        self._steps = 0
        self._start = time.perf_counter()
        self.bar = tqdm(
            total=total_batches * self.steps_per_batch, unit="step", disable=not interactive,
            dynamic_ncols=True, file=sys.stderr,
            mininterval=0.2 if interactive else 5.0, leave=True,
            bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} steps "
                       "[{elapsed}<{remaining}, {rate_fmt}]{postfix}",
        )  # fmt: skip
        self._describe()
        if self.plain:
            self._log(f"{total_batches} batch(es) of {self.steps_per_batch} steps to solve")

    def _log(self, text: str) -> None:
        print(f"{self.label}: images {self.done_images}/{self.total_images}: {text}",
              file=sys.stderr, flush=True)  # fmt: skip

    def _describe(self) -> None:
        self.bar.set_description_str(
            f"{self.label}: images {self.done_images}/{self.total_images}", refresh=False
        )

    def plan(self, remaining_batches: int) -> None:
        """Re-estimate the step total: steps so far plus the batches still to solve."""
        self.bar.total = self.bar.n + remaining_batches * self.steps_per_batch
        self.bar.refresh()

    def phase(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)

    def step(self, step: int, total: int, info: dict) -> None:
        import jax

        # Wait for the step, or the rate would measure dispatch, not compute.
        jax.block_until_ready(info["record"]["loss"])
        if step == 1 or info["stage"] != getattr(self, "_stage", None):
            self._stage = info["stage"]
            self.bar.set_postfix_str(f"stage {info['stage'] + 1}/{self.num_stages}",
                                     refresh=False)  # fmt: skip
            if self.plain:
                self._log(f"stage {info['stage'] + 1}/{self.num_stages}")
        self._steps += 1
        self.bar.update(1)

    def finished(self, count: int) -> None:
        self.done_images += count
        self._describe()
        self.bar.refresh()
        if self.plain:
            seconds = time.perf_counter() - self._start
            self._log(f"{self._steps} steps in {seconds:.1f} s")

    def write(self, message: str) -> None:
        if self.plain:
            print(message, file=sys.stderr, flush=True)
        else:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _batch_size(spec: RunSpec, share: int) -> int:
    return max(1, min(spec.batch, share))


def _progress(spec: RunSpec, total: int, done: int, to_solve: int, batch: int,
              enabled: bool) -> Progress:  # fmt: skip
    batches = math.ceil(to_solve / batch)
    return Progress(spec.label, total, done, batches, spec.config.total_steps,
                    spec.config.num_stages, enabled=enabled and to_solve > 0)  # fmt: skip
