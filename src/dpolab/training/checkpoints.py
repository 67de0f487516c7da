"""Checkpoints of a run: saved whole or not at all, checked before a resume, and which one a resume
starts from.

    staged_save()         a save written in a partial folder, flushed, then renamed into place
    rotate_checkpoints()  the Trainer's rotation (save_total_limit), each folder renamed before deletion
    checkpoint_problem()  why a checkpoint folder cannot be resumed from (the file), or None
    resume_target()       the checkpoint `training.resume_from_checkpoint` names, checked

A save (a checkpoint, the final model) is written in `.partial-NAME/` next to where it goes and
takes its name only once every file in it is on the disk: a kill or a full disk during a save
leaves the earlier checkpoints and no `checkpoint-N` folder with half its files; an old checkpoint
is renamed before it is deleted. A partial folder left by a kill is removed by the next save.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import traceback
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dpolab.config.schema import TRAINING_DEFAULTS, RunConfig
from dpolab.errors import DpolabError
from dpolab.storage import disk_full_error, format_size, fsync_dir, fsync_tree, is_disk_full

log = logging.getLogger("dpolab")

PARTIAL = ".partial-"  # prefix of a save in progress (no `checkpoint-N` pattern matches it)
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last in a checkpoint
# the files the Trainer loads a checkpoint's weights from (transformers' *_NAME constants)
WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")  # torch.save's files: zip archives


def _nothing() -> None:
    return None


@contextmanager
def staged_save(
    final: Path,
    *,
    into: bool = False,
    writer: bool = True,
    wait: Callable[[], None] = _nothing,
    full_error: Callable[[int], DpolabError] | None = None,
) -> Iterator[Path]:
    """Yields the folder to write a save in; when the block ends, moves it into place whole.

    `into=False` (a checkpoint): the folder `PARENT/.partial-NAME/NAME` is renamed to `final`
    (= PARENT/NAME; a `final` already there, from an earlier run, is replaced). `into=True` (the
    final model, next to the checkpoints in OUTPUT_DIR): the files of `final/.partial-save/` are
    moved into `final`, each replacing its namesake. Before the move every file is flushed to the
    disk (fsync). If the block fails, the partial folder is removed and `final` is as it was; a
    full disk raises `full_error(bytes written before it filled)` instead.

    Under several processes all of them write (shards) but only the `writer` (the Trainer's
    `should_save`) prepares, moves and removes; `wait` is the barrier between those steps."""
    root = final / f"{PARTIAL}save" if into else final.parent / f"{PARTIAL}{final.name}"
    staging = root if into else root / final.name
    if writer:
        for stale in sorted(root.parent.glob(f"{PARTIAL}*")):  # no two saves at once: left by a kill
            log.info("removed %s, left by a save or a removal cut off by a kill", stale)
            shutil.rmtree(stale)
        staging.mkdir(parents=True)
    wait()
    try:
        yield staging
        if writer:
            fsync_tree(staging)
        wait()
        if writer:
            _move_into_place(staging, final, into=into)
            shutil.rmtree(root)
    except BaseException as err:
        if not writer:
            raise
        full = full_error is not None and isinstance(err, Exception) and is_disk_full(err, root)
        written = folder_size(root)
        if full:  # free the failed writer's files (its frames hold them open) before measuring space
            _release(err)
        shutil.rmtree(root, ignore_errors=True)
        if full:
            raise full_error(written) from None
        raise


def rotate_checkpoints(run_dir: Path, limit: int | None, best: str | None) -> None:
    """Delete the oldest checkpoints beyond `limit` by the Trainer's rule (transformers'
    `rotate_checkpoints`: its order, the newest and the best kept), each renamed to a partial
    name before it is deleted: a kill during a deletion leaves a partial folder (removed by the
    next save), never a `checkpoint-N` with some of its files gone."""
    from transformers.trainer_utils import sort_checkpoints

    if limit is None or limit <= 0:
        return
    found = sort_checkpoints(str(run_dir), use_mtime=True)  # oldest first, as the Trainer sorts them
    if len(found) <= limit:
        return
    protected = {found[-1]}  # the newest, to resume from
    if best is not None:
        protected.add(str(Path(best)))
    surplus = len(found) - max(limit, len(protected))
    for path in [p for p in found if p not in protected][: max(surplus, 0)]:
        doomed = Path(path).with_name(f"{PARTIAL}removed-{Path(path).name}")
        os.replace(path, doomed)
        shutil.rmtree(doomed)


def _release(err: BaseException) -> None:
    """Drop what the frames of a failed save hold (torch's writer keeps its file open until it is
    collected), so that the space of the removed files is free again."""
    seen = err
    for _ in range(20):
        if seen is None:
            break
        traceback.clear_frames(seen.__traceback__)
        seen = seen.__cause__ or seen.__context__
    gc.collect()


def _move_into_place(staging: Path, final: Path, *, into: bool) -> None:
    if into:
        for entry in sorted(staging.iterdir()):
            target = final / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # a sharded save's folder: replaced whole
            os.replace(entry, target)
    else:
        if final.exists():  # a checkpoint of the same step from an earlier run: set aside, then removed
            os.replace(final, staging.parent / "replaced")
        os.replace(staging, final)
    fsync_dir(final if into else final.parent)


def folder_size(folder: Path) -> int:
    """Bytes in the files under `folder` (0 if there is none)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def parameter_bytes(model, *, trainable_only: bool = True) -> int:
    """Bytes of a model's (trainable) parameters: a lower bound of what saving its weights needs."""
    return sum(
        p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not trainable_only
    )


