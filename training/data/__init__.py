"""Datasets for training: images (MNIST, Fashion-MNIST, digits, user folders) and text."""
