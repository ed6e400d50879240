"""gflnb: Generalized Focal Loss (Li et al., NeurIPS 2020) faithful to mmdetection 3.3, in plain PyTorch."""
from .numerics import portable

portable.apply()  # before torch picks its CPU kernels: the same numbers on every machine (gflnb/numerics/portable.py)

from .engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import PRESETS, ConfigError, GFLConfig, get_config
from .model.detector import GFL, build_model
from .model.head import GFLHead

portable.check()

__version__ = "0.1.0"
__all__ = ["GFL", "GFLHead", "GFLConfig", "PRESETS", "ConfigError", "CheckpointError", "build_model", "Detector", "explore",
           "get_config", "load_checkpoint", "save_checkpoint", "__version__"]


def __getattr__(name: str):
    # gflnb.explore and gflnb.Detector on first use: the explorer brings OpenCV, pandas, seaborn and (through seaborn)
    # ipywidgets, which the package itself (training, evaluation) does without
    if name == "explore":
        from .chapters.explorer import explore
        globals()["explore"] = explore
        return explore
    if name == "Detector":  # the same: it reads images with OpenCV
        from .engine.predict import Detector
        globals()["Detector"] = Detector
        return Detector
    raise AttributeError(f"module 'gflnb' has no attribute {name!r}")
