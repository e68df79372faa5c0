"""Restore a checkpoint into freshly built objects, the way the training job would,
and say by name what did not line up.

Object-based checkpoints (TF2) match objects by walking two graphs from the root:
the checkpoint's TrackableObjectGraph (read by our own parser) and the Python
objects' dependency graph, child by child, by local name. That walk is what
tf.train.Checkpoint.restore does; doing it ourselves first tells us

    unmatched   model objects with variables that get no value      (assert_existing_objects_matched)
    unused      checkpoint values no object takes                    (assert_consumed)
    shape       a match whose shapes differ (TF would raise halfway through the restore)

before TensorFlow restores anything. Name-based checkpoints (TF1 Saver) match
variable names to keys. Then TF restores for real, and we compare every restored
variable, bit for bit, with the value our own reader gets for its key (fidelity),
and name every variable still holding its initial value (the "weights look random
after restore" failure). Keras weight files go through Keras' own loader, then a round
trip (saved again by Keras, compared key by key) stands in for the walk and the fidelity
check.

    built.py       Built, arrange(), prepare(): the factory's objects; reading a variable
    graph.py       object-based matching: TF's walk over both graphs, TF's names
    status.py      RestoreOutcome; unmatched / unused / renamed as findings under the policy
    bundle.py      restore_bundle(): TF2 object-based and TF1 name-based bundles, fidelity
    keras_file.py  restore_keras_file(): Keras' loader, then the Keras 3 round trip
"""

from ckptwatch.model.restore.built import Built, arrange, prepare
from ckptwatch.model.restore.bundle import restore_bundle
from ckptwatch.model.restore.keras_file import restore_keras_file
from ckptwatch.model.restore.status import MAX_NAMED, RestoreOutcome, first_line

__all__ = [
    "MAX_NAMED",
    "Built",
    "RestoreOutcome",
    "arrange",
    "first_line",
    "prepare",
    "restore_bundle",
    "restore_keras_file",
]
