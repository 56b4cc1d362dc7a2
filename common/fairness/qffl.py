"""q-FFL aggregation (q-FedAvg) as a pure function: a per-client fairness mitigation.

Reference: T. Li, M. Sanjabi, A. Beirami, V. Smith, "Fair Resource Allocation in Federated
Learning", ICLR 2020 (Algorithm 2, q-FedAvg). q-FFL minimises Σ_k p_k F_k^(q+1) / (q+1): the
larger q, the more the clients with a high loss weigh in the aggregate; q = 0 is FedAvg.

Design notes for the strategy that will use this (server/strategy.py):

* What clients must send. q-FFL weighs client k by F_k, *its own* loss on the global model it
  received, measured before local training. Flower's ``QFedAvg`` uses one server-side
  evaluation loss for every client instead, which removes the per-client re-weighting. Our
  clients will report F_k in their fit metrics (their users' mean training loss on the
  received global model): a per-client scalar sent in clear, outside the ε accounting, like
  the ``train_loss`` already sent. Budget-refused clients (zero update, ``train_loss`` NaN)
  must be left out before calling ``qffl_step``, which rejects non-finite losses.
* No SecAgg+. The update needs each client's own update w̄_k (for ||Δw_k||² and the F_k^q
  weight): under SecAgg+ the server only sees the sum, so q-FFL cannot run there. The
  strategy must refuse ``secagg=secaggplus`` with q > 0 (this also rules out
  ``privacy.noise=distributed``, which runs under SecAgg+).
* Local DP (``privacy.noise=local``). Each client's update is already DP (per-client DP-SGD),
  so re-weighting the updates is post-processing: no extra privacy cost, apart from the loss
  scalars F_k, which are not covered by the accountant (like ``train_loss``).
* Central DP (``privacy.noise=central``) is a different matter, for the lead to decide: the
  server noise of DP-FedAvg is sized for a mean of K clipped updates (sensitivity C/K), and
  q-FFL weights can give one client up to F_k^q / Σ_j F_j^q of the step, and the weights
  themselves depend on the (non-private) losses, so q > 0 would need its own analysis there.

Parametrisation. L = ``lipschitz`` is the paper's Lipschitz-constant estimate, = 1 / learning
rate in the paper's and Flower's code (``QFedAvg(qffl_learning_rate=...)``). At q = 0 it drops
out; for q > 0 it sets the step size (see ``qffl_step``).
"""

from __future__ import annotations

import math

import numpy as np

# Added to every loss before raising it to a power, as Flower's QFedAvg does: with q < 1 the
# term F_k^(q−1) of h_k divides by zero when a client's loss is exactly 0.
LOSS_EPSILON = 1e-10


