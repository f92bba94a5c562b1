"""How much does a train run's logged model add to the store? (Budget: 200 KB per run.)

Runs one `clusterprobe run` (the default config unless flags say otherwise) into a
temporary store, then reports its checkpoint's size, the files of its logged model's
folder (which must hold no weights), and the store's growth from logging that model:
measured by logging the same final checkpoint once more, as the pipeline did (same
input example), with the SQLite database's WAL folded in before and after.

    python benchmarks/model_store.py                     # the default run (~3 min, 2 CPU cores)
    python benchmarks/model_store.py --quick             # the --quick preset (~30 s)
    python benchmarks/model_store.py --image-size 64     # a size without an input example
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from clusterprobe.runners import logged_model, models, pipeline
from clusterprobe.runners.checkpoints import stored_checkpoint
from clusterprobe.runners.config import PRESETS, RunConfig
from clusterprobe.runners.data.record import dataset_record, normalisation
from clusterprobe.runners.weights import file_sha256
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.logged_models import model_folder
from clusterprobe.tracker.store import local_store
from clusterprobe.tracker.tracking import Tracker


def db_bytes(db: Path) -> int:
    """The database file's size with its write-ahead log folded in."""
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return db.stat().st_size


# The text a logged model puts into the database (SQLite stores it about as is; indexes
# and page slack come on top), for when the file does not grow at all.
MODEL_ROWS = {
    "logged_models": "model_id || name || artifact_location || source_run_id || model_type",
    "logged_model_params": "model_id || experiment_id || param_key || param_value",
    "logged_model_tags": "model_id || experiment_id || tag_key || tag_value",
}


def model_row_bytes(db: Path, model_id: str) -> int:
    con = sqlite3.connect(db)
    try:
        return sum(
            con.execute(
                f"SELECT coalesce(sum(length({text})), 0) FROM {table} WHERE model_id = ?",
                (model_id,),
            ).fetchone()[0]
            for table, text in MODEL_ROWS.items()
        )
    finally:
        con.close()


def files(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the --quick preset")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    args = parser.parse_args()
    overrides = dict(PRESETS["quick"]) if args.quick else {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    config = RunConfig().replace(**overrides)

    with tempfile.TemporaryDirectory(prefix="clusterprobe-model-store-") as tmp:
        store = local_store(Path(tmp) / "mlruns")
        t0 = time.perf_counter()
        result = pipeline.run(config, store, quiet=True)
        print(f"run: {time.perf_counter() - t0:.0f} s, train run {result.train_run_id}")
        tracker = Tracker(store)
        checkpoint = stored_checkpoint(tracker, result.train_run_id)
        print(f"checkpoint/: {sum(files(checkpoint).values()):,} bytes (the weights, once)")
        first = files(model_folder(tracker, result.model_id))
        for name, size in sorted(first.items()):
            print(f"  model/{name}: {size:,} bytes")
        print(f"logged model folder: {sum(first.values()):,} bytes")

        # The same model logged again, as the pipeline logs it: the store's growth.
        config, data = pipeline.prepare(config)
        cfg = models.checkpoint_config(checkpoint)
        before = db_bytes(store.db_path)
        t0 = time.perf_counter()
        again = logged_model.log_train_model(
            tracker,
            result.train_run_id,
            cfg,
            weights_sha256=file_sha256(checkpoint / cv.CHECKPOINT_WEIGHTS),
            params=dict(tracker.get_run(result.train_run_id).data.params),
            step=config.epochs,
            example=logged_model.example_input(data),
            normalisation=normalisation(dataset_record(data)),
        )
        seconds = time.perf_counter() - t0
        grew = db_bytes(store.db_path) - before
        folder = sum(files(model_folder(tracker, again)).values())
        rows = model_row_bytes(store.db_path, again)
        print(
            f"store growth per logged model: {folder + grew:,} bytes (folder {folder:,} + "
            f"mlflow.db file {grew:,}; its rows hold {rows:,} bytes of text); "
            f"logging took {seconds:.2f} s"
        )


if __name__ == "__main__":
    main()
