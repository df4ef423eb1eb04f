"""The record: where a loader stood in training, kept next to the checkpoint Keras writes.

Keras's ``BackupAndRestore`` saves the weights and ``{"epoch", "batch"}`` in its
``backup_dir``, and a resumed ``fit`` starts at that epoch. Which batches that
epoch trained is the loader's to know, and cannot be inferred from the model, so
the loader records it with every save and reads it back:

- **Where.** When a ``fit`` that trains on a loader starts, the loader looks
  for ``BackupAndRestore`` among the fit's callbacks (plain Keras or
  :class:`BackupAndRestore` below; the user adds nothing) and, for each, runs
  after every save of its checkpoint: it writes
  ``<backup_dir>/gpuloader-<key>.json``, ``key`` a hash of the loader's seed and
  state signature, so two different loaders never share a file (validation
  loaders never write: they serve the input order). Written to a temporary
  file, then renamed over the old one (``os.replace``, atomic). Keras deletes
  ``backup_dir`` at the end of training, and the record with it.
- **What.** A copy of the ``{"epoch", "batch"}`` Keras wrote with it (so a
  record from another save is never taken for this one), and for the Keras
  epoch the checkpoint resumes at: the stream position where it started
  (``start``), the position after the last trained batch (``trained``), and
  how many of its steps are left (``left``).
- **Read back** when the next ``fit`` with that callback starts (in this
  process or a new one): if the record matches what Keras restored, the fit
  starts there. With Keras's callback a checkpoint taken inside an epoch
  (``save_freq=N``) resumes at the start of that epoch, so the loader serves
  that epoch from ``start`` again and warns that its first part is trained
  twice. With :class:`BackupAndRestore` the resumed epoch trains only the
  ``left`` steps after ``trained``: the uninterrupted run's batches, step for
  step.

Cost: one small JSON file written per checkpoint save; nothing per batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import weakref
from typing import TYPE_CHECKING, Any

import keras

from gpuloader import _keras_compat
from gpuloader._keras_compat import KerasCall

if TYPE_CHECKING:
    from gpuloader.schedule import EpochSchedule, Start

RECORD_FORMAT = "gpuloader.record/1"


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` that also resumes inside an epoch, exactly.

    Use it in place of Keras's callback, with the same arguments. With
    ``save_freq=N`` Keras saves inside an epoch but resumes at the start of
    that epoch, so its first part is trained twice. With this callback and a
    ``gpuloader.Loader`` as the training data, the resumed epoch trains only
    the batches that came after the last saved step, in the same order, and
    the run then goes on as the uninterrupted one would have: every sample of
    that epoch once. The resumed epoch is shorter (its metrics cover the
    batches it trained). It also makes checkpoints taken inside an epoch name
    that epoch in a resumed process (Keras's names epoch 0 until an epoch ends
    there), and a checkpoint taken after the last step of an epoch resume at
    the next epoch.

    With ``save_freq="epoch"`` it behaves as Keras's callback; the loader keeps
    its record with either (see :mod:`gpuloader.resume`).
    """

    resumes_inside_epochs = True

    def on_train_begin(self, logs: Any = None) -> None:
        super().on_train_begin(logs)
        metadata = _keras_compat.backup_metadata(self)
        if metadata is None:
            return
        for record in _records_in(self.backup_dir):
            if record.get("keras") == metadata and record.get("left") == 0:
                # The checkpoint was taken after the epoch's last step: nothing of it is left to train.
                self.model._initial_epoch = int(metadata["epoch"]) + 1
                return

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        super().on_epoch_begin(epoch, logs)
        _keras_compat.keep_backup_epoch(self, epoch)


def record_path(backup_dir: str, schedule: EpochSchedule) -> str:
    """The file that keeps ``schedule``'s record in ``backup_dir``."""
    identity = json.dumps({"seed": schedule.seed, **schedule.signature}, sort_keys=True, default=str)
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return os.path.join(str(backup_dir), f"gpuloader-{key}.json")