def qffl_step(
    weights_before: list[np.ndarray],
    client_weights: list[list[np.ndarray]],
    losses: list[float],
    q: float,
    lipschitz: float,
) -> list[np.ndarray]:
    """One q-FFL server update (q-FedAvg, Li et al., ICLR 2020, Algorithm 2).

    With w = ``weights_before`` (the global model sent to the clients), w̄_k =
    ``client_weights[k]`` (client k's weights after local training), F_k = ``losses[k]``
    (client k's loss on w, before local training; F_k + 1e-10 is used, see ``LOSS_EPSILON``)
    and L = ``lipschitz``::

        Δw_k = L (w − w̄_k)
        Δ_k  = F_k^q Δw_k
        h_k  = q F_k^(q−1) ||Δw_k||² + L F_k^q        (||·|| over all layers together)
        w_new = w − Σ_k Δ_k / Σ_k h_k

    q = 0 is plain FedAvg with equal client weights and step 1: F_k^0 = 1 gives h_k = L and
    Δ_k = L (w − w̄_k), so w_new = w − Σ_k L (w − w̄_k) / (K L) = w − (w − mean_k w̄_k) =
    mean_k w̄_k. (Equal weights: *not* our strategy's mean weighted by ``num_examples``.)

    For q > 0, in the terms of the client updates u_k = w̄_k − w:
    w_new − w = Σ_k F_k^q u_k / Σ_k (q F_k^(q−1) L ||u_k||² + F_k^q). Clients with a larger
    loss get a larger share of the direction, and the L ||u_k||² term shrinks the step; as q
    grows that term dominates and the step tends to 0 (a large L, or large local updates, do
    the same).

    Computed in float64; each result layer has the dtype of ``weights_before``'s layer when that
    is a float dtype (float32 stays float32), float64 otherwise. Raises ValueError on q < 0,
    lipschitz <= 0, mismatched lengths or shapes, or negative / non-finite losses or weights.
    """
    q, lipschitz = _check_scalars(q, lipschitz)
    _check_shapes(weights_before, client_weights, losses)
    w = [np.asarray(layer, dtype=np.float64) for layer in weights_before]
    # Δw_k = L (w − w̄_k), per client and layer; ||Δw_k||² over all layers.
    dw = [[lipschitz * (a - np.asarray(b, dtype=np.float64)) for a, b in zip(w, client)] for client in client_weights]
    for k, client in enumerate(dw):
        for i, layer in enumerate(client):
            if not np.all(np.isfinite(layer)):
                raise ValueError(f"client_weights[{k}][{i}] has non-finite values (or w − w̄_k overflows)")
    sq_norms = [sum(float(np.sum(layer * layer)) for layer in client) for client in dw]
    f = np.asarray(losses, dtype=np.float64) + LOSS_EPSILON
    # Δ_k and h_k both divided by F_max^q (exact: it cancels in Σ Δ_k / Σ h_k), so that F^q
    # neither overflows for large losses and q nor underflows for tiny ones.
    f_max = float(f.max())
    r = f / f_max
    coef = r**q  # F_k^q / F_max^q
    hs = q * r ** (q - 1.0) * np.asarray(sq_norms) / f_max + lipschitz * coef
    total_h = float(hs.sum())
    if not (math.isfinite(total_h) and total_h > 0.0):
        raise ValueError(f"Σ h_k = {total_h}: the q-FFL step is undefined (q={q}, lipschitz={lipschitz})")
    new = []
    for i, layer in enumerate(w):
        step = sum(c * client[i] for c, client in zip(coef, dw)) / total_h
        out = layer - step
        dtype = np.asarray(weights_before[i]).dtype
        new.append(out.astype(dtype if np.issubdtype(dtype, np.floating) else np.float64))
    return new


def _check_scalars(q: float, lipschitz: float) -> tuple[float, float]:
    q, lipschitz = float(q), float(lipschitz)
    if not (math.isfinite(q) and q >= 0.0):
        raise ValueError(f"q={q} must be a finite number >= 0 (q = 0 is FedAvg)")
    if not (math.isfinite(lipschitz) and lipschitz > 0.0):
        raise ValueError(f"lipschitz={lipschitz} must be a finite number > 0 (L = 1 / learning rate)")
    return q, lipschitz


def _check_shapes(weights_before, client_weights, losses) -> None:
    if not client_weights:
        raise ValueError("client_weights is empty: q-FFL needs at least one client")
    if len(losses) != len(client_weights):
        raise ValueError(f"{len(losses)} losses for {len(client_weights)} clients")
    for k, loss in enumerate(losses):
        if not (math.isfinite(float(loss)) and float(loss) >= 0.0):
            raise ValueError(f"losses[{k}]={loss} must be finite and >= 0")
    for k, client in enumerate(client_weights):
        if len(client) != len(weights_before):
            raise ValueError(f"client_weights[{k}] has {len(client)} layers, weights_before {len(weights_before)}")
        for i, (a, b) in enumerate(zip(weights_before, client)):
            if np.shape(a) != np.shape(b):
                raise ValueError(f"client_weights[{k}][{i}] has shape {np.shape(b)}, weights_before[{i}] {np.shape(a)}")
