"""t-SNE as a projection method (openTSNE): FFT-accelerated gradients, and a `transform` for new points.

``fit`` builds perplexity-based affinities on the projector's kNN graph (``3 * perplexity`` neighbours, as
openTSNE chooses) when one is given, starts from the PCA of X (rescaled, openTSNE's default) and optimises
with openTSNE's defaults (250 early-exaggeration iterations, then 500). ``transform`` places new rows with
openTSNE's own method: affinities of the new rows to the fitted ones (an exact search), started at their
neighbours' median and optimised with the fitted points fixed. `attach` rebuilds those affinities from a
stored map's rows, so appended samples are placed in a fresh process too.
"""

from __future__ import annotations

import numpy as np

from pipeline.methods import Method, Param


class TSNE(Method):
    name = "tsne"
    title = "t-SNE"
    PARAMS = {
        "perplexity": Param(30.0, 2.0, 100.0, "the effective number of neighbours each point attends to: small "
                            "values resolve small clusters, large ones keep more of the global layout", "p",
                            (5.0, 100.0), 1.0),
    }

    def knn_k(self, n: int) -> int:
        return min(n, int(3 * self.perplexity) + 1)

    def _affinities(self, X=None, knn=None):
        from openTSNE import affinity, nearest_neighbors

        if knn is not None:  # our graph, without each point itself (column 0)
            k = self.knn_k(len(knn[0])) - 1
            index = nearest_neighbors.PrecomputedNeighbors(np.ascontiguousarray(knn[0][:, 1:k + 1]),
                                                           np.ascontiguousarray(knn[1][:, 1:k + 1]))
            return affinity.PerplexityBasedNN(perplexity=self._perplexity(len(knn[0])), knn_index=index,
                                              random_state=self.seed, n_jobs=1)
        return affinity.PerplexityBasedNN(np.ascontiguousarray(X, dtype=np.float32),
                                          perplexity=self._perplexity(len(X)), method="exact", metric=self.metric,
                                          random_state=self.seed, n_jobs=1)

    def _perplexity(self, n: int) -> float:
        return min(self.perplexity, max(1.0, (n - 1) / 3))  # openTSNE needs 3 * perplexity < n

    def fit(self, X, knn=None, init=None) -> TSNE:
        import openTSNE
        from openTSNE import initialization

        X = np.ascontiguousarray(X, dtype=np.float32)
        if len(X) < 4:
            raise ValueError(f"t-SNE needs at least 4 samples, got {len(X)}")
        aff = self._affinities(X if knn is None else None, knn)
        start = initialization.pca(X, random_state=self.seed or 0) if init is None else \
            initialization.rescale(np.asarray(init, dtype=np.float64))
        tsne = openTSNE.TSNE(n_jobs=1, random_state=self.seed, verbose=False)
        self._embedding = tsne.fit(affinities=aff, initialization=start)
        self.embedding_ = np.asarray(self._embedding, dtype=np.float32)
        self._X = X
        return self

    def attach(self, X, xy) -> TSNE:
        import openTSNE

        super().attach(X, xy)
        self._embedding = openTSNE.TSNEEmbedding(np.asarray(xy, dtype=np.float64), self._affinities(self._X),
                                                 random_state=self.seed, n_jobs=1)
        return self

    def transform(self, X_new):
        X_new = np.ascontiguousarray(X_new, dtype=np.float32)
        if not len(X_new):
            return np.zeros((0, 2), np.float32)
        return np.asarray(self._embedding.transform(X_new), dtype=np.float32)

    def tag(self) -> str:
        return f"tsne-p{self.perplexity:g}"
