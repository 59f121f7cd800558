"""Similarity kernels between two SAEs: pure functions of decoders, encoders or codes.

``pw_mcc`` (Song et al. 2025), ``mmcs`` (Sharkey et al. 2022), ``shared_fraction``
(Paulo & Belrose 2025) and ``activation_mcc`` (MCC as in ICA) are defined in
:mod:`husai.metrics.stability`'s docstring. They sit below baselines and stability in the
import order (matching -> similarity -> baselines -> stability), so the random baselines
can call the very kernels they are baselines for without an import cycle.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from husai.metrics.inputs import as_decoder
from husai.metrics.matching import DENSE_MAX, cosine_matrix, match, match_scores, unit_rows


def pw_mcc(a: Any, b: Any, *, signed: bool = True) -> float:
    """Song et al. 2025 PW-MCC: Hungarian on signed cosine, all latents, mean over matches."""
    dec_a, dec_b = as_decoder(a), as_decoder(b)
    if dec_a.shape[0] * dec_b.shape[0] <= DENSE_MAX:
        dec_a, dec_b = dec_a.double(), dec_b.double()
    return match(dec_a, dec_b, signed=signed).mean


def mmcs(a: Any, b: Any) -> float:
    """Mean max |cosine|, both directions averaged (Sharkey et al. 2022)."""
    dec_a, dec_b = as_decoder(a), as_decoder(b)
    if dec_a.shape[0] == 0 or dec_b.shape[0] == 0:
        return 0.0
    abs_AB = cosine_matrix(dec_a, dec_b).abs()
    return 0.5 * float(
        abs_AB.max(dim=1).values.double().mean() + abs_AB.max(dim=0).values.double().mean()
    )


def shared_fraction(
    dec_a: Any, dec_b: Any, enc_a: Any = None, enc_b: Any = None, *, tau: float = 0.7
) -> float:
    """Share of matched pairs with decoder (and, if given, encoder) cosine >= tau."""
    m = match(as_decoder(dec_a), as_decoder(dec_b))
    if m.values.size == 0:
        return 0.0
    ok = m.values >= tau
    if enc_a is not None and enc_b is not None:
        e_a, e_b = unit_rows(as_decoder(enc_a)), unit_rows(as_decoder(enc_b))
        enc_cos = (e_a[torch.from_numpy(m.rows)] * e_b[torch.from_numpy(m.cols)]).sum(1).numpy()
        ok &= enc_cos >= tau
    return float(ok.mean())


def correlation_matrix(
    codes_a_NA: Float[Tensor, "N n_a"], codes_b_NB: Float[Tensor, "N n_b"]
) -> Float[Tensor, "n_a n_b"]:
    """Pearson correlation of every latent of A with every latent of B (0 for constant latents)."""
    z_a, z_b = _standardise(codes_a_NA), _standardise(codes_b_NB)
    return (z_a.T @ z_b) / max(1, z_a.shape[0])


def _standardise(codes_NS: Tensor) -> Tensor:
    x = torch.as_tensor(codes_NS).detach().to("cpu", torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    std = x.pow(2).mean(dim=0, keepdim=True).sqrt()
    return torch.where(std > 1e-12, x / torch.where(std > 1e-12, std, 1.0), torch.zeros_like(x))


def activation_mcc(codes_a_NA: Tensor, codes_b_NB: Tensor) -> float:
    """Hungarian matching on |Pearson correlation| of activations; mean over matched pairs."""
    if codes_a_NA.shape[0] != codes_b_NB.shape[0]:
        raise ValueError(
            f"codes must cover the same inputs: {codes_a_NA.shape[0]} vs {codes_b_NB.shape[0]}"
        )
    return match_scores(correlation_matrix(codes_a_NA, codes_b_NB).abs()).mean
