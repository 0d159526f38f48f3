"""ONNX Runtime inference for the item encoder: export once, cache by fingerprint, run fast on CPU.

The torch model (any BERT-family checkpoint, fine-tuned or not) is traced once to ONNX together
with its pooling and L2 normalisation, with dynamic batch and sequence axes. ONNX Runtime's
transformer optimizer then fuses the embedding layer norm, the attention blocks, bias + GELU and
the residual layer norms into single kernels. The graph is checked against the torch forward on a
padded probe batch before it is used: a graph that disagrees (cosine below ``MIN_COSINE``) or a
checkpoint that does not export raises :class:`OnnxUnavailable`, and the caller falls back to torch.

The exported file is cached as ``<fingerprint>-v<FORMAT>-<precision>.onnx`` in a folder of the
caller's choosing (``recsys embed`` uses ``artifacts/cache/onnx``), written atomically. Loading an
``.onnx`` file executes no code: it is a protobuf graph of operators and weights.

``int8`` applies ONNX Runtime's dynamic quantization on top of the fused fp32 graph: int8 weights
with one scale per output channel, 7-bit (``reduce_range``) so that AVX2 machines without VNNI
do not saturate their 16-bit accumulators. It changes the vectors, so it has its own fingerprint
and is opt-in (its retrieval cost is measured by ``benchmarks/encode.py``).

This module imports torch (for the export); onnxruntime and onnx are imported only when used.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from recsys.data.io import atomic_path
from recsys.encoder.model import ItemEncoder

FORMAT = 1  # bump when the exported graph changes (inputs, outputs, fusions), to ignore old files
MIN_COSINE = {"fp32": 0.9999, "int8": 0.95}  # fp32 must equal torch; int8 only must not be broken
PROBE_TEXTS = (
    "a short probe",
    "a longer probe text about drills, batteries and measuring tapes for the workshop, in blue",
    "x",
)

Precision = Literal["fp32", "int8"]


class OnnxUnavailable(RuntimeError):
    """ONNX Runtime is not installed, or this encoder does not export to a graph equal to torch."""


class OnnxSession:
    """An ONNX Runtime CPU session of an exported encoder: (ids, mask) -> (batch, dim) unit vectors.

    It is the ``recsys.encoder.model.Session`` that ``onnx_encoder`` gives an ``ItemEncoder``.

    ``threads`` batches run at once, each on one thread (``workers``; 0: one per available core),
    rather than one batch at a time split over the threads: no thread waits for another between
    kernels, which on a 2-core machine shared with other jobs doubled the items per second at the
    same CPU time (docs/RESULTS.md). ``run`` releases the GIL, so Python threads suffice.
    """

    def __init__(self, path: Path, *, threads: int = 0) -> None:
        ort = _import_ort()
        self.workers = threads or len(os.sched_getaffinity(0))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # parallel over batches instead (see the class docstring)
        options.inter_op_num_threads = 1  # the graph is a chain: no independent branches to overlap
        options.log_severity_level = 3  # errors only
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(batch, seq) int64 ids and mask -> (batch, dim) float32."""
        (out,) = self.session.run(None, {"input_ids": input_ids, "attention_mask": mask})
        return np.asarray(out, dtype=np.float32)


def onnx_encoder(
    encoder: ItemEncoder, cache_dir: str | Path, *, precision: Precision | None = None
) -> ItemEncoder:
    """A copy of ``encoder`` whose ``encode`` runs on ONNX Runtime; exports on the first call.

    ``precision`` defaults to int8 for a quantized encoder (``EncoderConfig.quantize``), else fp32;
    both are exported from the encoder's fp32 weights. Raises :class:`OnnxUnavailable` when
    onnxruntime is missing, the model is not on the CPU, the export fails, or the graph's vectors
    differ from torch's.
    """
    import dataclasses

    _import_ort()
    precision = precision or ("int8" if encoder.config.quantize else "fp32")
    base = encoder.trunk_fingerprint.split(":")[0]  # the graph is the trunk; a head runs after it
    fp32 = ItemEncoder(
        dataclasses.replace(encoder.config, quantize=False),
        tokenizer=encoder.tokenizer,
        model=encoder.float_model,
        fingerprint=base,
    )
    if fp32.device.type != "cpu":
        raise OnnxUnavailable(f"the encoder runs on {fp32.device}; ONNX Runtime is used on CPU only")
    path = Path(cache_dir) / f"{base}-v{FORMAT}-{precision}.onnx"
    session = None
    if path.is_file():
        try:
            session = OnnxSession(path, threads=encoder.config.threads)
        except Exception:  # a corrupt or incompatible cached graph is rebuilt
            session = None
    if session is None:
        export(fp32, path, precision=precision)
        session = OnnxSession(path, threads=encoder.config.threads)
    fast = ItemEncoder(
        dataclasses.replace(encoder.config, quantize=precision == "int8"),
        tokenizer=encoder.tokenizer,
        model=encoder.model,
        fingerprint=base if precision == "fp32" else f"{base}:ort-int8",
        head=encoder.head,
    )
    fast.float_model, fast.session = encoder.float_model, session
    return fast


