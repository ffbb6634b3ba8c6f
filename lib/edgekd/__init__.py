"""edgekd: knowledge distillation for edge deployment of skin-lesion classifiers (DermaMNIST)."""

__version__ = "0.1.0"
