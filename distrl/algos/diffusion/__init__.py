"""Diffusion policies over action chunks, trained by behaviour cloning and sampled with DDIM.

DSRL steers a frozen one through its latent noise (`distrl.algos.dsrl`).
"""

from distrl.algos.diffusion.files import MODEL_FILE, load_model, load_tensors, save_model
from distrl.algos.diffusion.model import SPEC_TENSOR, DiffusionModel, DiffusionModelError, spec_from_tensors
from distrl.algos.diffusion.networks import ResidualMLPDenoiser, UNetDenoiser, make_denoiser
from distrl.algos.diffusion.policy import DiffusionPolicy
from distrl.algos.diffusion.spec import DiffusionSpec
from distrl.algos.diffusion.training import DiffusionTrainer, TrainConfig

__all__ = [
    "MODEL_FILE",
    "SPEC_TENSOR",
    "DiffusionModel",
    "DiffusionModelError",
    "DiffusionPolicy",
    "DiffusionSpec",
    "DiffusionTrainer",
    "ResidualMLPDenoiser",
    "TrainConfig",
    "UNetDenoiser",
    "load_model",
    "load_tensors",
    "make_denoiser",
    "save_model",
    "spec_from_tensors",
]
