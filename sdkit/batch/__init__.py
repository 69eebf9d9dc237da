"""Batch generation: rows of generate() arguments -> images and manifest.jsonl, on local devices or Ray.

    sdkit.batch("prompts.jsonl", "out/", "stable-diffusion-v1-5/stable-diffusion-v1-5")

rows.py reads and validates the input, manifest.py owns the output folder (atomic images, the record of what
is done), storage.py writes to fsspec URLs, worker.py makes one image, local.py and cluster.py (Ray) run
workers, run.py ties them together, cli.py is sdkit-batch.
"""

from .rows import RowsError
from .run import Summary, batch

__all__ = ["batch", "Summary", "RowsError"]
