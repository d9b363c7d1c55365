"""The LightningModules (CatClassifier, DiTGenerator) and the networks they train."""

from tinycats.models.classifier import CatClassifier
from tinycats.models.generator import DiTGenerator

__all__ = ["CatClassifier", "DiTGenerator"]
