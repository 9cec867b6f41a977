"""lmc: a compiler for language-model architectures, from Python.

Compile a model written in a ``.model`` file in memory (``lmc.compile``) or load a library built
by ``lmc compile`` (``lmc.load``), bind it to a Hugging Face checkpoint, and call it with numpy
arrays or torch tensors::

    import lmc, numpy as np
    m = lmc.compile("models/bert.model:BertModel", weights="tests/fixtures/bert_tiny")
    out = m(input_ids=np.array([[101, 7592, 102]]), attention_mask=np.ones((1, 3), np.int64))
    out["last_hidden_state"].shape          # (1, 3, 32)

``lmc.generate``, ``lmc.train``, ``lmc.grad`` and ``lmc.ab`` run lmc's commands of the same
names in this process: their keyword arguments are the commands' options in snake case (the
names of Hugging Face's ``TrainingArguments`` for training). ``lmc.check`` returns the checker's
diagnostics as objects. Failures are exceptions: ``CompileError`` (with ``diagnostics``),
``InputError`` and ``WeightsError`` (naming the tensor), ``LmcError`` for the rest.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import _lmc
from ._lmc import (
    CompileError,
    Diagnostic,
    InputError,
    LmcError,
    LmcWarning,
    Tokenizer,
    WeightsError,
)
from ._safetensors import read_safetensors, read_safetensors_metadata, write_safetensors

__version__: str = _lmc.__version__

__all__ = [
    "ABResult",
    "CompileError",
    "Decoder",
    "Diagnostic",
    "Generation",
    "InputError",
    "LmcError",
    "LmcWarning",
    "Model",
    "Tokenizer",
    "TrainResult",
    "WeightsError",
    "ab",
    "check",
    "compile",
    "generate",
    "grad",
    "load",
    "read_safetensors",
    "read_safetensors_metadata",
    "train",
    "write_safetensors",
]

PathLike = Union[str, "os.PathLike[str]"]

_NUMPY_DTYPES = {"f32": np.float32, "i64": np.int64, "i32": np.int32}


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def _set_args(set: Optional[Mapping[str, Any]]) -> List[str]:
    """``{"hidden_size": 256, "use_cache": False}`` as ``KEY=VALUE`` overrides."""
    out = []
    for key, value in (set or {}).items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        out.append(f"{key}={value}")
    return out


def _set_options(set: Optional[Mapping[str, Any]]) -> List[str]:
    """The overrides as a command's options: ``--set KEY=VALUE`` each."""
    return [arg for kv in _set_args(set) for arg in ("--set", kv)]