def export(encoder: ItemEncoder, path: Path, *, precision: Precision = "fp32") -> Path:
    """Trace ``encoder`` (with pooling) to ONNX, fuse, optionally quantize, check, write atomically."""
    _import_ort()
    try:
        import onnx  # noqa: F401 - torch's exporter needs it
    except ImportError as exc:
        raise OnnxUnavailable("the onnx package is not installed (torch's exporter needs it)") from exc
    input_ids, mask = _probe(encoder)
    with torch.inference_mode():
        hidden = encoder.model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask))
        reference = encoder.pool(hidden.last_hidden_state, torch.from_numpy(mask)).float().numpy()
    with atomic_path(path) as tmp:
        raw = tmp.with_name("raw.onnx")
        _trace(encoder, raw, input_ids, mask)
        fused = tmp.with_name("fused.onnx")
        candidates = [raw]
        if _fuse(encoder, raw, fused):
            candidates.insert(0, fused)  # the fused graph if it is right, else the plain one
        problems = []
        for graph in candidates:
            final = graph
            if precision == "int8":
                final = graph.with_name(f"{graph.stem}.int8.onnx")
                _quantize(graph, final)
            cosine = _min_cosine(final, input_ids, mask, reference)
            if cosine >= MIN_COSINE[precision]:
                final.rename(tmp)
                break
            problems.append(f"{graph.stem}: min cosine to torch {cosine:.6f}")
        else:
            raise OnnxUnavailable(f"exported graph differs from torch ({'; '.join(problems)})")
    return path


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxUnavailable("onnxruntime is not installed") from exc
    return onnxruntime


class _Pooled(nn.Module):
    """The encoder's forward plus pooling and L2 normalisation, as one traceable module."""

    def __init__(self, model: nn.Module, pool: Any) -> None:
        super().__init__()
        self.model, self.pool = model, pool

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out: torch.Tensor = self.pool(hidden, attention_mask)  # (batch, dim)
        return out


def _probe(encoder: ItemEncoder) -> tuple[np.ndarray, np.ndarray]:
    """A padded probe batch of different lengths: the trace and the check both see padding."""
    return encoder.pad(encoder.tokenize(list(PROBE_TEXTS)))


def _trace(encoder: ItemEncoder, out: Path, input_ids: np.ndarray, mask: np.ndarray) -> None:
    was_training = encoder.model.training
    module = _Pooled(encoder.model, encoder.pool).eval()
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    try:
        with _eager_attention(encoder.model), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notices about Python constants in the HF code
            torch.onnx.export(
                module,
                (torch.from_numpy(input_ids), torch.from_numpy(mask)),
                str(out),
                dynamo=False,  # the TorchScript tracer: no extra dependency, and fusable graphs
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes=axes | {"embedding": {0: "batch"}},
                opset_version=17,
            )
    except Exception as exc:
        raise OnnxUnavailable(f"cannot export the encoder to ONNX: {type(exc).__name__}: {exc}") from exc
    finally:
        encoder.model.train(was_training)


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """Trace the plain attention code: SDPA's mask shortcuts become constants in a trace."""
    config = getattr(model, "config", None)
    old = getattr(config, "_attn_implementation", None)
    switch = old not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(old)


def _fuse(encoder: ItemEncoder, raw: Path, out: Path) -> bool:
    """ONNX Runtime's BERT fusions (attention, layer norms, GELU); False if they do not apply."""
    config = encoder.model.config
    try:
        from onnxruntime.transformers import optimizer

        with _quiet_ort():
            model = optimizer.optimize_model(
                str(raw),
                model_type="bert",
                num_heads=int(config.num_attention_heads),
                hidden_size=int(config.hidden_size),
                opt_level=1,  # basic, hardware-independent graph rewrites before fusing
                use_gpu=False,
            )
            model.save_model_to_file(str(out))
    except Exception:
        return False
    return True


def _quantize(graph: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_ort():
        quantize_dynamic(
            str(graph),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused ops lack shape info
        )


def _min_cosine(graph: Path, input_ids: np.ndarray, mask: np.ndarray, reference: np.ndarray) -> float:
    out = OnnxSession(graph, threads=1)(input_ids, mask)  # (probe, dim)
    return float((out * reference).sum(axis=1).min())


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """Silence the optimizer's and quantizer's Python logging and warnings while they run."""
    import logging

    loggers = [logging.getLogger(name) for name in ("onnxruntime", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
