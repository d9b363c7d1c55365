"""The LightningModules (CatClassifier, and the DiT generator) and the networks they train."""

from tinycats.models.classifier import CatClassifier

__all__ = ["CatClassifier"]