def _fspath(p: Optional[PathLike]) -> Optional[str]:
    return None if p is None else os.fspath(p)


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of a model: its name, dtype (numpy's name) and shape (symbols as
    strings, such as ``"B"`` and ``"T"``); ``default`` says how an input left out is made."""

    name: str
    dtype: str
    shape: tuple
    default: Optional[str] = None


def _specs(entries: Iterable[Mapping[str, Any]]) -> List[TensorSpec]:
    names = {"f32": "float32", "i64": "int64", "i32": "int32"}
    out = []
    for e in entries:
        shape = tuple(d if isinstance(d, int) else d.get("symbol", d) if isinstance(d, dict) else d for d in e["shape"])
        default = e.get("default")
        out.append(TensorSpec(e["name"], names.get(e["dtype"], e["dtype"]), shape, None if default is None else str(default)))
    return out


class Model:
    """A compiled model bound to its weights (from ``lmc.compile`` or ``lmc.load``).

    Call it with its inputs by name, as numpy arrays or torch tensors (CPU); it returns a dict
    of its outputs, numpy arrays (torch tensors when any input was a torch tensor) that own the
    runtime's buffers (no copy). Python lists are taken as the dtype the model expects. The GIL
    is released while kernels run, so threads may call models at once.
    """

    def __init__(self, native: "_lmc.Model") -> None:
        self._native = native
        self._manifest: Dict[str, Any] = json.loads(native.manifest_json)
        self._dtypes = {e["name"]: _NUMPY_DTYPES.get(e["dtype"]) for e in self._manifest["inputs"]}

    @property
    def inputs(self) -> List[TensorSpec]:
        return _specs(self._manifest["inputs"])

    @property
    def outputs(self) -> List[TensorSpec]:
        return _specs(self._manifest["outputs"])

    @property
    def manifest(self) -> Dict[str, Any]:
        """The module's manifest: inputs, outputs, parameters, symbols, decode step."""
        return self._manifest

    @property
    def config(self) -> Optional[Dict[str, Any]]:
        """The configuration as a checkpoint's config.json states it (``None`` for a library)."""
        text = self._native.config_json
        return None if text is None else json.loads(text)

    @property
    def name(self) -> str:
        return self._manifest.get("model", "")

    @property
    def is_decode_step(self) -> bool:
        """Whether this is a decode step (``decode=`` or ``lmc compile --decode``)."""
        return self._manifest.get("decode") is not None

    @property
    def weights_dtype(self) -> Optional[str]:
        return self._native.weights_dtype

    @property
    def unused_tensors(self) -> List[str]:
        return self._native.unused_tensors

    def _host(self, name: str, value: Any) -> Any:
        if _is_torch(value):
            return value.detach().contiguous()
        if isinstance(value, np.ndarray):
            return np.ascontiguousarray(value)
        if hasattr(value, "__dlpack__") or isinstance(value, (str, bytes)):
            return value  # the native half takes it, or says it is not a tensor
        try:
            return np.ascontiguousarray(np.asarray(value, dtype=self._dtypes.get(name)))
        except (TypeError, ValueError) as e:
            raise InputError(f'input "{name}": cannot make a tensor of this {type(value).__name__}: {e}') from None

    def _feed(self, inputs: Mapping[str, Any]) -> Dict[str, Any]:
        return {name: self._host(name, value) for name, value in inputs.items()}

    def __call__(self, feed: Optional[Mapping[str, Any]] = None, /, **inputs: Any) -> Dict[str, Any]:
        if feed is not None:
            inputs = {**feed, **inputs}
        to_torch = any(_is_torch(v) for v in inputs.values())
        outputs = self._native.run(self._feed(inputs))
        return {name: _from_dlpack(t, to_torch) for name, t in outputs}

    def __repr__(self) -> str:
        return f"<lmc.Model {self.name} from {self._native.source}>"


def _from_dlpack(t: "_lmc.Tensor", to_torch: bool) -> Any:
    if to_torch:
        import torch

        return torch.from_dlpack(t)
    return np.from_dlpack(t)


def compile(
    model: PathLike,
    weights: Optional[PathLike] = None,
    *,
    random_weights: bool = False,
    seed: Optional[int] = None,
    config: Optional[PathLike] = None,
    set: Optional[Mapping[str, Any]] = None,
    strict: bool = False,
    given: Sequence[str] = (),
    decode: Optional[int] = None,
    threads: Optional[int] = None,
    device: str = "cpu",
) -> Model:
    """Compiles ``FILE[:MODEL]`` in memory (MLIR and LLVM, as ``lmc run`` does) and binds it to
    ``weights``: a ``save_pretrained`` directory (its config.json configures the model) or a
    safetensors file; or ``random_weights=True`` (seeded by ``seed``).

    ``config`` is a config.json (or a directory with one); ``set`` overrides config values
    (``{"hidden_size": 256}``); ``strict`` makes a checkpoint key that the model assumes
    otherwise an error. ``given`` names inputs declared ``= absent`` to compile in (``labels``).
    ``decode=N`` compiles the decode step the compiler derives, with caches for N positions (for
    ``Decoder`` and ``generate``). ``threads`` is the kernels' thread count for every call.
    Raises ``CompileError`` with the diagnostics when the file does not check.
    """
    native = _lmc.compile(
        os.fspath(model),
        _fspath(weights),
        random_weights=random_weights,
        seed=seed,
        config=_fspath(config),
        set=_set_args(set),
        strict=strict,
        given=list(given),
        decode=decode,
        threads=threads,
        device=device,
    )
    return Model(native)


def load(
    library: PathLike,
    weights: Optional[PathLike] = None,
    *,
    random_weights: bool = False,
    seed: Optional[int] = None,
    threads: Optional[int] = None,
) -> Model:
    """Loads a shared library built by ``lmc compile`` and binds it to ``weights`` (or random
    weights). The model keeps the library loaded for as long as it lives."""
    native = _lmc.load(os.fspath(library), _fspath(weights), random_weights=random_weights, seed=seed, threads=threads)
    return Model(native)


