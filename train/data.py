"""Pre-training data: image folders, the embedded photographs, SparK's augmentation, resumable order.

Exact resume and exact multi-process equivalence both come from one rule: nothing random here
depends on which process or worker does the work, or on how far an iterator got. The sampler yields
keys ``(epoch, index)``; the augmentation of a key is drawn from a generator seeded by
``(seed, epoch, index)``; the order of an epoch is a permutation seeded by ``seed + epoch`` (torch's
DistributedSampler), and a resumed epoch simply starts at a later batch of the same permutation.

An unreadable or corrupt file does not stop a run: its index is replaced by the next readable one
(deterministically), and the files are reported back with the batch so the trainer can count and
log them. Only ``MAX_SUBSTITUTES`` unreadable files in a row (counting on from one index) stop the
run with an error: that is a wrong folder, not a few bad files.
"""
from __future__ import annotations

import hashlib
import os
import signal
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler, Sampler
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from ..images import IMAGENET_MEAN, IMAGENET_STD, open_rgb

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# The colour photographs that ship inside the scikit-image wheel (skimage/data/): real scenes, no
# download. Synthetic images (colour wheel, chessboard, phantom, logos) are left out.
EMBEDDED_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
                   "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg")
MAX_SUBSTITUTES = 16  # unreadable files in a row before the data set is declared broken


