"""Data layer: MedMNIST files, your own image folders and tables, splits, samplers, transforms."""

from datamodules.image_datamodule import ImageFolderDataModule, ImageTableDataModule
from datamodules.medmnist_datamodule import MedMNISTDataModule
from datamodules.medmnist_files import DatasetError

__all__ = ["DatasetError", "ImageFolderDataModule", "ImageTableDataModule", "MedMNISTDataModule"]