class Decoder:
    """One batch of sequences decoded step by step with a decode step (``lmc.compile(...,
    decode=N)``): the runtime keeps the caches. The first ``step`` takes the prompts; each later
    one appends tokens. An encoder-decoder takes its encoder's inputs as ``context``."""

    def __init__(self, model: Model, batch: int = 1, context: Optional[Mapping[str, Any]] = None) -> None:
        self.model = model
        self._native = _lmc.Decoder(model._native, batch, None if context is None else model._feed(context))

    def step(self, tokens: Any, attention_mask: Any = None) -> Any:
        """Appends ``tokens`` (``[batch, n]``; a flat list for one sequence) and returns the
        logits of those positions, ``[batch, n, vocab]``. ``attention_mask`` (``[batch, n]``, 0
        for padding) marks a left-padded prompt: the padding is never attended to, and each
        row's position ids count its own tokens."""
        to_torch = _is_torch(tokens)
        ids = _array(tokens)
        if ids.ndim == 1:
            ids = ids.reshape(1, -1)
        if ids.ndim != 2 or ids.shape[0] != self.batch:
            raise InputError(f"tokens: expected [batch={self.batch}, n], got shape {tuple(ids.shape)}")
        mask = None if attention_mask is None else _array(attention_mask).reshape(-1).tolist()
        return _from_dlpack(self._native.step(ids.reshape(-1).tolist(), int(ids.shape[1]), mask), to_torch)

    @property
    def position(self) -> int:
        return self._native.position

    @property
    def capacity(self) -> int:
        return self._native.capacity

    @property
    def batch(self) -> int:
        return self._native.batch


@dataclass
class Generation:
    """What ``generate`` produced: ``sequences`` (``[batch, prompt + new]``, as transformers'
    ``generate`` returns them: an encoder-decoder's start with its decoder start token),
    ``new_tokens`` (``[batch, new]``), and ``text`` (one string per sequence) when a tokenizer
    was at hand."""

    sequences: np.ndarray
    new_tokens: np.ndarray
    text: Optional[List[str]] = None


def _tokenizer(tokenizer: Union[None, PathLike, Tokenizer], weights: Optional[PathLike]) -> Optional[Tokenizer]:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if tokenizer is not None:
        return Tokenizer(os.fspath(tokenizer))
    if weights is not None and Path(weights).is_dir() and (Path(weights) / "tokenizer.json").is_file():
        return Tokenizer(os.fspath(Path(weights) / "tokenizer.json"))
    return None


def _array(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if _is_torch(x) else x, dtype=np.int64)


def _is_ragged(rows: Any) -> bool:
    """Whether ``rows`` is a list of token-id rows of different lengths."""
    return isinstance(rows, (list, tuple)) and len({len(r) for r in rows if isinstance(r, (list, tuple, np.ndarray))}) > 1


def _prompts(input_ids: Any, prompt: Union[None, str, Sequence[str]], tok: Optional[Tokenizer], attention_mask: Any) -> "tuple[np.ndarray, np.ndarray]":
    """The prompts as ``[batch, length]`` ids and their attention mask: rows of different
    lengths left-padded (with 0, masked), as a tokenizer pads them for generation."""
    if (input_ids is None) == (prompt is None):
        raise LmcError("give the prompt as input_ids (token ids) or prompt (text), one of them")
    if prompt is not None:
        if tok is None:
            raise LmcError("prompt= is text: give tokenizer= (a tokenizer.json), or weights= a checkpoint directory with one")
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        rows = [tok.encode(t) for t in texts]
    elif _is_ragged(input_ids):
        if attention_mask is not None:
            raise LmcError("rows of different lengths are padded here: give attention_mask only with padded input_ids")
        rows = [[int(i) for i in r] for r in input_ids]
    else:
        ids = _array(input_ids)
        ids = ids.reshape(1, -1) if ids.ndim == 1 else ids
        if attention_mask is None:
            return ids, np.ones_like(ids)
        mask = _array(attention_mask)
        if mask.size != ids.size or not np.isin(mask, (0, 1)).all():
            raise LmcError(f"attention_mask must be 0 (padding) or 1 (a token) for each of the {ids.shape} input_ids")
        return ids, mask.reshape(ids.shape)
    if not rows or any(len(r) == 0 for r in rows):
        raise LmcError("every prompt needs at least one token")
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for b, r in enumerate(rows):
        ids[b, width - len(r) :] = r
        mask[b, width - len(r) :] = 1
    return ids, mask


