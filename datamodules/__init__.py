"""Data layer: MedMNIST files, splits, samplers, transforms and the LightningDataModule."""

from datamodules.medmnist_datamodule import MedMNISTDataModule
from datamodules.medmnist_files import DatasetError

__all__ = ["DatasetError", "MedMNISTDataModule"]
