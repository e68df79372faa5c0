"""Model factories for the model-aware checks: what a watch's `[watch.model] factory` would name,
`bench.quality.models:<run>`, one per Keras run (the TF1 Saver run has none).

A factory returns the objects of the job's `tf.train.Checkpoint(model=..., optimizer=...)`,
freshly built (ckptwatch restores the checkpoint into them). It runs in the worker process, so
it sets the Keras dtype policy itself: a mixed-precision factory must not leave its policy to
the next model check.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.quality import runs as R
from bench.quality import training as T


def build(name: str) -> dict:
    T.load_tf()
    T.keras.mixed_precision.set_global_policy("mixed_float16" if name == "mixed_float16" else "float32")
    job = R.frozen_base_new_head(0, pretrain_steps=0) if name == "frozen_base" else R.RUNS[name].build(0)
    return {"model": job.model, "optimizer": job.optimizer}


def _factory(name: str) -> Callable[[], dict]:
    def factory() -> dict:
        return build(name)

    factory.__name__ = factory.__qualname__ = name
    return factory


# one module attribute per Keras run: bench.quality.models:mlp_adam, ...
globals().update({name: _factory(name) for name, spec in R.RUNS.items() if spec.build is not None})