def _unpadded(ids: np.ndarray, mask: np.ndarray) -> List[List[int]]:
    """Each row's tokens without its left padding; padding anywhere else is an error."""
    rows = []
    for b in range(ids.shape[0]):
        pads = int(np.argmax(mask[b] == 1)) if mask[b].any() else ids.shape[1]
        if pads == ids.shape[1] or not (mask[b, pads:] == 1).all():
            raise LmcError(f"row {b} of attention_mask is not left padding (zeros, then ones): pad on the left (padding_side=\"left\")")
        rows.append([int(i) for i in ids[b, pads:]])
    return rows


def generate(
    model: Union[Model, PathLike],
    input_ids: Any = None,
    *,
    prompt: Union[None, str, Sequence[str]] = None,
    tokenizer: Union[None, PathLike, Tokenizer] = None,
    max_new_tokens: int = 20,
    weights: Optional[PathLike] = None,
    random_weights: bool = False,
    eos_token_id: Union[None, int, Sequence[int]] = None,
    pad_token_id: Optional[int] = None,
    do_sample: Optional[bool] = None,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    decoder_start_token_id: Optional[int] = None,
    config: Optional[PathLike] = None,
    set: Optional[Mapping[str, Any]] = None,
    threads: Optional[int] = None,
    context: Optional[Mapping[str, Any]] = None,
    attention_mask: Any = None,
) -> Generation:
    """Decodes from a prompt: token ids (``input_ids``: one sequence, ``[batch, length]``, or
    rows of different lengths) or text (``prompt``, one or several, with ``tokenizer`` or the
    checkpoint's tokenizer.json). Prompts of different lengths are left-padded (or come
    left-padded, with their ``attention_mask``, as a tokenizer pads them for generation): the
    padding is masked and each row's position ids count its own tokens, as transformers'
    ``generate`` does, for models that take ``position_ids``. ``sequences`` holds the padded
    prompts and the new tokens.

    ``model`` is a model file (``FILE[:MODEL]`` with ``weights``): ``lmc generate`` runs in this
    process, with the checkpoint's generation_config.json and config.json as it reads them
    (end-of-sequence and padding tokens, sampling settings, an encoder-decoder's start token),
    its caches sized for the prompt and the new tokens; ``do_sample`` left out follows
    generation_config.json, as transformers does. Or ``model`` is a decode step
    (``lmc.compile(..., decode=N)``), compiled once for many calls: greedy unless
    ``do_sample=True``, stopping at ``eos_token_id`` (the model config's by default).
    """
    tok = _tokenizer(tokenizer, weights)
    prompts, mask = _prompts(input_ids, prompt, tok, attention_mask)
    rows = _unpadded(prompts, mask)
    if isinstance(model, Model):
        new = _generate_with_step(
            model, rows, max_new_tokens, eos_token_id, pad_token_id, bool(do_sample), temperature, top_k, top_p, seed, context
        )
        starts = prompts
    else:
        if context is not None:
            raise LmcError("context= is for a compiled decode step; with a model file, lmc generate fills an encoder's inputs itself")
        with tempfile.TemporaryDirectory(prefix="lmc-generate-") as tmp:
            args = ["generate", os.fspath(model), "--max-new-tokens", str(max_new_tokens)]
            args += ["--weights", os.fspath(weights)] if weights is not None else []
            args += ["--random-weights"] if random_weights else []
            if prompts.shape[0] == 1 and mask.all():
                args += ["--input-ids", ",".join(str(int(i)) for i in prompts[0])]
            else:
                path = os.path.join(tmp, "prompts.safetensors")
                write_safetensors(path, {"input_ids": prompts} if mask.all() else {"input_ids": prompts, "attention_mask": mask})
                args += ["--inputs", path]
            args += _options(
                eos_token_id=None if eos_token_id is None else _one_eos(eos_token_id),
                do_sample=do_sample is True,
                greedy=do_sample is False,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed,
                decoder_start_token_id=decoder_start_token_id,
                config=config,
                threads=threads,
            )
            if pad_token_id is not None:
                raise LmcError("pad_token_id= is for a compiled decode step; lmc generate takes it from generation_config.json")
            args += _set_options(set)
            out = os.path.join(tmp, "sequences.safetensors")
            report = os.path.join(tmp, "generate.json")
            _lmc.run_command(args + ["-o", out, "--json", report])
            sequences = read_safetensors(out)["sequences"]
            with open(report, encoding="utf-8") as f:
                new_count = int(json.load(f)["new_tokens"])
        width = sequences.shape[1]
        starts = sequences[:, : width - new_count]
        new = sequences[:, width - new_count :]
    sequences = np.concatenate([starts, new], axis=1)
    text = None
    if tok is not None:
        text = [tok.decode([int(i) for i in row]) for row in sequences]
    return Generation(sequences=sequences, new_tokens=new, text=text)


