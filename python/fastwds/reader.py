"""``fastwds.WebDataset``: read WebDataset shards (fastwds' or any producer's) as an iterable of
sample dicts, usable as a PyTorch ``IterableDataset``; ``make_loader`` wraps it in a DataLoader.

- Shards: a ``manifest.json`` (or its folder), a wids index, a list of paths, a glob or a brace
  pattern (``data-{000000..000009}.tar``). Local files; ``.tar`` or gzip'ed ``.tar.gz``/``.tgz``.
- Splitting: each epoch's shard list (shuffled with ``seed`` and the epoch when ``shuffle``) is
  dealt out by distributed rank, then by DataLoader worker: shard ``i`` goes to rank
  ``i % world_size``, and within it to one worker. Every shard is read by exactly one worker of
  one rank, so every sample arrives exactly once per epoch. Ranks and workers with more shards
  get more samples; a worker without shards yields nothing (have at least
  ``world_size * num_workers`` shards).
- Shuffling: shard order per epoch, then a buffer of up to ``buffer_size`` samples and
  ``buffer_bytes`` bytes (CT volumes are 100 MB each: the byte cap keeps the buffer from holding
  gigabytes). Deterministic for the same ``seed``, epoch, rank and worker.
- Epochs: as with ``DistributedSampler``, the order changes only through ``set_epoch``: call it
  at the start of every epoch, before iterating the loader, or every epoch repeats epoch 0's
  order. The rule is the same with ``num_workers=0``, with workers and with
  ``persistent_workers=True``: the epoch lives in shared memory, so workers started before
  ``set_epoch`` (persistent ones) see it too. Iterating again never advances it by itself
  (webdataset's ``detshuffle`` does, but only in the process that iterates, so the order would
  then depend on ``num_workers``).
- Decoding: see ``fastwds.decode``; nothing is ever unpickled. A member that cannot be decoded
  raises ``fastwds.DecodeError`` naming the shard, the sample's key and the member (the
  decoder's exception is its ``__cause__``); ``on_decode_error="skip"`` instead drops that sample
  with a logged warning (logger ``fastwds.reader``), like webdataset's ``warn_and_continue``.
  Damage to the tar itself (cut short, bad headers) always raises ``ShardFormatError``.

torch is optional: ``import fastwds`` does not import it. ``WebDataset`` registers itself as a
virtual subclass of ``torch.utils.data.IterableDataset`` when torch has been imported (at import
of this module, at construction, and in ``make_loader``).
"""

from __future__ import annotations

import gzip
import json
import logging
import multiprocessing
import multiprocessing.context
import os
import random
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from fastwds.decode import Decoder, decode_sample, decoders_for, load_npy, read_npy
from fastwds.errors import DecodeError, InvalidInputError
from fastwds import storage
from fastwds.paths import expand_braces, matching_files
from fastwds.tar.format import ShardFormatError
from fastwds.tar.shards import open_shard
from fastwds.tar.stream import iter_members, iter_samples

Urls = str | os.PathLike | Sequence[str | os.PathLike]
log = logging.getLogger(__name__)
DECODE_ERROR_CHOICES = ("raise", "skip")


def read_index(path: str | Path) -> dict[str, int | None]:
    """``{shard path: samples}`` of a fastwds ``manifest.json`` or a wids index (a file or an
    object), in its order, paths relative to its folder."""
    location = os.fspath(path)
    try:
        if storage.is_url(location):
            index = json.loads(storage.read_bytes(storage.parse_url(location)))
        else:
            index = json.loads(Path(location).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"{location}: cannot read it as a manifest: {error}") from None
    if isinstance(index, dict) and isinstance(index.get("shards"), list):
        entries = [(shard["name"], shard.get("samples")) for shard in index["shards"]]
    elif isinstance(index, dict) and isinstance(index.get("shardlist"), list):
        entries = [(shard["url"], shard.get("nsamples")) for shard in index["shardlist"]]
    else:
        raise InvalidInputError(f"{location}: neither a fastwds manifest ('shards') nor a wids index ('shardlist')")
    folder = location.rsplit("/", 1)[0]
    return {storage.join(folder, name) if storage.is_url(location) else str(Path(location).parent / name): count
            for name, count in entries}


def shards_from_index(path: Path) -> list[str]:
    """Shard paths listed by a fastwds ``manifest.json`` or a wids index, relative to its folder."""
    return list(read_index(path))


