"""Dataset loaders. ``load_cifar10(root, split)`` reads CIFAR-10 (pickle batches or image folders), cached."""

from imcflow.data.cifar10 import CLASSES, default_cache_dir, load_cifar10

__all__ = ["CLASSES", "default_cache_dir", "load_cifar10"]