def checkpoint_full_error(final: Path, written: int, model) -> DpolabError:
    """A full disk while saving the checkpoint `final`: the space it needs (about that of the last
    complete checkpoint; else at least the model's trainable weights), what is kept, what to do."""
    previous = last_complete_checkpoint(final.parent, quiet=True)
    if previous is not None:
        need = {"needed": folder_size(Path(previous)), "about": f"the size of {Path(previous).name}"}
        kept = f"the checkpoints before it are kept, the last is {previous}"
    else:
        need = {"needed": max(written, parameter_bytes(model)), "at_least": True}
        kept = "no checkpoint was saved before it"
    return disk_full_error(
        final,
        what="this checkpoint",
        then=f"it was not saved, {kept}: free some space, then resume with training.resume_from_checkpoint=true",
        **need,
    )


def final_model_full_error(output_dir: Path, written: int, model) -> DpolabError:
    """A full disk while saving the final model in `output_dir`."""
    previous = last_complete_checkpoint(output_dir, quiet=True)
    resume = (
        f"the last checkpoint is {previous}: free some space, then resume with training.resume_from_checkpoint=true"
        if previous
        else "no checkpoint was saved (training.save_strategy)"
    )
    return disk_full_error(
        output_dir,
        max(written, parameter_bytes(model)),
        what="the final model",
        at_least=True,
        then=f"it was not saved and the files already there are as they were; {resume}",
    )


