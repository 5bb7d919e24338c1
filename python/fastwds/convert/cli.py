"""``fastwds convert SOURCE``: one subcommand per registered source (``fastwds.sources.SOURCES``),
each with the source's own arguments plus the flags every conversion shares, then one flow:
configure, plan, convert, summary. Flags accept the seed scripts' spellings (``--input_dir``) as
well as the dashed ones."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from fastwds import storage
from fastwds.arguments import add_flag, non_negative, parse_size, parents, positive
from fastwds.convert.options import ON_INVALID
from fastwds.convert.run import ConversionInterrupted, convert
from fastwds.cores import available_cores
from fastwds.errors import NothingWrittenError
from fastwds.progress import format_bytes
from fastwds.sources import SOURCES, get_source
from fastwds.sources.base import Source

def default_workers(decoding: bool = False) -> int:
    """One worker process per two cores: one task's pipeline already keeps about two cores busy
    (the reading thread, validation, the writer and its sha256 thread). Measured on 2 cores (12k
    LLaVA rows, `fastwds bench convert`): one process did 1.3-1.6x the rows/s of two on the disk
    (two runs) and 1.45x on tmpfs; a second process only adds its start-up (~0.5 s of imports) and
    contention for the same two cores.

    ``decoding`` (--verify-images full, --reencode): one per core. Decoding is Pillow's C code on
    two threads per task, but each image's Python (opening, draft, checks) needs the GIL, so one
    process kept its two cores ~90% busy; two processes each have their own GIL. Measured with the
    CLI on the same 12k rows, tmpfs, interleaved: full verification 8.09-9.83 s (median 8.43)
    with two workers against 8.67-9.72 s (median 8.98) with one, 7 rounds; --reencode jpeg
    18.5-20.9 s against 22.5-26.5 s, 3 rounds."""
    cores = available_cores()
    return cores if decoding else max(1, cores // 2)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    output = parser.add_argument_group("shards")
    add_flag(output, "--max-samples-per-shard", "--max_samples_per_shard", type=positive(int), default=10_000,
             dest="max_samples_per_shard", metavar="N", help="samples per shard (default 10000)")
    add_flag(output, "--max-shard-size", "--max_shard_size", type=parse_size, default=parse_size("3GB"),
             dest="max_shard_size", metavar="SIZE", help="hard cap on a shard file's size (default 3GB)")
    output.add_argument("--dali-index", action="store_true", help="also write DALI .idx files")
    output.add_argument("--no-fsync", action="store_true",
                        help="skip fsync before publishing shards (faster; a power loss may lose recent shards)")
    checks = parser.add_argument_group("invalid samples")
    invalid = checks.add_mutually_exclusive_group()
    add_flag(invalid, "--on-invalid", "--on_invalid", choices=ON_INVALID, default="skip", dest="on_invalid",
             help="skip (default, listed in rejects.jsonl), keep (written, flagged in their JSON) or fail "
                  "(stop at the first)")
    add_flag(invalid, "--skip-invalid", "--skip_invalid", action="store_const", const="skip", dest="on_invalid",
             help="same as --on-invalid skip (the seed scripts' flag)")
    add_flag(invalid, "--no-skip-invalid", "--no_skip_invalid", action="store_const", const="fail",
             dest="on_invalid", help="same as --on-invalid fail")
    run = parser.add_argument_group("run")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="finish an interrupted run; refuses if input or options changed")
    again.add_argument("--overwrite", action="store_true", help="discard an earlier run in OUTPUT_DIR")
    run.add_argument("--limit", type=positive(int), default=None, metavar="N", help="convert only the first N rows")
    add_flag(run, "--num-workers", "--num_workers", type=positive(int), default=None, dest="num_workers",
             metavar="N", help=f"worker processes with --engine local (default: one per two cores, here "
                               f"{default_workers()}; one per core with --verify-images full or --reencode, "
                               f"here {default_workers(decoding=True)})")
    run.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    run.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    engine = parser.add_argument_group("engine (execution only: every engine writes the same bytes)")
    engine.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: worker processes on this machine (default); ray: Ray core tasks on a cluster "
                             "that sees the input and the output (pip install 'fastwds[ray]')")
    engine.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="auto, HOST:PORT or ray://HOST:PORT (default: $RAY_ADDRESS, else auto)")
    engine.add_argument("--ray-task-cpus", type=positive(float), default=None, metavar="N",
                        help="CPUs each task asks for (default 2, one task keeps about two busy; at most a node's)")
    engine.add_argument("--ray-max-in-flight", type=positive(int), default=None, metavar="N",
                        help="tasks submitted at once (default: twice what the cluster's CPUs run at once)")
    engine.add_argument("--ray-retries", type=non_negative, default=3, metavar="N",
                        help="retries of a task whose worker or node died, or that hit a transient I/O error "
                             "(default 3); data errors are never retried")
    engine.add_argument("--ray-straggler-factor", type=float, default=4.0, metavar="X",
                        help="start one duplicate of a task running X times longer than the median finished task "
                             "(default 4; 0: never)")


def quality(text: str) -> int:
    value = positive(int)(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"JPEG quality is 1 to 100, not {text}")
    return value


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of sources whose samples carry images."""
    images = parser.add_argument_group("images")
    add_flag(images, "--verify-images", "--verify_images", choices=("fast", "full"), default="fast",
             dest="verify_images", help="fast: format, header and end marker (default); full: decode every image")
    add_flag(images, "--max-image-pixels", "--max_image_pixels", type=positive(int), default=178_956_970,
             dest="max_image_pixels", metavar="N",
             help="reject images with more pixels, from their headers (default 178956970: Pillow refuses to open "
                  "larger ones, so the training loader would fail on them)")
    images.add_argument("--reencode", choices=("jpeg",), default=None,
                        help="re-encode images (default: original bytes pass through unchanged)")
    images.add_argument("--quality", type=quality, default=90, metavar="Q",
                        help="JPEG quality with --reencode, 1-100 (default 90)")
    add_flag(images, "--max-side", "--max_side", type=positive(int), default=None, dest="max_side", metavar="PIXELS",
             help="with --reencode: shrink so the longest side is at most this")