def fit_start(call: KerasCall, schedule: EpochSchedule) -> Start | None:
    """Keep ``schedule``'s record with each ``BackupAndRestore`` of ``call``; the start a record gives, if any."""
    from gpuloader.schedule import Start

    backups = _keras_compat.backups_of(call)
    reference = weakref.ref(schedule)
    for backup in backups:
        path = record_path(backup.backup_dir, schedule)
        _keras_compat.after_backup_saves(backup, path, lambda backup=backup, path=path: _write(backup, path,
                                                                                                reference))
    for backup in backups:
        record = _read(record_path(backup.backup_dir, schedule))
        if record is None:
            continue
        metadata = _keras_compat.backup_metadata(backup)
        resumes_at = None if metadata is None else metadata.get("epoch")
        exact = getattr(backup, "resumes_inside_epochs", False)
        skipped = exact and record.get("left") == 0 and call.initial_epoch == (resumes_at or 0) + 1
        if record.get("keras") != metadata or (call.initial_epoch != resumes_at and not skipped):
            warnings.warn(
                f"gpuloader: {record_path(backup.backup_dir, schedule)} was written with another checkpoint "
                f"(it records {record.get('keras')}, Keras restored {metadata} and resumes at epoch "
                f"{call.initial_epoch}), so the loader does not use it. Resume from a backup_dir that one run "
                "wrote, or call loader.set_state(state) before fit.", RuntimeWarning, stacklevel=6,
            )
            continue
        start, trained, steps, left = record["start"], record["trained"], record["steps"], record["left"]
        if skipped:
            epoch, position = trained
            return Start(*(epoch + 1, 0) if position >= schedule.steps else (epoch, position))
        if steps and exact:
            return Start(trained[0], trained[1], first_length=left)
        if steps:
            warnings.warn(
                f"gpuloader: Keras resumes epoch {resumes_at} from its first step, but its checkpoint was taken "
                f"after {steps} of that epoch's steps (BackupAndRestore(save_freq=...)), so those {steps} "
                f"batches are trained again (with the weights that already learned them). The loader serves the "
                "epoch's own order from its first batch. For an exact resume use gpuloader.BackupAndRestore, "
                "a drop-in for keras.callbacks.BackupAndRestore that goes on after the last saved step.",
                RuntimeWarning, stacklevel=6,
            )
        return Start(start[0], start[1])
    for backup in backups:
        _warn_of_another_loader(backup.backup_dir, schedule)
    return None


def _warn_of_another_loader(backup_dir: str, schedule: EpochSchedule) -> None:
    """Say so when ``backup_dir`` holds no record of ``schedule``'s loader but one of another: the interrupted run's
    loader had another seed (``seed=None`` draws a new one in every process) or other data or settings (a file
    added to its folder), so this fit cannot replay its batches; name what differs (the closest record's)."""
    ours = {"seed": schedule.seed, **schedule.signature}
    text = {key: json.dumps(value, sort_keys=True, default=str) for key, value in ours.items()}
    closest: tuple[list[str], dict[str, Any]] | None = None
    for record in _records_in(backup_dir):
        theirs = dict(record.get("loader") or {})
        differ = [key for key in sorted(set(ours) | set(theirs))
                  if json.dumps(theirs.get(key), sort_keys=True, default=str) != text.get(key)]
        if differ and (closest is None or len(differ) < len(closest[0])):
            closest = (differ, theirs)
    if closest is None:
        return
    differ, theirs = closest
    if differ == ["seed"]:
        message = (f"{backup_dir} holds the record of a loader over the same data with seed={theirs['seed']}, but "
                   f"this loader's seed is {schedule.seed} (seed=None draws a new one in every process), so its orders "
                   f"are not the interrupted run's and the record is not used. Fix: pass seed={theirs['seed']} to "
                   "resume that run exactly (and a fixed seed from now on).")
    else:
        changes = "; ".join(f"{key} {_short(theirs.get(key))} there, {_short(ours.get(key))} here"
                            for key in differ[:4])
        message = (f"{backup_dir} holds the record of another loader than this one ({changes}), so it is not used: "
                   "the interrupted run's batches cannot be replayed over other data or settings (a file added to "
                   "an image folder changes num_samples). Fix: build the loader as that run did, or give a new run a "
                   "backup_dir of its own.")
    warnings.warn(f"gpuloader: {message}", RuntimeWarning, stacklevel=6)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _write(backup: Any, path: str, reference: weakref.ref[EpochSchedule]) -> None:
    """After ``backup`` saved: record where the loader stands for the epoch Keras would resume at."""
    schedule = reference()
    call = _keras_compat.keras_call()
    metadata = _keras_compat.backup_metadata(backup)
    if schedule is None or call is None or call.kind != "fit" or metadata is None:
        return
    position = schedule.checkpoint(call, int(metadata.get("epoch", 0)))
    if position is None:
        return
    record = {"format": RECORD_FORMAT, "loader": {"seed": schedule.seed, **schedule.signature}, "keras": metadata,
              **position}
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as file:
        json.dump(record, file, default=str)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as file:
            record = json.load(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        warnings.warn(f"gpuloader: cannot read the record {path} ({error}); the loader does not use it.",
                      RuntimeWarning, stacklevel=7)
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def _records_in(backup_dir: str) -> list[dict[str, Any]]:
    try:
        names = sorted(name for name in os.listdir(backup_dir) if name.startswith("gpuloader-"))
    except OSError:
        return []
    return [record for name in names if name.endswith(".json")
            and (record := _read(os.path.join(backup_dir, name))) is not None]
