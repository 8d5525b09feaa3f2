"""The latent cache and the text-embedding cache of the latent families (SPEC §8).

Layout, under `data.cache_dir` (default `output.dir/cache`):

    latents/<vae>/<entry>.safetensors    one sample variant: the VAE's latent_dist parameters (2C, h, w)
    text_embeddings/<encoders>/<entry>.safetensors   one caption: hidden states (L, D) [+ pooled (P,)]

`<vae>` / `<encoders>` are the first 16 hex digits of the identity of the
model that made the entries (`module_identity`: SHA-256 of the class, the
config and every weight tensor; for text, also the tokenizers' vocabulary).
The identity holds no path: the config's `_name_or_path` (where the model was
loaded from) is left out, so a model folder moved or copied elsewhere keeps
its cache, and any changed weight makes a new one.

The caches ask the model family (`modules.families.base`), never its
pipeline: `latent_cache_identity`, `latent_layout`, `encode_latents`;
`text_cache_identity`, `text_embedding_shapes`, `embed_caption`, `use_text_cache`.
The captions to embed are the dataset's (`ImageDataset.captions`).

Latent entries (`data.cache_latents`): one per (image file, training size,
resized size, crop, flip), the file name a hash of those and the VAE's
identity; inside, the metadata records them together with the SHA-256 of the
image file's bytes. An entry is used only when its file reads, its metadata
equals what the sample expects (the same image content, bucket, crop, flip
and VAE) and its tensor has the expected shape; otherwise it is rebuilt, and
the log says which and why ("image changed", "unreadable"). Entries are
built before the first step for every sample the remaining steps of this
process train on (`sample_specs`: flips are known before decoding, so only
the variants a run needs are made), one image at a time, exactly as the loss
encodes images without the cache (`family.encode_latents`),
under the same autocast: training from the cache gives the same weights.

Text entries (`data.cache_text_embeddings`, frozen text encoders only): one
per caption of the dataset, plus the empty caption when caption dropout is
on, keyed by the caption text and the encoders' identity, made one caption
at a time as the frozen encoders run without the cache.

Every entry is written to a temporary file beside it and renamed into place,
so runs sharing one cache never read half an entry. A cache folder that
cannot be written is a ConfigError (`check_cache_dir`).
"""

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modules.errors import ConfigError

CACHE_FORMAT = "1"
LATENTS_DIR = "latents"
TEXT_EMBEDDINGS_DIR = "text_embeddings"
DEFAULT_CACHE_DIR = "cache"
ENTRY_SUFFIX = ".safetensors"
IDENTITY_DIGITS = 16
REPORTED_REBUILDS = 5        # rebuilt entries named one by one in the log; the rest are counted
PROGRESS_LOG_STEPS = 10      # without a progress bar: a log line every tenth of the work
HASH_CHUNK_BYTES = 1 << 20
# Config keys that say where a model was loaded from, not what it computes.
LOCATION_CONFIG_KEYS = frozenset({"_name_or_path", "_commit_hash"})


def cache_dir(preset) -> Path:
    """data.cache_dir, or output.dir/cache."""
    return Path(preset.data.cache_dir) if preset.data.cache_dir else Path(preset.output.dir) / DEFAULT_CACHE_DIR