def _one_eos(eos: Union[int, Sequence[int]]) -> int:
    if isinstance(eos, int):
        return eos
    ids = list(eos)
    if len(ids) != 1:
        raise LmcError("a model file's generate takes one eos_token_id; compile a decode step to stop at several")
    return int(ids[0])


def _generate_with_step(
    model: Model,
    prompts: List[List[int]],
    max_new_tokens: int,
    eos_token_id: Union[None, int, Sequence[int]],
    pad_token_id: Optional[int],
    do_sample: bool,
    temperature: Optional[float],
    top_k: Optional[int],
    top_p: Optional[float],
    seed: Optional[int],
    context: Optional[Mapping[str, Any]],
) -> np.ndarray:
    if not model.is_decode_step:
        raise LmcError(f"{model.name} is a forward; compile its decode step with lmc.compile(..., decode=N) to generate")
    config = model.config or {}
    if eos_token_id is None:
        eos_token_id = config.get("eos_token_id")
    eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else [int(e) for e in eos_token_id]
    if pad_token_id is None and isinstance(config.get("pad_token_id"), int):
        pad_token_id = config["pad_token_id"]
    if not do_sample and (temperature, top_k, top_p, seed) != (None, None, None, None):
        raise LmcError("temperature, top_k, top_p and seed are for sampling: pass do_sample=True")
    tokens = model._native.generate(
        prompts,
        max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad_token_id,
        do_sample=do_sample,
        temperature=1.0 if temperature is None else float(temperature),
        top_k=0 if top_k is None else int(top_k),
        top_p=1.0 if top_p is None else float(top_p),
        seed=0 if seed is None else int(seed),
        context=None if context is None else model._feed(context),
    )
    width = max(len(t) for t in tokens)
    return np.asarray([t + [t[-1]] * (width - len(t)) for t in tokens], dtype=np.int64)


def _options(**options: Any) -> List[str]:
    """Keyword arguments as a command's options: ``max_steps=10`` → ``--max-steps 10``, ``True``
    → the flag alone, ``False`` and ``None`` → nothing, a list → the option repeated."""
    args: List[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            args += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, os.PathLike):
            args += [flag, os.fspath(value)]
        else:
            args += [flag, str(value)]
    return args


@dataclass
class TrainResult:
    """What ``train`` did: where it saved (``output_dir``, and each ``checkpoint-STEP``
    directory), and its log, one record per logged step (``step``, ``loss``,
    ``learning_rate``, ``grad_norm``, ``tokens_per_s``, ``step_s``, ``activation_bytes``,
    ``cached_buffer_bytes``, and ``eval_loss`` where evaluated)."""

    output_dir: Path
    log: List[Dict[str, Any]] = field(default_factory=list)
    checkpoints: List[Path] = field(default_factory=list)

    @property
    def losses(self) -> List[float]:
        return [r["loss"] for r in self.log if "loss" in r]


