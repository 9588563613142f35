"""Paths and topology in parameter space, one module per method.

* :mod:`~lossatlas.paths.curves`: mode-connecting Bézier curves and polygonal chains (Garipov et al. 2018).
* :mod:`~lossatlas.paths.string`: dynamic string sampling (Freeman & Bruna 2017, Alg. 1).
* :mod:`~lossatlas.paths.align`: weight matching over hidden-unit permutations (Ainsworth et al. 2023).
* :mod:`~lossatlas.paths.topology`: sublevel-set topology of a stored grid (components, persistence, merge tree).
* :mod:`~lossatlas.paths.trajectory`, :mod:`~lossatlas.paths.pca`: training paths on their PCA plane (Li et al.).
* :mod:`~lossatlas.paths.barrier`: what they share: barrier heights and endpoint checks.
"""
