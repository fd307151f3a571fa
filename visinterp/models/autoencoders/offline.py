"""The offline default autoencoder: the SD VAE's architecture (diffusers AutoencoderKL, 8x
downsampling, 4 latent channels) with smaller channels, trained once on the project's own
rendered scenes and cached, so the main job runs with no hub and no downloaded weights."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ctxsae_common import typed
from ctxsae_common.errors import InputError
from ctxsae_common.cache import cache_root
from ctxsae_common.files import read_json_object, write_folder_atomic
from ctxsae_common.seeds import seeded_generator
from ctxsae_common.typed import param, require
from visinterp.models.autoencoders.adapters import DiffusersKL, psnr_per_image
from visinterp.inputs.images import SceneImages

TRAINING_FILE = "training.json"


@dataclass(frozen=True)
class OfflineAEConfig:
    """How the offline default autoencoder is trained (its cache key is this whole config).
    Training is repeatable on one CPU at one thread count; elsewhere the float sums round
    differently and it trains another autoencoder (the converged image benchmarks refuse to mix
    stages harvested from two)."""

    images: int = param(256, "rendered training scenes")
    size: int = param(64, "training image side in pixels (a multiple of 8)")
    steps: int = param(3000, "Adam steps")
    batch: int = param(32, "crops per step (small batches of whole images learn little beyond the mean colour)")
    crop: int = param(32, "side of the random square crops trained on (a multiple of 8); convolutions share "
                      "weights across positions, so crops teach the same filters at a fraction of the compute")
    lr: float = param(2e-3, "Adam learning rate (cosine decay to 10% over the steps)")
    kl_weight: float = param(1e-6, "weight of the KL term; SD's VAE uses 1e-6 (Rombach et al. 2022, app. G)")
    block_out_channels: tuple[int, ...] = param((32, 32, 64, 64), "channels per resolution; 4 levels = 8x down")
    latent_channels: int = param(4, "latent channels, as the SD VAE")
    norm_groups: int = param(8, "GroupNorm groups; few, so each group pools several channels (one channel per "
                             "group normalises away each channel's mean, i.e. the image's colours)")
    scene_seed: int = param(10_000, "seed of the first training scene (kept apart from the run's scenes)")
    seed: int = param(0, "seed of initialisation and batch order")

    def __post_init__(self) -> None:
        require(self.images >= 2, f"offline_ae.images={self.images} must be at least 2")
        require(self.size % 8 == 0 and self.size >= 16, f"offline_ae.size={self.size} must be a multiple of 8, >= 16")
        require(self.crop % 8 == 0 and 8 <= self.crop <= self.size,
                f"offline_ae.crop={self.crop} must be a multiple of 8 between 8 and size={self.size}")
        require(self.steps >= 1 and self.batch >= 1, "offline_ae.steps and offline_ae.batch must be >= 1")
        require(len(self.block_out_channels) == 4, "offline_ae.block_out_channels needs 4 levels (8x downsampling)")
        require(all(c % self.norm_groups == 0 for c in self.block_out_channels),
                f"offline_ae.norm_groups={self.norm_groups} must divide every block_out_channels entry")

    def key(self) -> str:
        """The cache key: this config and the training images' encoding (sRGB since the images
        are encoded as image files are; models trained on linear renders are not reused)."""
        key = {**asdict(self), "images": "srgb"}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _build(cfg: OfflineAEConfig):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=cfg.block_out_channels, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_groups, sample_size=cfg.size)


def training_scenes(cfg: OfflineAEConfig, progress: bool = True) -> Tensor:
    """The autoencoder's training scenes (N, 3, size, size), rendered into the cache once, scene
    by scene (as a run's scenes are), so a training that was stopped renders only what is missing
    when it starts again, and configs that differ only in how they train share the renders."""
    source = SceneImages(cache_root() / f"offline-ae-scenes-{cfg.size}px-seed{cfg.scene_seed}", cfg.images, cfg.size,
                         cfg.scene_seed)
    source.ensure(progress, desc="render offline-AE scenes")
    return source.load(0, cfg.images)


def _train(cfg: OfflineAEConfig, progress: bool, device: torch.device) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(cfg.seed)
    images = training_scenes(cfg, progress)
    n_held = max(1, cfg.images // 16)
    held, train = images[:n_held], images[n_held:]
    vae = _build(cfg).to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr / 10)
    gen = seeded_generator(cfg.seed, "model")
    bar = tqdm(range(cfg.steps), desc=f"train offline autoencoder ({device})", disable=not progress)
    for _ in bar:
        x = train[torch.randint(len(train), (cfg.batch,), generator=gen)]
        top, left = torch.randint(0, cfg.size - cfg.crop + 1, (2,), generator=gen).tolist()
        x = x[:, :, top : top + cfg.crop, left : left + cfg.crop]
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        x = (torch.where(flip[:, None, None, None], x.flip(-1), x) * 2 - 1).to(device)
        post = vae.encode(x).latent_dist
        # the posterior mean, not a sample: with a KL weight this small the encoder's initial
        # variance (~1) drowns the latent in noise and training stalls at the mean colour
        loss = (vae.decode(post.mode()).sample - x).pow(2).mean() + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{loss.item():.4f}")
    vae.eval()
    held_psnr = float(psnr_per_image(held, DiffusersKL(vae, "offline").reconstruct(held)).mean())
    return vae.cpu(), {"config": asdict(cfg), "held_out_psnr_db": held_psnr, "held_out_images": n_held}


def offline_hook_names(cfg: OfflineAEConfig) -> list[str]:
    """The hooks the offline default for `cfg` offers, known without training it (an untrained copy)."""
    return DiffusersKL(_build(cfg), "offline").hook_names


def offline_folder(cfg: OfflineAEConfig) -> Path:
    """Where the offline default for `cfg` is cached (trained or not)."""
    return cache_root() / f"offline-vae-{cfg.key()}"


def offline_autoencoder(cfg: OfflineAEConfig | None = None, progress: bool = True,
                        device: str | torch.device = "cpu") -> DiffusersKL:
    """The cached offline default for `cfg` (on the CPU), training it first on `device` if it is
    not cached. The cache folder is written under a temporary name and renamed, so a killed run
    leaves no half model."""
    cfg = cfg or OfflineAEConfig()
    folder = offline_folder(cfg)
    if not (folder / TRAINING_FILE).is_file():
        vae, info = _train(cfg, progress, torch.device(device))

        def write(tmp: Path) -> None:
            vae.save_pretrained(tmp)
            (tmp / TRAINING_FILE).write_text(json.dumps(info, indent=2))

        write_folder_atomic(folder, write)
    return load_offline(folder)


def load_offline(folder: str | Path) -> DiffusersKL:
    """An offline default saved in `folder` (the cache's, or a run folder's copy of it)."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    info = read_json_object(folder / TRAINING_FILE, "offline autoencoder record")
    cfg = typed.from_dict(OfflineAEConfig, info.get("config", {}), str(folder / TRAINING_FILE))
    try:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{folder}: unreadable offline autoencoder ({str(e).splitlines()[0][:120]}): "
                         "run the job again to retrain it") from None
    description = (f"offline default: AutoencoderKL (SD VAE architecture, channels "
                   f"{list(cfg.block_out_channels)}) trained on {cfg.images} rendered scenes at {cfg.size} px, "
                   f"{cfg.steps} steps on {cfg.crop} px crops; held-out PSNR {info['held_out_psnr_db']:.1f} dB")
    adapter = DiffusersKL(vae.float(), description)
    adapter.family = "offline"
    return adapter