def train(
    model: PathLike,
    *,
    data: PathLike,
    output_dir: Optional[PathLike] = None,
    weights: Optional[PathLike] = None,
    random_weights: bool = False,
    set: Optional[Mapping[str, Any]] = None,
    **training_args: Any,
) -> TrainResult:
    """Trains ``FILE[:MODEL]`` as ``lmc train`` does, in this process: from ``weights`` (a
    checkpoint) or ``random_weights=True``, on ``data`` (a text file, or a safetensors file of
    batches), saving checkpoints that transformers loads into ``output_dir``.

    The other keyword arguments are ``lmc train``'s options, named as Hugging Face's
    ``TrainingArguments`` names them: ``max_steps``, ``per_device_train_batch_size``,
    ``learning_rate``, ``weight_decay``, ``lr_scheduler_type``, ``warmup_steps``, ``seed``,
    ``eval_data``, ``eval_steps``, ``save_steps``, ``seq_len``, ``tokenizer``, ``no_dropout``,
    ``resume``... Ctrl-C stops at the next step and saves it.
    """
    log_json = training_args.pop("log_json", None)
    with tempfile.TemporaryDirectory(prefix="lmc-train-") as tmp:
        log_path = os.fspath(log_json) if log_json is not None else os.path.join(tmp, "log.jsonl")
        args = ["train", os.fspath(model), "--data", os.fspath(data)]
        args += _options(output_dir=output_dir, weights=weights, random_weights=random_weights, log_json=log_path, **training_args)
        args += _set_options(set)
        _lmc.run_command(args)
        with open(log_path, encoding="utf-8") as f:
            log = [json.loads(line) for line in f if line.strip()]
    resume = training_args.get("resume")
    # As the command: the output directory defaults to the --resume directory.
    out = Path(output_dir) if output_dir is not None else Path(resume) if resume is not None else Path(".")
    checkpoints = sorted(
        (p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return TrainResult(output_dir=out, log=log, checkpoints=checkpoints)


def grad(
    model: PathLike,
    inputs: Union[PathLike, Mapping[str, Any]],
    *,
    weights: Optional[PathLike] = None,
    random_weights: bool = False,
    seed: Optional[int] = None,
    config: Optional[PathLike] = None,
    set: Optional[Mapping[str, Any]] = None,
    output: Optional[PathLike] = None,
) -> Dict[str, np.ndarray]:
    """The loss and the gradient of every checkpoint tensor, as ``lmc grad`` computes them (the
    backward pass derived from the model), for ``inputs``: a safetensors file, or a dict of
    arrays (``input_ids``, ``labels``...). Returns ``{"loss": ..., "<tensor name>": ...}``;
    ``output`` keeps the safetensors file too."""
    with tempfile.TemporaryDirectory(prefix="lmc-grad-") as tmp:
        if isinstance(inputs, Mapping):
            path = os.path.join(tmp, "inputs.safetensors")
            write_safetensors(path, {k: v.detach().cpu().numpy() if _is_torch(v) else np.asarray(v) for k, v in inputs.items()})
            inputs = path
        out = os.fspath(output) if output is not None else os.path.join(tmp, "grads.safetensors")
        args = ["grad", os.fspath(model), "--inputs", os.fspath(inputs), "-o", out]
        args += _options(weights=weights, random_weights=random_weights, seed=seed, config=config)
        args += _set_options(set)
        _lmc.run_command(args)
        return read_safetensors(out)


class ABResult(list):
    """The records of an A/B comparison, one per variant and size (as ``lmc ab --csv`` writes
    them: latency, throughput, ratio against the first variant with its interval, drift, loss),
    a list of dicts ready for ``pandas.DataFrame``; ``report`` is the whole JSON report."""

    report: Dict[str, Any]

    def dataframe(self) -> Any:
        """The records as a pandas ``DataFrame`` (pandas must be installed)."""
        try:
            import pandas
        except ImportError as e:
            raise ImportError("ABResult.dataframe() needs pandas: pip install pandas") from e
        return pandas.DataFrame(list(self))


def _number(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def ab(*variants: PathLike, **options: Any) -> ABResult:
    """Compares variants as ``lmc ab`` does, in this process: ``FILE:MODEL`` variants (with
    ``weights=`` or ``random_weights=True``, ``lengths=[32, 128]``, ``batch=``, ``runs=``...), or
    one experiment file (YAML). An experiment with a ``train`` section trains every variant over
    its seeds and compares held-out loss (``out=`` keeps its runs; ``shard="0/4"`` runs a
    quarter). Returns the records; ``html=`` also writes the report page."""
    if not variants:
        raise LmcError("give the variants (FILE:MODEL ...) or one experiment file")
    set = options.pop("set", None)
    with tempfile.TemporaryDirectory(prefix="lmc-ab-") as tmp:
        json_path = os.fspath(options.pop("json", None) or os.path.join(tmp, "ab.json"))
        csv_path = os.fspath(options.pop("csv", None) or os.path.join(tmp, "ab.csv"))
        args = ["ab", *[os.fspath(v) for v in variants]]
        args += _options(json=json_path, csv=csv_path, **options)
        args += _set_options(set)
        _lmc.run_command(args)
        with open(json_path, encoding="utf-8") as f:
            report = json.load(f)
        with open(csv_path, encoding="utf-8", newline="") as f:
            records = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    result = ABResult(records)
    result.report = report
    return result


def check(path: Union[PathLike, Sequence[PathLike]], config: Optional[PathLike] = None) -> List[Diagnostic]:
    """Checks every model and variant of a file (or every ``*.model`` under a directory) as
    ``lmc check`` does; returns its diagnostics (errors and warnings, each with ``file``,
    ``line``, ``column``, ``code``, ``message``, ``help`` and the ``rendered`` text). An empty
    list: the file checks."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return _lmc.check([os.fspath(p) for p in paths], _fspath(config))
