"""Runnable studies for lightning-landscape.

A package so that LightningCLI configs can name the classes by import path
(``examples.shallow_relu.ShallowReLU``) when run from the repository root.
"""