# ----------------------------------------------------------------------------------------------
# Which checkpoint a resume starts from
# ----------------------------------------------------------------------------------------------


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` cannot be resumed from, naming the file in it (None: complete, as far as can be
    told without loading it). Checked: trainer_state.json is there and parses; the model's weights
    are there (a weights file, or a folder of shards); every other JSON file parses; every
    safetensors file's header is readable and its data all there; every torch file (.pt, .pth,
    .bin) is a whole zip archive; every shard a weights index lists is there."""
    from safetensors import safe_open

    folder = Path(folder)
    if not (folder / TRAINER_STATE).is_file():
        return f"{TRAINER_STATE} is missing (the Trainer writes it last: the save was cut off)"
    names = {p.name for p in folder.iterdir()}
    if not names & set(WEIGHTS) and not any(p.is_dir() for p in folder.iterdir()):
        return f"no model weights ({WEIGHTS[0]}, {WEIGHTS[4]}, ...)"
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(folder).as_posix()
        try:
            if path.suffix == ".json":
                data = json.loads(path.read_text(encoding="utf-8"))
                missing = [s for s in sorted(set(_index_shards(path, data))) if not (folder / s).is_file()]
                if missing:
                    return f"{missing[0]} is missing (listed in {name})"
            elif path.suffix == ".safetensors":
                with safe_open(path, "pt"):
                    pass
            elif path.suffix in TORCH_SUFFIXES:
                zipfile.ZipFile(path).close()
        except Exception as err:  # json, safetensors and zipfile each raise their own
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            return f"{name} is cut short or damaged ({format_size(path.stat().st_size)}; {reason})"
    return None


def _index_shards(path: Path, data) -> list[str]:
    """The shard files a weights index (`*.index.json`) lists."""
    if not path.name.endswith(".index.json") or not isinstance(data, dict):
        return []
    return [str(name) for name in (data.get("weight_map") or {}).values()]


def _checkpoints(output_dir: Path) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, highest N first."""
    found = []
    for path in output_dir.glob("checkpoint-*") if output_dir.is_dir() else ():
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str | os.PathLike, *, quiet: bool = False) -> str | None:
    """The highest complete `checkpoint-N` in `output_dir`; each incomplete one above it is skipped
    with one warning naming it and why (unless `quiet`)."""
    for path in _checkpoints(Path(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        if not quiet:
            log.warning("skipped %s, incomplete: %s", path, problem)
    return None


def resume_target(config: RunConfig) -> str | None:
    """The checkpoint folder `training.resume_from_checkpoint` names: a folder, or for `true`
    (or `last`) the last complete `checkpoint-N` in `training.output_dir`; checked before anything
    loads. A named folder that is incomplete stops the run, naming the file that is wrong."""
    value = config.training.get("resume_from_checkpoint")
    if value in (None, False, ""):
        return None
    if value is True or value == "true" or value == "last":
        output_dir = config.training.get("output_dir", TRAINING_DEFAULTS["output_dir"])
        last = last_complete_checkpoint(output_dir)
        if last is None:
            what = "complete checkpoint-N folder" if _checkpoints(Path(output_dir)) else "checkpoint-N folder"
            raise DpolabError(
                f"training.resume_from_checkpoint: {str(value).lower()}, but {output_dir} holds no {what} to "
                f"resume from; name a checkpoint folder, or remove the option to start afresh"
            )
        return last
    if not Path(value).is_dir():
        raise DpolabError(f"training.resume_from_checkpoint: {value} is not a checkpoint folder")
    problem = checkpoint_problem(value)
    if problem is not None:
        last = last_complete_checkpoint(Path(value).parent, quiet=True)
        instead = (
            f"resume from {last}, the last complete one" if last else "remove the option to start afresh"
        )
        raise DpolabError(f"training.resume_from_checkpoint: {value} is incomplete: {problem}; {instead}")
    return value


def resumed_step(checkpoint: str | None) -> int:
    """The step a run resumed from `checkpoint` starts after (0: a fresh start)."""
    state = Path(checkpoint) / TRAINER_STATE if checkpoint else None
    if state is None or not state.is_file():
        return 0
    return int(json.loads(state.read_text(encoding="utf-8")).get("global_step", 0))


def last_checkpoint_before(output_dir: Path, step: int) -> Path | None:
    """The highest `checkpoint-N` folder with N < `step`: saved before that step's update (any
    later one, e.g. from an earlier run in the same folder, holds weights of after it)."""
    steps = {}
    for path in output_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit() and int(suffix) < step:
            steps[int(suffix)] = path
    return steps[max(steps)] if steps else None