def check_cache_dir(folder: Path) -> None:
    """ConfigError (data.cache_dir) unless `folder` exists or can be made, and a file can be written in it."""
    folder = Path(folder)
    probe = folder / f".write-test-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"cannot write the cache folder '{folder}': {reason}", "data.cache_dir") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def module_identity(modules: list[torch.nn.Module], extra: list[str] = ()) -> str:
    """SHA-256 of each module's class, config (without LOCATION_CONFIG_KEYS) and state dict (names, dtypes,
    shapes, bytes), and `extra`."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(type(module).__qualname__.encode())
        config = getattr(module, "config", None)
        if config is not None:
            as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            as_dict = {key: value for key, value in as_dict.items() if key not in LOCATION_CONFIG_KEYS}
            digest.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
        for name, tensor in module.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()


def tokenizer_identity(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    return json.dumps([type(tokenizer).__qualname__, tokenizer.model_max_length, sorted(vocab.items())])


def write_entry(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors entry atomically: a unique temporary file beside it, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        save_file({name: value.detach().cpu().contiguous() for name, value in tensors.items()}, temporary,
                  metadata=metadata)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_entry(path: Path, metadata: dict[str, str], shapes: dict[str, tuple] | None = None):
    """(tensors, None) when the entry reads and matches; (None, reason) otherwise ('missing', ...)."""
    if not path.is_file():
        return None, "missing"
    try:
        with safe_open(str(path), framework="pt") as entry:
            stored = entry.metadata() or {}
            tensors = {name: entry.get_tensor(name) for name in entry.keys()}
    except Exception:  # noqa: BLE001 - a damaged file raises anything from the safetensors parser
        return None, "unreadable"
    if any(stored.get(key) != value for key, value in metadata.items()):
        if stored.get("content_sha256") not in (None, metadata.get("content_sha256")):
            return None, "image changed"
        return None, "does not match"
    for name, shape in (shapes or {}).items():
        if name not in tensors or (shape is not None and tuple(tensors[name].shape) != tuple(shape)):
            return None, "does not match"
    if not all(torch.isfinite(value).all() for value in tensors.values()):
        return None, "does not match"
    return tensors, None


def _entry_name(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest() + ENTRY_SUFFIX


class _Progress:
    """tqdm on the command line, else a log line every tenth of the work (the app shows the log)."""

    def __init__(self, total: int, what: str, log: Callable[[str], None], bar: bool):
        from tqdm.auto import tqdm

        self.total, self.what, self.log, self.done = total, what, log, 0
        self.bar = tqdm(total=total, desc=what, unit="entry", dynamic_ncols=True) if bar and total else None
        self.next_report = 1

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.done * PROGRESS_LOG_STEPS >= self.next_report * self.total:
            self.log(f"{self.what}: {self.done} of {self.total} entries")
            self.next_report = self.done * PROGRESS_LOG_STEPS // self.total + 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _report_rebuilds(what: str, rebuilt: list[tuple[str, str]], log) -> None:
    for name, reason in rebuilt[:REPORTED_REBUILDS]:
        log(f"{what}: rebuilding the entry of {name} ({reason})")
    if len(rebuilt) > REPORTED_REBUILDS:
        log(f"{what}: rebuilding {len(rebuilt) - REPORTED_REBUILDS} more entries")


# --- latents ------------------------------------------------------------------------


@dataclass(frozen=True)
class _LatentEntry:
    path: Path
    metadata: dict


class LatentCache:
    """Serves the stored latent parameters of sample specs; picklable, so DataLoader workers read it too."""

    def __init__(self, folder: Path, vae_identity: str, latent_channels: int, downsampling: int):
        self.folder = Path(folder) / LATENTS_DIR / vae_identity[:IDENTITY_DIGITS]
        self.vae_identity = vae_identity
        self.latent_channels = latent_channels
        self.downsampling = downsampling
        self.content_hashes: dict[Path, str] = {}

    @staticmethod
    def variant(spec) -> tuple:
        return (str(Path(spec.path).resolve()), tuple(spec.target_size), tuple(spec.resized_size),
                tuple(spec.crop_top_left), bool(spec.flip))

    def entry(self, spec) -> _LatentEntry:
        variant = self.variant(spec)
        content = self.content_hashes.get(Path(spec.path))
        if content is None:
            content = self.content_hashes[Path(spec.path)] = file_sha256(spec.path)
        metadata = {"format": CACHE_FORMAT, "vae": self.vae_identity, "content_sha256": content,
                    "target_size": json.dumps(variant[1]), "resized_size": json.dumps(variant[2]),
                    "crop_top_left": json.dumps(variant[3]), "flip": json.dumps(variant[4])}
        return _LatentEntry(self.folder / _entry_name(*variant, self.vae_identity), metadata)

    def shape(self, spec) -> tuple[int, int, int]:
        height, width = spec.target_size
        return 2 * self.latent_channels, height // self.downsampling, width // self.downsampling

    def read(self, spec):
        entry = self.entry(spec)
        tensors, reason = read_entry(entry.path, entry.metadata, {"parameters": self.shape(spec)})
        return (tensors["parameters"] if tensors else None), reason

    def latent_parameters(self, specs) -> torch.Tensor:
        """(B, 2C, h, w) of the specs; an entry damaged since the cache was built is a ConfigError."""
        parts = []
        for spec in specs:
            parameters, reason = self.read(spec)
            if parameters is None:
                raise ConfigError(f"the latent cache entry of '{spec.path}' became {reason} during training "
                                  f"(start the run again to rebuild it)", "data.cache_dir")
            parts.append(parameters)
        return torch.stack(parts)


def needed_specs(dataset, plan, seed: int, rank: int, start_step: int) -> list:
    """One spec per distinct latent variant this process trains on from `start_step` to the end."""
    from modules.data.datasets import micro_batch_range

    seen, specs = set(), []
    epoch_of, order = None, None
    for global_micro_batch in micro_batch_range(plan, start_step):
        epoch, micro_batch = divmod(global_micro_batch, plan.micro_batches_per_epoch)
        if epoch != epoch_of:
            epoch_of, order = epoch, dataset.epoch_order(seed, epoch, plan)
        for spec in dataset.sample_specs(order, plan, micro_batch, rank, seed, global_micro_batch):
            variant = LatentCache.variant(spec)
            if variant not in seen:
                seen.add(variant)
                specs.append(spec)
    return specs


def build_latent_cache(family, folder: Path, dataset, plan, seed: int, rank: int, start_step: int,
                       autocast, log, progress_bar: bool) -> LatentCache:
    """Check every entry the run needs, encode the missing or invalid ones; the cache, ready to serve."""
    from modules.data.datasets import sample_pixels

    latent_channels, downsampling = family.latent_layout()
    cache = LatentCache(folder, family.latent_cache_identity(), latent_channels, downsampling)
    specs = needed_specs(dataset, plan, seed, rank, start_step)
    missing, rebuilt = [], []
    for spec in specs:
        parameters, reason = cache.read(spec)
        if parameters is None:
            missing.append(spec)
            if reason != "missing":
                rebuilt.append((f"'{spec.path}'" + (" (flipped)" if spec.flip else ""), reason))
    log(f"latent cache '{cache.folder}': {len(specs) - len(missing)} of {len(specs)} entries reused, "
        f"{len(missing)} to encode")
    _report_rebuilds("latent cache", rebuilt, log)
    progress = _Progress(len(missing), "latent cache", log, progress_bar)
    try:
        with torch.no_grad(), autocast():
            for spec in missing:
                parameters = family.encode_latents(sample_pixels([spec]))[0]
                entry = cache.entry(spec)
                try:
                    write_entry(entry.path, {"parameters": parameters}, entry.metadata)
                except OSError as error:
                    raise ConfigError(f"cannot write the cache entry '{entry.path}': "
                                      f"{error.strerror or type(error).__name__}", "data.cache_dir") from None
                progress.update()
    finally:
        progress.close()
    return cache


# --- text embeddings -------------------------------------------------------------------


class TextEmbeddingCache:
    """Caption -> (hidden states, pooled embeddings or None), read from the cache folder as training goes."""

    def __init__(self, folder: Path, encoders_identity: str):
        self.folder = Path(folder) / TEXT_EMBEDDINGS_DIR / encoders_identity[:IDENTITY_DIGITS]
        self.identity = encoders_identity

    def path(self, caption: str) -> Path:
        return self.folder / _entry_name(caption, self.identity)

    def metadata(self, caption: str) -> dict[str, str]:
        return {"format": CACHE_FORMAT, "encoders": self.identity, "caption": caption}

    def read(self, caption: str, shapes: dict[str, tuple] | None):
        return read_entry(self.path(caption), self.metadata(caption), shapes)

    def embeddings(self, captions: list[str], device):
        parts = []  # read per micro-batch, not held: SDXL's embeddings of 10,000 captions would be 6 GB
        for caption in captions:
            tensors, reason = self.read(caption, None)
            if tensors is None:
                raise ConfigError(f"the text-embedding cache entry of caption {caption!r} became {reason} "
                                  "during training (start the run again to rebuild it)", "data.cache_dir")
            parts.append((tensors["hidden"], tensors.get("pooled")))
        hidden = torch.stack([part[0] for part in parts]).to(device)
        pooled = None if parts[0][1] is None else torch.stack([part[1] for part in parts]).to(device)
        return hidden, pooled


def build_text_embedding_cache(family, captions, folder: Path, autocast, device, log,
                               progress_bar: bool) -> TextEmbeddingCache:
    """Every caption of the dataset (`captions`, and '' with caption dropout) embedded once by the frozen encoders."""
    cache = TextEmbeddingCache(folder, family.text_cache_identity())
    captions = sorted(set(captions) | ({""} if family.preset.data.caption_dropout > 0 else set()))
    shapes = family.text_embedding_shapes()  # what every entry must hold
    missing, rebuilt = [], []
    for caption in captions:
        tensors, reason = cache.read(caption, shapes)
        if tensors is None:
            missing.append(caption)
            if reason != "missing":
                rebuilt.append((f"caption {caption!r}", reason))
    log(f"text-embedding cache '{cache.folder}': {len(captions) - len(missing)} of {len(captions)} entries "
        f"reused, {len(missing)} to encode")
    _report_rebuilds("text-embedding cache", rebuilt, log)
    progress = _Progress(len(missing), "text-embedding cache", log, progress_bar)
    try:
        with torch.no_grad(), autocast():
            for caption in missing:
                tensors = family.embed_caption(caption, device)
                try:
                    write_entry(cache.path(caption), tensors, cache.metadata(caption))
                except OSError as error:
                    raise ConfigError(f"cannot write the cache entry '{cache.path(caption)}': "
                                      f"{error.strerror or type(error).__name__}", "data.cache_dir") from None
                progress.update()
    finally:
        progress.close()
    return cache


def prepare_caches(preset, family, dataset, plan, rank: int, start_step: int, accelerator,
                   log, progress_bar: bool, extra_captions=()) -> None:
    """Build and attach the caches `preset.data` asks for (nothing when it asks for none); the family
    encodes what they hold. `extra_captions` (the validation images') join the text-embedding cache."""
    data = preset.data
    if not (data.cache_latents or data.cache_text_embeddings):
        return
    abilities = family.descriptor()
    if not (abilities.has_vae and abilities.takes_captions):  # model.type auto that resolved to a unet folder
        key = "data.cache_latents" if data.cache_latents else "data.cache_text_embeddings"
        from modules.families.registry import FAMILIES

        cached = " and ".join(entry.name for entry in FAMILIES if entry.has_vae and entry.takes_captions)
        raise ConfigError(f"is for {cached} models; {family.name} has no VAE or text encoder to cache", key)
    folder = cache_dir(preset)
    check_cache_dir(folder)
    if data.cache_text_embeddings:
        captions = list(dict.fromkeys([*dataset.captions.values(), *extra_captions]))
        family.use_text_cache(build_text_embedding_cache(family, captions, folder,
                                                         accelerator.autocast, accelerator.device, log,
                                                         progress_bar))
    if data.cache_latents:
        dataset.latent_cache = build_latent_cache(family, folder, dataset, plan, preset.training.seed, rank,
                                                  start_step, accelerator.autocast, log, progress_bar)


__all__ = ["LatentCache", "TextEmbeddingCache", "build_latent_cache", "build_text_embedding_cache", "cache_dir",
           "check_cache_dir", "module_identity", "needed_specs", "prepare_caches"]
