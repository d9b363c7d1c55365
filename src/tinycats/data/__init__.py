"""Oxford-IIIT Pet and folders of photos, as cached uint8 tensors."""

from tinycats.data.datamodule import PetsDataModule

__all__ = ["PetsDataModule"]
