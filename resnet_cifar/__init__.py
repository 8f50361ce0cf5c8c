"""resnet-cifar: a ResNet-9 for CIFAR-10, from training to the Hugging Face Hub to a Space."""

from .model import ResNet9, count_parameters
from .preprocess import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, ImageError, load_image, preprocess

__version__ = "0.2.0"
__all__ = ["ResNet9", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "ImageError", "load_image", "preprocess",
           "count_parameters"]
