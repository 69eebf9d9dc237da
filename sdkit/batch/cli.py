"""sdkit-batch: many images from a file of rows, resumable, on local devices or a Ray cluster.

    sdkit-batch prompts.txt -o out/ -m model.safetensors --param steps=20 --repeat 4
    sdkit-batch rows.csv -o /shared/out/ -m MODEL --ray auto      # one worker per GPU of the cluster

Exit status: 0 all rows done, 1 some rows failed (the rest done), 2 usage error (before any work),
130 interrupted (what finished is kept; rerun the command to go on).
"""

from __future__ import annotations

import argparse
import sys
import traceback

import sdkit
from sdkit import backends

from .rows import RowsError, parse_param
from .run import batch


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sdkit-batch", description="Generate an image per row of a .txt, .csv or .jsonl file.",
                epilog="Rerunning the same command resumes: done images are kept, the others made.")
    p.add_argument("input", metavar="INPUT", help=".txt (one prompt per line), .csv or .jsonl whose columns are "
                                                  "generate()'s arguments (prompt, seed, steps, width, ...) and model")
    p.add_argument("-o", "--output", required=True, help="folder for the images and manifest.jsonl (with --ray: "
                                                         "one every node can write), or an fsspec URL (s3://...)")
    p.add_argument("-m", "--model", help="the model of rows without a model column")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a default for every row, e.g. steps=20 (repeatable)")
    p.add_argument("--repeat", type=_positive_int, default=1, metavar="N",
                   help="images per row, seeds seed, seed + 1, ... (default 1)")
    p.add_argument("--resume", action="store_true", help="go on with an interrupted batch (rerunning the same "
                                                         "command does so too)")
    p.add_argument("--devices", "--device", help="local workers, one per device: cuda:0,cuda:1 (default: every "
                                                 "CUDA GPU, else one worker on the fastest device; on a CPU it uses "
                                                 "all cores)")
    p.add_argument("--ray", metavar="auto|HOST:PORT", help="run on a Ray cluster: one worker per GPU (or per "
                                                           "node, or per --cpus-per-worker CPUs)")
    p.add_argument("--cpus-per-worker", type=_positive_int, metavar="N",
                   help="with --ray on CPU nodes: a worker per N CPUs (default: one per node, with all its CPUs)")
    p.add_argument("--backend", choices=["auto", *backends.names()], default="auto",
                   help="auto: MLX on Apple silicon when installed, else torch")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="default float16 on GPUs, float32 on CPUs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show the traceback of errors")
    p.add_argument("--version", action="version", version=f"sdkit {sdkit.__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = dict(parse_param(p) for p in args.param)
        devices = args.devices.split(",") if args.devices else None
        summary = batch(args.input, args.output, args.model, params=params, repeat=args.repeat, devices=devices,
                        ray=args.ray, cpus_per_worker=args.cpus_per_worker, backend=args.backend, dtype=args.dtype,
                        progress=not args.quiet)
    except KeyboardInterrupt:
        print("sdkit-batch: interrupted; what finished is kept: rerun the command to go on", file=sys.stderr)
        return 130
    except (RowsError, ValueError, ImportError) as e:  # before any work: bad rows, folder of another batch
        return _fail(e, 2, args.debug)
    except (sdkit.SdkitError, OSError) as e:
        return _fail(e, 1, args.debug)
    print(summary, file=sys.stderr)
    return 0 if not summary.failed else 1


def _fail(error: Exception, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"sdkit-batch: error: {error}", file=sys.stderr)
    return code


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value