def expected_counts(shards: Sequence[str]) -> dict[str, int]:
    """The sample count of every shard a ``manifest.json`` or ``index.wids.json`` beside it lists:
    a shard cut exactly at a member boundary (or empty) reads as a valid, shorter tar, and only
    the count tells."""
    def key(shard: str) -> str:
        return shard if storage.is_url(shard) else os.path.abspath(shard)

    counts: dict[str, int] = {}
    folders: dict[str, str] = {}  # folder -> its first shard, to name in errors
    for shard in shards:
        folders.setdefault(key(shard).rsplit("/", 1)[0], shard)
    for folder, shard in folders.items():
        for name in ("manifest.json", "index.wids.json"):
            index = f"{folder}/{name}"
            try:
                found = storage.is_file(index)
            except storage.StorageError as error:  # name what the user gave, not the index we looked for
                raise storage.StorageError(f"{shard}: cannot reach its store (looking for the {name} beside it): "
                                           f"{error}") from error
            if found:
                try:
                    listed = read_index(index)
                except InvalidInputError:
                    continue  # not ours to judge here: verify reports a broken index
                counts.update({key(p): n for p, n in listed.items() if isinstance(n, int)})
                break
    return {shard: counts[key(shard)] for shard in shards if key(shard) in counts}


def expand_urls(urls: Urls) -> list[str]:
    """Every shard path, in the order given (globs sorted)."""
    if isinstance(urls, (str, os.PathLike)):
        urls = [urls]
    shards: list[str] = []
    for url in urls:
        text = os.fspath(url)
        if text.startswith("pipe:"):
            raise InvalidInputError(f"{text}: fastwds.WebDataset reads files and s3:// URLs, not pipes")
        if storage.is_url(text):
            storage.parse_url(text)  # an unsupported scheme is refused naming this URL
            shards += remote_shards(text)
            continue
        path = Path(text)
        if path.is_dir():
            if not (path / "manifest.json").is_file():
                raise InvalidInputError(f"{path}: a folder without manifest.json; pass the shard paths")
            shards += shards_from_index(path / "manifest.json")
        elif text.endswith(".json"):
            shards += shards_from_index(path)
        else:
            shards += [str(p) for p in matching_files(text, missing="shard not found")]
    if not shards:
        raise InvalidInputError("no shards given")
    return shards


def remote_shards(url: str) -> list[str]:
    """Shards in an object store: a manifest or wids index URL, a prefix holding a manifest, or
    shard URLs (brace patterns too)."""
    if url.endswith(".json"):
        return list(read_index(url))
    candidates = expand_braces(url)
    if len(candidates) == 1 and not candidates[0].endswith((".tar", ".tar.gz", ".tgz")):
        manifest = f"{candidates[0].rstrip('/')}/manifest.json"
        if not storage.is_file(manifest):
            raise InvalidInputError(f"{url}: a prefix without manifest.json; pass the shard URLs")
        return list(read_index(manifest))
    return candidates


