"""Representation analysis: extraction, probes, similarity, PCA, Atlantis error, NI.

One module per job; each stage is a plain function of a spec and input paths that writes one
artifact directory (spec.yaml + manifest.json): `extract_representations` / `extract_run`
(reps), `run_probe` (probes), `cka_matrix` (cka), `pca_views` / `pca_timeline` (pca),
`atlantis_error` (atlantis), `ni_matrix` (improvement). Torch is imported only by extraction.
"""

from .atlantis import AtlantisSpec, atlantis_error
from .cka import CKASpec, cka_matrix, debiased_cka, linear_cka, mutual_knn
from .improvement import NISpec, ni_matrix, normalized_improvement
from .pca import PCA, PCASpec, pca_timeline, pca_views
from .probes import LinearProbe, ProbeSpec, RidgeCVProbe, RidgeProbe, run_probe
from .reps import RepSpec, extract_representations, extract_run, load_reps

__all__ = [
    "PCA", "AtlantisSpec", "CKASpec", "LinearProbe", "NISpec", "PCASpec", "ProbeSpec",
    "RepSpec", "RidgeCVProbe", "RidgeProbe", "atlantis_error", "cka_matrix", "debiased_cka",
    "extract_representations", "extract_run", "linear_cka", "load_reps", "mutual_knn",
    "ni_matrix", "normalized_improvement", "pca_timeline", "pca_views", "run_probe",
]
