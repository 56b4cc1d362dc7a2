"""Moving the trainable adapter across the network and to disk.

Only trainable parameters cross the network, as a list of NumPy arrays in a fixed order
(the module's parameter order). On disk the adapter is ``adapter_model.safetensors`` plus
``adapter_config.json`` (PEFT's file names), written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch


def get_weights(model: torch.nn.Module) -> list[np.ndarray]:
    return [p.detach().cpu().numpy().copy() for p in model.parameters() if p.requires_grad]


def set_weights(model: torch.nn.Module, weights: list[np.ndarray]) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    if len(params) != len(weights):
        raise ValueError(f"adapter has {len(params)} tensors, received {len(weights)}")
    with torch.no_grad():
        for p, w in zip(params, weights):
            if tuple(p.shape) != tuple(w.shape):
                raise ValueError(f"adapter tensor shape {tuple(p.shape)} != received {tuple(w.shape)}")
            p.copy_(torch.as_tensor(w, dtype=p.dtype))


def num_bytes(weights: list[np.ndarray]) -> int:
    return int(sum(w.nbytes for w in weights))


def save_adapter(model: torch.nn.Module, config: dict, directory: str | Path) -> Path:
    """Write the adapter and the config needed to rebuild it; never leaves half-written files."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    tmp = out / f".adapter_model.{os.getpid()}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, out / "adapter_model.safetensors")
    tmp_cfg = out / f".adapter_config.{os.getpid()}.tmp"
    tmp_cfg.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp_cfg, out / "adapter_config.json")
    return out


def load_adapter(model: torch.nn.Module, directory: str | Path) -> dict:
    from safetensors.torch import load_file

    directory = Path(directory)
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # Frozen weights (the LM) are not part of an adapter; every trainable one must be.
    if set(tensors) != trainable:
        missing, extra = sorted(trainable - set(tensors)), sorted(set(tensors) - trainable)
        raise ValueError(
            f"{directory}: adapter does not match the model (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    model.load_state_dict(tensors, strict=False)
    return json.loads((directory / "adapter_config.json").read_text())
