"""The digit classifier the demo model's quality test uses (pipeline/demo_model.py), with probabilities:
how strongly generated digits read as a class (the edit tests' measure of meaning)."""

from __future__ import annotations

from functools import cache

import numpy as np


@cache
def _probabilistic_classifier():
    """The quality test's RBF SVM on the real 8x8 digits, with sigmoid-calibrated (Platt) probabilities."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    return CalibratedClassifierCV(SVC(gamma=0.001, C=10.0), ensemble=False).fit(digits.data, digits.target)


def digit_probabilities(images: np.ndarray) -> np.ndarray:
    """(N, 10) class probabilities of uint8 NHWC images, read as the quality test reads them."""
    from pipeline.demo_model import digit_features

    return _probabilistic_classifier().predict_proba(digit_features(images))


def digit_predictions(images: np.ndarray) -> np.ndarray:
    from pipeline.demo_model import _digit_classifier, digit_features

    return _digit_classifier().predict(digit_features(images))
