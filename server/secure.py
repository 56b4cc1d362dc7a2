"""Secure aggregation and distributed noise on the server: Flower's SecAgg+ fit workflow with
fedrec's settings, and the server's side of the pooled DP-SGD step."""

from __future__ import annotations

from flwr.server.workflow import SecAggPlusWorkflow

from common.model.factory import build_model
from common.privacy.plans import is_distributed, learning_rate, pooled_plan


def distributed_noise(cfg, run, initial) -> dict:
    """With privacy.noise=distributed the server owns the optimizer of the pooled DP-SGD."""
    if not is_distributed(cfg):
        return {}
    from common.privacy.distributed import ServerOptimizer

    plan = pooled_plan(cfg, run)
    names = [n for n, p in build_model(cfg, run).named_parameters() if p.requires_grad]
    return {
        "server_optimizer": ServerOptimizer(initial, learning_rate(cfg)),
        "gradient_scale": plan.send_scale / plan.expected_batch,  # clients sent sum / send_scale
        "prior": plan.prior,
        "loss_plan": plan,
        "prior_index": names.index("bias.weight") if plan.prior else None,
    }


def max_weight(cfg, run) -> float:
    """SecAgg+ weights are users per client; the largest must fit under max_weight. With
    distributed noise every weight is 1, and 1 keeps the quantization grid finest."""
    if is_distributed(cfg):
        return 1.0
    return float(cfg.secagg.max_weight or max(len(p) for p in run.partitions))


def fit_workflow(cfg, run):
    """Flower's SecAgg+ fit workflow for secagg=secaggplus; None = the plain default."""
    if not cfg.secagg.enabled:
        return None
    s = cfg.secagg
    return SecAggPlusWorkflow(
        num_shares=s.num_shares,
        reconstruction_threshold=s.reconstruction_threshold,
        max_weight=max_weight(cfg, run),
        clipping_range=float(s.clipping_range),
        quantization_range=int(s.quantization_range),
        modulus_range=int(s.modulus_range),
        timeout=s.timeout,
    )
