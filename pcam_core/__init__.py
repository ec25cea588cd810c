"""pcam_core: metastatic-tissue detection on PatchCamelyon patches (data, models, training, evaluation, Grad-CAM)."""

__version__ = "0.1.0"
