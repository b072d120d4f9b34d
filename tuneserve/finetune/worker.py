"""One training process of a multi-process run: `python -m tuneserve.finetune.worker LAUNCH_JSON`.

Started by `accelerate launch` (see launch.py); every rank trains, rank 0 writes the artifact.
"""

import json
import sys
from pathlib import Path

from tuneserve.finetune import TRAINERS
from tuneserve.finetune.common import Run, fit, save
from tuneserve.finetune.data import load_rows
from tuneserve.finetune.launch import process_rank
from tuneserve.finetune.recipe import Recipe
from tuneserve.models import resolve_model


def main(launch_file: str) -> None:

    spec = json.loads(Path(launch_file).read_text())
    recipe = Recipe.model_validate(spec["recipe"])
    build, kind = TRAINERS[recipe.method]
    rows, hashes = load_rows(recipe)
    run = Run(recipe, resolve_model(recipe.base_model), rows, hashes)
    trainer = build(run)
    fit(run, trainer, spec["resume"])
    rank, _ = process_rank()
    if rank == 0:
        save(run, trainer, kind=kind, overwrite=spec["overwrite"], keep_work_dir=True)


if __name__ == "__main__":
    main(sys.argv[1])