def split_shards(shards: Sequence[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """The shards one worker of one rank reads: disjoint across all (rank, worker) pairs, and
    together all of them."""
    return list(shards[rank::world_size][worker::num_workers])


def check_placement(rank: int | None, world_size: int | None) -> None:
    """Refuse a ``rank``/``world_size`` given to the constructor that no process could have."""
    for name, value in (("rank", rank), ("world_size", world_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an integer or None, not {value!r}")
    if world_size is not None and world_size < 1:
        raise ValueError(f"world_size must be at least 1, not {world_size}")
    if rank is not None and rank < 0:
        raise ValueError(f"rank must be at least 0, not {rank}")
    if rank is not None and world_size is not None and rank >= world_size:
        raise ValueError(f"rank {rank} is not within world_size {world_size} (ranks are 0 to {world_size - 1})")


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` from torch.distributed when it is initialised, else the ``RANK`` and
    ``WORLD_SIZE`` environment variables (torchrun sets them), else ``(0, 1)``."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def dataloader_worker() -> tuple[int, int]:
    """``(worker id, number of workers)`` inside a DataLoader worker, else ``(0, 1)``. torch is
    only consulted when it is already imported: a DataLoader worker always has it."""
    torch_data = sys.modules.get("torch.utils.data")
    info = torch_data.get_worker_info() if torch_data is not None else None
    return (info.id, info.num_workers) if info is not None else (0, 1)


def shuffled(samples: Iterable[dict], size: int, max_bytes: int, rng: random.Random) -> Iterator[dict]:
    """Samples in random order through a buffer of at most ``size`` samples and ``max_bytes``
    payload bytes (one sample at least)."""
    buffer: list[dict] = []
    held = 0
    for sample in samples:
        buffer.append(sample)
        held += _payload_bytes(sample)
        while buffer and (len(buffer) >= size or held > max_bytes):
            index = rng.randrange(len(buffer))
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            chosen = buffer.pop()
            held -= _payload_bytes(chosen)
            yield chosen
    rng.shuffle(buffer)
    yield from buffer


def _payload_bytes(sample: dict) -> int:
    # Members are bytes, or arrays already read (numpy's nbytes).
    return sum(getattr(value, "nbytes", None) or len(value) for name, value in sample.items()
               if not name.startswith("__"))


class WebDataset:
    """Iterate the samples of WebDataset shards: ``{"__key__", "__url__", ext: value}``; a
    PyTorch ``IterableDataset`` (see ``make_loader``). More in ``help(fastwds.reader)``.

    - ``urls_or_manifest``: a ``manifest.json`` or its folder, a wids ``index.wids.json``, a shard
      path, a glob (``out/*.tar``), a brace pattern (``data-{000000..000009}.tar``), ``s3://``
      URLs (of a manifest, a prefix holding one, shards, a brace pattern), or a list of these.
      ``.tar``, ``.tar.gz``, ``.tgz``.
    - ``shuffle``: shuffle the shard order, then samples through a buffer of ``buffer_size``
      samples and ``buffer_bytes`` bytes; deterministic for ``seed`` and the epoch, which only
      ``set_epoch`` changes (call it before each epoch, as with ``DistributedSampler``).
    - ``decode``: ``True`` (default) decodes by extension (``fastwds.decode``: npy, npz, json,
      text, cls, images; nothing is unpickled), ``False`` gives raw bytes, a mapping
      ``{ext: fn(bytes)}`` replaces single decoders (``None``: keep bytes); a key may be a whole
      extension (``"labels.npy"``), and one that can never match a member (``".json"``,
      ``"pil"``) is a ``ValueError``.
    - ``on_decode_error``: ``"raise"`` (default) raises ``fastwds.DecodeError`` (shard, key,
      member) for a member that cannot be decoded; ``"skip"`` drops that sample and logs a
      warning naming them.
    - ``rank``/``world_size``: override what ``distributed_rank()`` finds (torch.distributed,
      else the ``RANK``/``WORLD_SIZE`` torchrun sets). Shards are dealt out by rank, then by
      DataLoader worker, so every sample arrives exactly once per epoch.

    Damaged shards raise ``fastwds.ShardFormatError``, unsafe member paths
    ``fastwds.UnsafeMemberError``.
    """

    def __init__(self, urls_or_manifest: Urls, *, shuffle: bool = False, buffer_size: int = 1000,
                 buffer_bytes: int = 1 << 30, decode: bool | Mapping[str, Decoder | None] = True,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 on_decode_error: Literal["raise", "skip"] = "raise") -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, not {buffer_size}")
        check_placement(rank, world_size)
        if on_decode_error not in DECODE_ERROR_CHOICES:
            raise ValueError(f"on_decode_error must be 'raise' or 'skip', not {on_decode_error!r}")
        self.shards = expand_urls(urls_or_manifest)
        self.expected = expected_counts(self.shards)
        self.shuffle = shuffle
        self.buffer_size = buffer_size
        self.buffer_bytes = buffer_bytes
        decoders_for(decode)  # reject a bad value now rather than in a worker
        self.decode = decode
        self.on_decode_error = on_decode_error
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._epoch = shared_epoch(0)
        register_with_torch()

    @property
    def epoch(self) -> int:
        return self._epoch.value

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the shuffle order, for this dataset and every DataLoader worker reading it
        (persistent ones too). Call it before iterating the loader for that epoch."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 1 << 63:
            raise ValueError(f"epoch must be an integer from 0, not {epoch!r}")
        self._epoch.value = epoch

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if multiprocessing.context.get_spawning_popen() is None:  # pickled, not a worker being started
            state["_epoch"] = self.epoch
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["_epoch"], int):
            state["_epoch"] = shared_epoch(state["_epoch"])
        self.__dict__.update(state)

    def placement(self) -> tuple[int, int, int, int]:
        """``(rank, world_size, worker, num_workers)`` of the process iterating now."""
        rank, world_size = distributed_rank()
        if self.rank is not None:
            rank = self.rank
        if self.world_size is not None:
            world_size = self.world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not within world_size {world_size}")
        return (rank, world_size, *dataloader_worker())

    def shards_for(self, epoch: int, rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
        shards = list(self.shards)
        if self.shuffle:  # the same order on every rank and worker, so the split stays disjoint
            random.Random(f"fastwds-shards-{self.seed}-{epoch}").shuffle(shards)
        return split_shards(shards, rank, world_size, worker, num_workers)

    def raw_samples(self, shards: Iterable[str], read_value: Any = None) -> Iterator[dict]:
        for shard in shards:
            count = 0
            try:
                with open_shard(shard) as (stream, _compressed):
                    for sample in iter_samples(iter_members(stream, shard, read_value), shard):
                        count += 1
                        yield sample
            except (EOFError, zlib.error, gzip.BadGzipFile) as error:  # the gzip stream of a .tar.gz
                raise ShardFormatError(f"{shard}: the gzip stream is damaged or cut short after {count} samples: "
                                       f"{error}") from error
            expected = self.expected.get(shard)
            if expected is not None and count != expected:
                raise ShardFormatError(f"{shard}: {count} samples, but the manifest / wids index beside it lists "
                                       f"{expected}: the shard is cut short or is not the one that was written")

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch
        placement = self.placement()
        decoders = decoders_for(self.decode)
        # .npy members go straight from the file into their arrays, unless the caller decodes npy
        # (or a whole extension ending in .npy, like "labels.npy").
        fast_npy = read_npy if decoders is not None and decoders.get("npy") is load_npy and not any(
            "." in ext and ext.endswith(".npy") for ext in decoders) else None
        samples = self.raw_samples(self.shards_for(epoch, *placement), fast_npy)
        if self.shuffle:
            rng = random.Random(f"fastwds-samples-{self.seed}-{epoch}-{placement[0]}-{placement[2]}")
            samples = shuffled(samples, self.buffer_size, self.buffer_bytes, rng)
        if decoders is None:
            return samples
        return self._decoded(samples, decoders)

    def _decoded(self, samples: Iterable[dict], decoders: Mapping[str, Decoder | None]) -> Iterator[dict]:
        for sample in samples:
            try:
                yield decode_sample(sample, decoders)
            except DecodeError as error:
                if self.on_decode_error == "raise":
                    raise
                log.warning("%s (caused by %s); skipping this sample (on_decode_error='skip')", error,
                            type(error.__cause__).__name__)

    def __repr__(self) -> str:
        return f"fastwds.WebDataset({len(self.shards)} shards, shuffle={self.shuffle}, decode={self.decode!r})"


def shared_epoch(epoch: int) -> Any:
    """A ``.value`` in shared memory: DataLoader workers, forked or spawned, read the epoch that
    the training loop sets after they started."""
    try:
        return multiprocessing.RawValue("q", epoch)
    except OSError:  # no shared memory here: set_epoch then reaches only the workers started after it
        return SimpleNamespace(value=epoch)


def register_with_torch() -> None:
    """Make ``isinstance(dataset, torch.utils.data.IterableDataset)`` true (DataLoader asks), if
    torch is imported; without importing it."""
    torch_data = sys.modules.get("torch.utils.data")
    if torch_data is not None and not issubclass(WebDataset, torch_data.IterableDataset):
        torch_data.IterableDataset.register(WebDataset)


def collate(samples: list[dict]) -> dict[str, Any]:
    """Batch sample dicts: per key, torch's ``default_collate`` (arrays of one shape become one
    tensor, numbers a tensor, strings a list); values it cannot batch (different shapes, None,
    images, nested JSON) stay a list. The keys are those of every sample of the batch, in the
    order they first appear; a sample without one of them gives None there."""
    from torch.utils.data import default_collate

    batch = {}
    for name in dict.fromkeys(name for sample in samples for name in sample):
        values = [sample.get(name) for sample in samples]
        if any(isinstance(value, (dict, list)) for value in values):
            # JSON documents stay one per sample: torch would transpose dicts into a dict of lists
            # when they agree, and fail (KeyError) when one lacks a key the first one has.
            batch[name] = values
            continue
        try:
            batch[name] = default_collate(values)
        except (TypeError, RuntimeError):
            batch[name] = values
    return batch


def make_loader(urls_or_dataset: Urls | WebDataset, *, batch_size: int | None = None, num_workers: int = 0,
                prefetch_factor: int | None = 2, persistent_workers: bool = False, pin_memory: bool = False,
                collate_fn: Callable[[list], Any] | None = None, **dataset_options: Any) -> Any:
    """A ``torch.utils.data.DataLoader`` over a ``WebDataset`` (given, or made from the urls and
    ``dataset_options``). ``batch_size=None`` yields samples one by one; with a batch size,
    ``collate_fn`` defaults to ``collate``."""
    import torch.utils.data

    register_with_torch()
    if isinstance(urls_or_dataset, WebDataset):
        if dataset_options:
            raise TypeError(f"options {sorted(dataset_options)} are for a new WebDataset; this one is made")
        dataset = urls_or_dataset
    else:
        dataset = WebDataset(urls_or_dataset, **dataset_options)
    options: dict[str, Any] = {"batch_size": batch_size, "num_workers": num_workers, "pin_memory": pin_memory}
    if batch_size is not None:
        options["collate_fn"] = collate_fn or collate
    elif collate_fn is not None:
        options["collate_fn"] = collate_fn
    if num_workers > 0:
        options.update(prefetch_factor=prefetch_factor, persistent_workers=persistent_workers)
    return torch.utils.data.DataLoader(dataset, **options)


register_with_torch()