def print_summary(manifest: dict[str, Any], output_dir: str, as_json: bool,
                  extra: list[tuple[str, str]] = ()) -> None:
    totals = manifest["totals"]
    if as_json:
        summary = {"output_dir": storage.display_location(output_dir), **totals,
                   "invalid_by_reason": manifest["invalid_by_reason"],
                   "elapsed_seconds": manifest["elapsed_seconds"], "resumed": manifest["resumed"],
                   "shards": [s["name"] for s in manifest["shards"]]}
        if "stats" in manifest:  # a source's own totals (summarize hook), e.g. npz precision
            summary["stats"] = manifest["stats"]
        json.dump(summary, sys.stdout, indent=2)
        print()
        return
    seconds = max(manifest["elapsed_seconds"], 1e-9)
    # A resumed run converted only the tasks left: its speed is theirs over its own time.
    converted = manifest.get("this_run", {}).get("rows", totals["rows"])
    converted_bytes = manifest.get("this_run", {}).get("bytes", totals["bytes"])
    where = storage.display_location(output_dir)
    rows = [("total rows", f"{totals['rows']:,}"), ("valid", f"{totals['rows'] - totals['invalid']:,}"),
            ("invalid", f"{totals['invalid']:,}")]
    rows += [(f"  {reason}", f"{count:,}") for reason, count in manifest["invalid_by_reason"].items()]
    if totals["invalid_kept"]:
        rows.append(("invalid kept (flagged)", f"{totals['invalid_kept']:,}"))
    rows += [("samples written", f"{totals['samples']:,}"), ("shards", f"{totals['shards']:,}"),
             ("bytes", format_bytes(totals["bytes"])),
             ("time", f"{seconds:.1f} s ({converted / seconds:,.0f} rows/s, "
                      f"{format_bytes(converted_bytes / seconds)}/s"
                      + (f" over the {converted:,} rows converted in this run)" if manifest["resumed"] else ")")),
             ("output", where)]
    if totals["invalid"]:
        rows.append(("rejects", f"{where}/rejects.jsonl"))
    rows += extra
    width = max(len(label) for label, _ in rows)
    outcome = "done" if totals["samples"] else "no sample written"  # the error line follows (exit 1)
    print(f"fastwds convert: {outcome}" + (" (resumed)" if manifest["resumed"] else ""))
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def shared_options(args: argparse.Namespace) -> dict[str, Any]:
    """ConvertOptions fields from the flags every source shares."""
    fields = dict(max_samples_per_shard=args.max_samples_per_shard, max_shard_bytes=args.max_shard_size,
                  on_invalid=args.on_invalid, dali_index=args.dali_index, limit=args.limit,
                  fsync=not args.no_fsync)
    decoding = False
    if hasattr(args, "verify_images"):  # sources whose samples carry images
        fields.update(verify_images=args.verify_images, max_image_pixels=args.max_image_pixels,
                      reencode=args.reencode, quality=args.quality,
                      max_side=args.max_side)
        decoding = args.verify_images == "full" or args.reencode is not None
    fields["num_workers"] = args.num_workers or default_workers(decoding)
    return fields