def spark_augmentation(input_size: int) -> transforms.Compose:
    """SparK's pre-training augmentation: RandomResizedCrop(scale 0.67–1, bicubic), flip, normalise."""
    return transforms.Compose([
        transforms.RandomResizedCrop(input_size, scale=(0.67, 1.0), interpolation=InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch, independent of process, worker and iteration order."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class ImageSource:
    """Where images come from: ``len``, ``load(i)`` → RGB PIL image (may raise), ``name(i)``."""

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Which images, in which order: a resumed run checks that it continues on the same data set."""
        return _digest(self.name(i) for i in range(len(self)))


def _digest(names) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()[:16]


class DataError(RuntimeError):
    """The data cannot feed the run (not a few bad files: those are skipped)."""


def find_images(root: str, exclude: Optional[str] = None) -> List[str]:
    """Every image file under ``root`` (ImageFolder layout or flat), sorted, so the order is stable;
    nothing under the folder ``exclude`` (the run's own --out, whose PNGs are not data)."""
    if os.path.isfile(root):
        raise FileNotFoundError(f"--data {root!r} is a file; pass the folder that holds the images")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root!r} does not exist (pass a folder of images, flat or in "
                                f"class sub-folders as ImageNet's train/, or omit --data for the embedded photos)")
    found, seen = [], {os.path.realpath(exclude)} if exclude else set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop, or two links to one folder: each real folder once
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        found.extend(os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        raise FileNotFoundError(f"no images under {root!r} (looked for {', '.join(IMAGE_EXTENSIONS)} files, "
                                f"in it or its sub-folders)")
    return found


class FolderImages(ImageSource):
    def __init__(self, root: str, exclude: Optional[str] = None):
        self.root = root
        self.paths = find_images(root, exclude)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        return open_rgb(self.paths[index])

    def name(self, index: int) -> str:
        return os.path.relpath(self.paths[index], self.root)

    def fingerprint(self) -> str:
        """Names relative to the root: moving the folder keeps it, adding or removing a file changes it."""
        start = len(os.path.join(self.root, ""))
        return _digest(p[start:] for p in self.paths)


def embedded_photo_paths() -> List[str]:
    import skimage
    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    paths = [os.path.join(folder, name) for name in EMBEDDED_PHOTOS if os.path.isfile(os.path.join(folder, name))]
    if not paths:
        raise FileNotFoundError(f"none of the embedded photographs ({', '.join(EMBEDDED_PHOTOS)}) were found in "
                                f"{folder}; reinstall scikit-image or pass --data")
    return paths


@lru_cache(maxsize=None)
def _photo(path: str) -> Image.Image:
    return open_rgb(path)


class EmbeddedPhotos(ImageSource):
    """The scikit-image sample photographs cut into fixed random square crops (a small real data set).

    Each photo gives ``crops_per_photo`` crops with sides of 30–80 % of its shorter side, at
    positions drawn once from a fixed seed, so the data set is the same on every machine.
    """

    def __init__(self, crops_per_photo: int = 32, seed: int = 0):
        self.paths = embedded_photo_paths()
        rng = np.random.default_rng(seed)
        self.crops: List[Tuple[str, Tuple[int, int, int, int]]] = []
        for path in self.paths:
            with Image.open(path) as img:
                width, height = img.size
            for _ in range(crops_per_photo):
                side = int(min(width, height) * rng.uniform(0.3, 0.8))
                left = int(rng.integers(0, width - side + 1))
                top = int(rng.integers(0, height - side + 1))
                self.crops.append((path, (left, top, left + side, top + side)))

    def __len__(self) -> int:
        return len(self.crops)

    def load(self, index: int) -> Image.Image:
        path, box = self.crops[index]
        return _photo(path).crop(box)

    def name(self, index: int) -> str:
        path, box = self.crops[index]
        return f"{os.path.basename(path)}{list(box)}"


class PretrainDataset(Dataset):
    """``dataset[(epoch, index)]`` → (augmented image tensor, [(file, reason), …] skipped on the way)."""

    def __init__(self, source: ImageSource, input_size: int, seed: int = 0):
        self.source = source
        self.transform = spark_augmentation(input_size)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        skipped = []
        for attempt in range(MAX_SUBSTITUTES):
            i = (index + attempt) % len(self.source)
            try:
                image = self.source.load(i)
            except Exception as e:  # any failure to decode a file makes it unreadable, never fatal
                skipped.append((self.source.name(i), f"{type(e).__name__}: {e}"))
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, epoch, index))
                return self.transform(image), skipped
        raise DataError(f"{MAX_SUBSTITUTES} unreadable images in a row from index {index}, e.g. "
                        f"{skipped[0][0]} ({skipped[0][1]}): is the data folder right?")


def ignore_stop_signals(worker_id: int) -> None:
    """Data workers leave SIGTERM / SIGINT to the main process, which saves a checkpoint and then ends
    them; a scheduler that signals the whole process group must not kill them mid-step."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class UnreadableFiles:
    """Unreadable files met so far: each distinct file once (``files``) and every failed read (``reads``:
    a file is read again each epoch, and a substitute chain can meet it twice)."""

    def __init__(self):
        self.files: set = set()
        self.reads = 0

    def add(self, names, reads: int) -> None:
        self.files.update(names)
        self.reads += reads

    def state(self) -> dict:
        return {"skipped_images": self.reads, "skipped_files": sorted(self.files)}

    def restore(self, metrics: dict) -> None:
        self.reads = int(metrics.get("skipped_images", 0))
        self.files = set(metrics.get("skipped_files") or ())

    def summary(self) -> str:
        return f"{len(self.files)} unreadable image files skipped ({self.reads} reads)"


def batches_within(loader, seconds: float) -> Iterator:
    """``loader``'s batches, each within ``seconds`` of asking for it (0: no limit), else DataError.

    Not the DataLoader's own ``timeout``: with one set, it stops polling its workers every few
    seconds and waits the whole timeout before noticing that one of them died. A real-time alarm in
    the main process interrupts the wait (or a read the main process itself is stuck in) instead.
    """
    iterator = iter(loader)
    alarms = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    limit = seconds if seconds > 0 and alarms else 0  # signals reach the main thread only

    def expired(signum, frame):
        raise DataError(f"no batch came from the data loading within --data-timeout {seconds:g} s (a read stuck "
                        f"on a slow or network file system?)")
    while True:
        previous = signal.signal(signal.SIGALRM, expired) if limit else None
        if limit:
            signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            batch = next(iterator)
        except StopIteration:
            return
        finally:
            if limit:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
        yield batch


def data_failure(error: BaseException) -> Optional[str]:
    """One line for an error that ended the data's supply — a :class:`DataError` (re-raised from a worker
    with the worker's traceback inside its message) or a worker process that died — else None."""
    text = str(error).strip()
    if isinstance(error, DataError):
        last = text.splitlines()[-1] if text else ""
        return last.split("DataError: ", 1)[-1] if "Original Traceback" in text else text
    if isinstance(error, RuntimeError) and text.startswith("DataLoader worker"):
        return f"a data-loading process died ({text.splitlines()[0]}; out of memory?)"
    return None


def shutdown_workers(loader, timeout: float = 5.0) -> None:
    """End the loader's worker processes now. They ignore SIGTERM (see ``ignore_stop_signals``), so the
    interpreter's exit handlers, which terminate children with SIGTERM and then wait for them, would
    wait forever: every exit path of a run calls this first. Workers are asked to stop through the
    loader's own protocol; any still alive after ``timeout`` seconds are killed."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is None:
        return
    workers = list(getattr(iterator, "_workers", []))
    try:
        if hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
    finally:
        loader._iterator = None
        for w in workers:
            w.join(timeout)
            if w.is_alive():
                w.kill()
                w.join(timeout)


def collate(batch):
    images = torch.stack([item[0] for item in batch])
    skipped = [s for item in batch for s in item[1]]
    return images, skipped


class ResumableBatchSampler(Sampler):
    """This process's batches of keys ``(epoch, index)`` for one epoch, from any batch on.

    The order is torch's DistributedSampler (a permutation seeded by ``seed + epoch``, process
    ``rank`` taking every ``world``-th index, the tail dropped), so with ``world`` processes of
    ``batch_size`` images the global batch k holds exactly the images of batch k of one process with
    ``world × batch_size`` — process r's i-th image is the global batch's image ``r + world·i``.
    """

    def __init__(self, dataset: Dataset, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle: bool = True):
        self.order = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                                        drop_last=True)
        self.batch_size = batch_size
        self.epoch = 0
        self.start_batch = 0
        if self.batches_per_epoch < 1:
            raise ValueError(f"the data set has {len(dataset)} images, fewer than one global batch of "
                             f"{batch_size * world}: use a smaller --batch-size or more images")

    @property
    def batches_per_epoch(self) -> int:
        return len(self.order) // self.batch_size

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        self.order.set_epoch(self.epoch)
        indices = list(self.order)
        for b in range(self.start_batch, self.batches_per_epoch):
            yield [(self.epoch, i) for i in indices[b * self.batch_size:(b + 1) * self.batch_size]]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


@dataclass
class DataConfig:
    data: Optional[str]
    input_size: int
    batch_size: int   # per process
    workers: int
    seed: int
    rank: int = 0
    world: int = 1
    pin_memory: bool = False
    exclude: Optional[str] = None  # a folder under --data that is not data (the run's --out)


def build_source(data: Optional[str], exclude: Optional[str] = None) -> ImageSource:
    return EmbeddedPhotos() if not data else FolderImages(data, exclude)


def build_loader(cfg: DataConfig):
    """(DataLoader, batch sampler, source): iterate once per epoch after ``sampler.set_position``."""
    source = build_source(cfg.data, cfg.exclude)
    dataset = PretrainDataset(source, cfg.input_size, cfg.seed)
    sampler = ResumableBatchSampler(dataset, cfg.batch_size, cfg.rank, cfg.world, cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate, pin_memory=cfg.pin_memory,
        persistent_workers=cfg.workers > 0, worker_init_fn=ignore_stop_signals,
        generator=torch.Generator(),  # its base-seed draw must not consume the global RNG (drop-path draws)
    )
    return loader, sampler, source

