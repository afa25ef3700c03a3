"""PCA as a projection method (scikit-learn): the first two principal components of the features.

The linear baseline: what a map shows beyond it is what UMAP or t-SNE add. Deterministic (the signs are
fixed by scikit-learn's `svd_flip`), so `attach` refits on a stored map's rows and gets the same axes, into
which `transform` projects appended samples exactly. The metric does not enter the map (it still governs
neighbours and the map's quality figures).
"""

from __future__ import annotations

import numpy as np

from pipeline.methods import Method


class PCA(Method):
    name = "pca"
    title = "PCA"

    def _pca(self, X):
        from sklearn.decomposition import PCA as SkPCA

        X = np.asarray(X, dtype=np.float32)
        if len(X) < 2 or X.shape[1] < 1:
            raise ValueError(f"PCA needs at least 2 samples, got {len(X)}")
        k = min(2, X.shape[1], len(X))
        return SkPCA(n_components=k, svd_solver="full" if X.shape[1] <= 500 else "auto",
                     random_state=self.seed or 0).fit(X)

    def _xy(self, X) -> np.ndarray:
        z = self._model.transform(np.asarray(X, dtype=np.float32)).astype(np.float32)
        return z if z.shape[1] == 2 else np.column_stack([z, np.zeros(len(z), np.float32)])

    def fit(self, X, knn=None, init=None) -> PCA:
        self._model = self._pca(X)
        self.embedding_ = self._xy(X)
        return self

    def attach(self, X, xy) -> PCA:
        super().attach(X, xy)
        self._model = self._pca(X)
        return self

    def transform(self, X_new):
        return self._xy(X_new) if len(X_new) else np.zeros((0, 2), np.float32)

    def tag(self) -> str:
        return "pca2d"