def engine_settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.engine == "ray":
        return {"address": args.ray_address, "task_cpus": args.ray_task_cpus, "max_in_flight": args.ray_max_in_flight,
                "retries": args.ray_retries, "straggler_factor": args.ray_straggler_factor}
    return {}


def run_source(args: argparse.Namespace) -> int:
    source: Source = args.source_object
    job = source.configure(args)
    options = source.convert_options(**{**shared_options(args), "source_options": job.source_options, **job.overrides})
    plan = source.plan(job.inputs, options)
    try:
        manifest = convert(plan, job.output, options, command=f"convert {source.name}", resume=args.resume,
                           overwrite=args.overwrite, show_progress=not args.no_progress and not args.json,
                           engine=args.engine, engine_settings=engine_settings(args))
    except NothingWrittenError as error:  # a run that rejected everything is no success
        print_summary(error.manifest, job.output, as_json=args.json, extra=source.summary(error.manifest))
        raise
    except ConversionInterrupted as interrupted:
        print(f"fastwds: interrupted: {interrupted.progress()}; to continue:\n  {resume_command()}", file=sys.stderr)
        interrupted.reported = True
        raise
    except KeyboardInterrupt as interrupted:  # a second Ctrl-C while the first one was being handled
        print(f"fastwds: interrupted while stopping (finished tasks are complete and kept); to continue:\n"
              f"  {resume_command()}", file=sys.stderr)
        interrupted.reported = True  # type: ignore[attr-defined]
        raise
    print_summary(manifest, job.output, as_json=args.json, extra=source.summary(manifest))
    return 0


def resume_command() -> str:
    """The command that was run, with --resume (and without --overwrite): what to type next."""
    words = [word for word in sys.argv[1:] if word != "--overwrite"]
    if "--resume" not in words:
        words.append("--resume")
    return shlex.join(["fastwds", *words])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    subcommands = parser.add_subparsers(dest="source", metavar="SOURCE")  # checked by cli.missing_choice
    for name in SOURCES:
        source = get_source(name)
        sub = subcommands.add_parser(name, help=source.help, description=source.description,
                                     usage=f"%(prog)s {source.usage} [options]", parents=parents())
        source.add_arguments(sub)
        add_common_arguments(sub)
        if source.has_images:
            add_image_arguments(sub)
        defaults = source.convert_options()
        sub.set_defaults(run=run_source, source_object=source, max_samples_per_shard=defaults.max_samples_per_shard,
                         max_shard_size=defaults.max_shard_bytes, parser=sub)
        for action in sub._actions:  # the shared help states this source's defaults (no image options for npz)
            if action.dest == "num_workers" and action.help is not argparse.SUPPRESS and not source.has_images:
                action.help = f"worker processes with --engine local (default: one per two cores, here " \
                              f"{default_workers()})"
            if action.help is argparse.SUPPRESS or "--max-samples-per-shard" not in action.option_strings \
                    and "--max-shard-size" not in action.option_strings:
                continue
            if action.dest == "max_samples_per_shard":
                action.help = f"samples per shard (default {defaults.max_samples_per_shard})"
            elif action.dest == "max_shard_size":
                action.help = f"hard cap on a shard file's size (default {defaults.max_shard_bytes / 1e9:g}GB)"
